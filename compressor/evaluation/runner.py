""":func:`evaluate`: run a list of tasks (perplexity, lm-eval zero-shot, MMLU 5-shot) on one model into an :class:`EvalReport`."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError
from compressor.evaluation.model import max_positions
from compressor.evaluation.perplexity import default_add_bos, perplexity
from compressor.evaluation.report import EvalReport, _fmt, macro_average, run_config
from compressor.evaluation.tasks import (
    DEFAULT_MC_BATCH,
    FEWSHOT_TASKS,
    PERPLEXITY_TASKS,
    ZERO_SHOT_TASKS,
    resolve_tasks,
)


def task_limits(limit: int | Mapping[str, int] | None, tasks: Sequence[str]) -> dict[str, int | None]:
    """Per-task item limits from ``limit``: one int for every task, or task -> int (tasks not named: all items).

    Raises:
        ConfigError: a non-positive limit or a task name that is not among ``tasks``.
    """
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"limit{'' if name == '*' else ' for ' + name} {v!r} is not valid; use a positive integer or None")
        return v

    if limit is None:
        return {t: None for t in tasks}
    if isinstance(limit, Mapping):
        unknown = [k for k in limit if k not in tasks]
        if unknown:
            raise ConfigError(f"limit given for {', '.join(map(repr, unknown))}, which is not among the tasks run: "
                              f"{', '.join(tasks)}")
        return {t: (check(t, limit[t]) if t in limit else None) for t in tasks}
    check("*", limit)
    return {t: limit for t in tasks}


def evaluate(model: Any, tasks: str | Sequence[str], *, tokenizer: Any = None, seq_len: int | None = None,
             limit: int | Mapping[str, int] | None = None, max_windows: int | None = None,
             batch_size: int | None = None, add_bos: bool | None = None, dtype: str = "float32", progress: bool = False,
             log: Callable[[str], None] | None = None,
             texts: dict[str, str | os.PathLike] | None = None, allow_pickle: bool = False,
             trust_remote_code: bool = False, device: str = "auto") -> EvalReport:
    """Evaluate a model on perplexity, zero-shot and MMLU 5-shot tasks.

    Zero-shot tasks and MMLU run through lm-evaluation-harness (``HFLM`` around the loaded model, lm-eval's
    own task definitions on offline data; extra ``lorapress[eval]``). Every accuracy comes with its
    standard error (``<metric>_stderr``) and ``details[task]["n"]``, the number of items scored.

    Args:
        model: a loaded causal LM (a ``PreTrainedModel`` or an ``ORTModelForCausalLM``), an exported ONNX
            folder (every task, scored through ONNX Runtime), or anything :func:`compressor.modeling.loading.load_model` accepts
            (HF folder, ``.gguf`` file, built-in name) — then the tokenizer is loaded with it.
        tasks: task names or a comma-separated string: ``wikitext2``, ``ptb`` (perplexity, metric ``ppl``);
            ``piqa``, ``arc_easy``, ``arc_challenge``, ``boolq``, ``winogrande``, ``openbookqa``, ``hellaswag``
            (lm-eval zero-shot, ``acc`` / ``acc_norm``); ``mmlu`` (5-shot, macro ``acc`` over 57 topics);
            groups ``zeroshot`` and ``ppl``.
        tokenizer: required when ``model`` is a loaded model.
        seq_len: perplexity window (tokens); default ``min(2048, max_position_embeddings)``.
        limit: score only the first ``limit`` items of each zero-shot task (for ``mmlu``: of each topic);
            one int for all tasks, or task -> int (default: all items).
        max_windows: score only the first ``max_windows`` perplexity windows (default: all).
        batch_size: windows per forward for perplexity (default 1) and sequences per forward for lm-eval
            (default 8).
        add_bos: start perplexity windows with BOS. None (default): only for models that need it (Gemma, see
            :func:`compressor.modeling.architectures.needs_bos`); others keep the papers' no-BOS protocol.
        dtype: used only when ``model`` is a path (``float32``, ``bfloat16``, ``float16``; ``auto``: bfloat16 where
            the device multiplies it natively, :func:`compressor.core.device.native_bf16`, else float32). The report
            records the dtype used.
        progress: show progress bars on stderr.
        log: called with one line per finished task (e.g. ``print``).
        allow_pickle / trust_remote_code: when ``model`` is a path, as for :func:`compressor.modeling.loading.load_model`
            (both off by default: pickle weights and a folder's own code can run arbitrary code).
        texts: perplexity task -> UTF-8 text file to use instead of the built-in source, e.g.
            ``{"wikitext2": "wiki.test.raw"}`` (the whole file is the evaluation string).
        device: when ``model`` is a path: ``auto`` (the first CUDA GPU, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N`` (:func:`compressor.core.device.resolve_device`); an ONNX folder runs on the matching ONNX
            Runtime execution provider. A loaded model stays where it is.

    Returns:
        :class:`EvalReport`.

    Raises:
        ConfigError: unknown task (the message lists the valid ones), bad limit/max_windows/seq_len, or
            a loaded model without a tokenizer.
        DependencyMissingError: a zero-shot or MMLU task without lm-eval installed (says how to install it).

    Example:
        >>> r = evaluate("out/pruned", "wikitext2,piqa,mmlu", limit={"piqa": 500, "mmlu": 2})   # doctest: +SKIP
        >>> print(r.table())                                                                  # doctest: +SKIP
    """
    task_list = resolve_tasks(tasks)
    limits = task_limits(limit, task_list)
    for name, v in (("max_windows", max_windows), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name} {v!r} is not valid; use a positive integer or None")
    texts = dict(texts or {})
    for task, path in texts.items():
        if task not in PERPLEXITY_TASKS:
            raise ConfigError(f"texts: {task!r} is not a perplexity task; valid: {', '.join(PERPLEXITY_TASKS)}")
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"text file for {task} {os.fspath(path)!r} does not exist or is not a file")
    needs_lm_eval = any(t not in PERPLEXITY_TASKS for t in task_list)
    if needs_lm_eval:
        from compressor.evaluation.harness import require_lm_eval

        require_lm_eval()  # before loading a model
    source = None
    if isinstance(model, (str, os.PathLike)):
        from compressor.core.device import resolve_device
        from compressor.modeling.loading import is_onnx_folder

        spec, where = os.fspath(model), resolve_device(device)
        if is_onnx_folder(spec):
            model, loaded_tok = _load_onnx(spec, provider=where.type)
            source = {"spec": spec, "kind": "onnx", "path": str(Path(spec).resolve()), "gguf_file": None}
        else:
            from compressor.modeling.loading import load_model

            if dtype == "auto":
                from compressor.core.device import native_bf16

                dtype = "bfloat16" if native_bf16(where) else "float32"
            model, loaded_tok, src = load_model(spec, dtype=dtype, allow_pickle=allow_pickle,
                                                trust_remote_code=trust_remote_code, device=where)
            source = {"spec": spec, "kind": src.kind, "path": src.path, "gguf_file": src.gguf_file}
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("evaluate() needs tokenizer= when model is a loaded model")
    if add_bos is None:
        add_bos = default_add_bos(model, tokenizer)
    max_pos = max_positions(model)
    if seq_len is None:
        seq_len = min(2048, max_pos) if max_pos else 2048
    if any(t in PERPLEXITY_TASKS for t in task_list):
        from calibration import check_seq_len

        check_seq_len(seq_len, getattr(model, "config", None))

    results: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    lm = None
    for task in task_list:
        t0 = time.perf_counter()
        lim = limits[task]
        if task in PERPLEXITY_TASKS:
            from calibration import load_eval_text

            text = load_eval_text(texts.get(task, task))
            r = perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                           add_bos=add_bos, batch_size=batch_size or 1, progress=progress)
            results[task] = {"ppl": r["ppl"], "nll": r["nll"]}
            details[task] = {k: r[k] for k in ("tokens", "windows", "windows_available", "seq_len", "text_tokens",
                                                "add_bos", "protocol")}
            details[task]["n"] = r["tokens"]
            details[task]["data"] = str(Path(texts[task]).expanduser().resolve()) if task in texts else PERPLEXITY_TASKS[task]
        else:
            from compressor.evaluation.harness import build_tasks, make_lm, run_tasks

            if lm is None:
                lm = make_lm(model, tokenizer, batch_size=batch_size or DEFAULT_MC_BATCH)
            if task in ZERO_SHOT_TASKS:
                from compressor.evaluation.tasks import zero_shot_config

                spec = ZERO_SHOT_TASKS[task]
                out = run_tasks(lm, build_tasks({task: zero_shot_config(task)}, progress=progress), limit=lim,
                                progress=progress)[task]
                results[task] = out["metrics"]
                details[task] = {
                    "n": out["n"],
                    "protocol": (f"lm-evaluation-harness task {task!r} (lm_eval/tasks/{spec.yaml}), zero-shot, "
                                 "on offline data; " + (spec.note + "; " if spec.note else "")
                                 + (f"first {lim} items" if lim else "all items")),
                    "data": spec.source,
                }
            else:
                from compressor.evaluation.mmlu import N_SHOTS, mmlu_configs

                outs = run_tasks(lm, build_tasks(mmlu_configs(), progress=progress), limit=lim, progress=progress)
                topics = {name.removeprefix("mmlu_"): {**o["metrics"], "n": o["n"]} for name, o in outs.items()}
                results[task] = macro_average(topics)
                details[task] = {
                    "n": sum(t["n"] for t in topics.values()),
                    "topics": topics,
                    "protocol": (f"lm-evaluation-harness mmlu_<topic> tasks, {N_SHOTS}-shot; no dev split: the first "
                                 f"{N_SHOTS} rows of each topic are its shots and are not scored; acc = macro "
                                 f"average over {len(topics)} topics (stderr = sqrt(sum stderr_i^2) / topics, or from the pooled mean where a topic has one item); "
                                 + (f"first {lim} scored items per topic" if lim else "all items")),
                    "data": FEWSHOT_TASKS[task],
                }
        details[task]["seconds"] = round(time.perf_counter() - t0, 2)
        if log:
            log(f"{task}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in results[task].items() if not k.endswith("_stderr"))
                + f" (n={details[task]['n']}, {details[task]['seconds']} s)")

    has_ppl = any(t in PERPLEXITY_TASKS for t in task_list)
    shown_limit: Any = limit if not isinstance(limit, Mapping) else dict(limit)
    config = run_config(model, source, task_list, seq_len if has_ppl else None, shown_limit,
                        max_windows if has_ppl else None, batch_size, add_bos)
    return EvalReport(results=results, config=config, details=details)


def _load_onnx(folder: str, provider: str = "cpu"):
    """An exported ONNX folder as ``(model, tokenizer)`` on ``provider`` (``cpu``, ``cuda``): optimum's
    ``ORTModelForCausalLM`` where ``optimum.onnxruntime`` imports, else
    :class:`~compressor.evaluation.ort_model.OrtCausalLM` (plain ONNX Runtime)."""
    from transformers import AutoTokenizer

    from compressor.core.errors import ModelLoadError
    from compressor.core.ort import PROVIDERS
    from compressor.evaluation.ort_model import OrtCausalLM

    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except Exception:  # noqa: BLE001 - no optimum (or none that imports beside this transformers): ORT directly
        ORTModelForCausalLM = None
    name = "ONNX Runtime" if ORTModelForCausalLM is None else "ORTModelForCausalLM"
    try:
        if ORTModelForCausalLM is None:
            model: Any = OrtCausalLM(folder, provider=provider)
        else:
            model = ORTModelForCausalLM.from_pretrained(folder, provider=PROVIDERS[provider])
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - any loader failure: say which folder and why
        raise ModelLoadError(f"cannot load ONNX folder {folder!r} with {name}: {type(exc).__name__}: {exc}") from exc
    return model, tok
