"""LoRAPrune's progressive pruning (Algorithm 1) in memory: the one-call API :func:`prune`, and the three steps it is
made of (:func:`start_run`, :func:`run_steps`, :func:`conclude`), which :func:`compressor.job.prune_job` drives with
checkpoints. Nothing here writes a file or takes a lock.

During a LoRA fine-tune with the base weights frozen, every ``prune_every`` optimizer steps the group
scores (criterion, Eq. 4) smoothed by a moving average (Eq. 11) decide which heads and channels of every
layer to mask (Eq. 13), with the sparsity rising linearly until the target is reached at
``prune_until × steps``; fine-tuning then continues. Finally the masked groups are removed and LoRA is
folded into the base (:mod:`compressor.algorithm.merge`).

Run it data-parallel with ``accelerate launch --multi_gpu --num_processes N -m compressor.cli prune ...``
(works on CPU too, with gloo): every rank trains on
its own share of each batch, gradients are averaged by DDP, and the group scores are averaged across
ranks before the moving average so every rank masks the same groups.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import Criterion
from compressor.algorithm.distributed import accelerator
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.loop import PruneLoop
from compressor.algorithm.masking import MaskState
from compressor.algorithm.precision import Precision
from compressor.algorithm.scoring import LayerScores
from compressor.algorithm.settings import resolve_settings
from compressor.algorithm.summary import build_report, count_params
from compressor.core.device import resolve_device
from compressor.core.errors import CalibrationError, ConfigError
from compressor.core.memory import MemoryTrace
from compressor.modeling.architectures import needs_bos
from compressor.modeling.held import held_dtype

__all__ = ["prune", "PruneResult", "Run", "start_run", "run_steps", "conclude", "as_blocks", "check_writable"]

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the merged, physically smaller plain causal LM (no peft).
        report: JSON-able report (ratio asked/achieved, parameters, widths, kept indices, history …).
        scores: the final moving-average group scores (the saved pruning plan).
        masks: the final masks (kept heads/channels per layer, in dense indices).
        groups: the dense model's groups.
    """

    model: nn.Module
    report: dict[str, Any]
    scores: list[LayerScores] | None
    masks: MaskState
    groups: ModelGroups
    history: list[dict[str, Any]] = field(default_factory=list)


def as_blocks(data: Any, tokenizer: Any, cfg: PruneConfig, *, add_bos: bool = False) -> torch.Tensor:
    """Calibration data (token blocks, a list of strings, or a path / built-in name) as ``[blocks, seq_len]``.

    ``add_bos``: start every block of text with BOS (for models that need it, see
    :func:`compressor.modeling.architectures.needs_bos`); token blocks are used as given."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.shape[0] < 1 or data.shape[1] < 2:
            raise CalibrationError(f"calibration tensor must be [num_blocks >= 1, seq_len >= 2], got {tuple(data.shape)}")
        return data.long()
    from calibration import load_texts, pack_blocks

    if isinstance(data, (str, os.PathLike)):
        texts = load_texts(data)
    elif isinstance(data, Sequence) and all(isinstance(t, str) for t in data):
        texts = list(data)
    else:
        raise CalibrationError(f"calibration data must be token blocks, a list of strings or a path; got {type(data).__name__}")
    if tokenizer is None:
        raise CalibrationError("text calibration data needs a tokenizer")
    return pack_blocks(tokenizer, texts, cfg.seq_len, max_blocks=cfg.max_blocks, seed=cfg.seed, add_bos=add_bos)


def check_writable(config: PruneConfig, model_type: str | None = None) -> None:
    """Refuse, before any work, a run that cannot start or whose result cannot be written: a source that already
    has per-layer widths (``model_type`` ``lorapress_*``: the loop needs uniform layers), and per-layer widths
    (``widths="adaptive"``, ``skip_layers``) for a ``model_type`` without a per-layer class (see
    :mod:`compressor.modeling.perlayer`)."""
    from compressor.modeling.sizes import PER_LAYER_TYPE_PREFIX

    if model_type is not None and model_type.startswith(PER_LAYER_TYPE_PREFIX):
        raise ConfigError(f"the model has per-layer widths (model_type {model_type!r}); pruning it again is not "
                          f"supported: prune the dense model instead (a higher ratio gives a smaller model)")
    if model_type is None or (config.widths == "uniform" and not config.skip_layers):
        return
    from compressor.modeling.remote_code.configuration_lorapress import CONFIGS

    if model_type not in CONFIGS:
        raise ConfigError(f"widths={config.widths!r} / skip_layers={config.skip_layers!r} give layers different "
                          f"widths, which are written for model_type {', '.join(CONFIGS)} only, not "
                          f"{model_type!r}; use widths='uniform' and no skip_layers")


@dataclass
class Run:
    """A run set up in memory by :func:`start_run`: the loop and what the report needs from before it."""

    loop: PruneLoop
    model_id: str
    tokenizer: Any
    eval_text: str | None
    params_before: int
    ppl_before: dict[str, Any] | None
    trace: MemoryTrace
    t_start: float
    is_main: bool


def start_run(model: Any, config: PruneConfig, data: Any, *, tokenizer: Any = None,
              eval_text: str | None = None, plan: dict[str, Any] | None = None, memory: MemoryTrace | None = None,
              device: torch.device | None = None, criterion: Criterion | None = None,
              precision: Precision | None = None, accelerator: Any = None,
              statistics_dir: str | os.PathLike | None = None, store: tuple[str, int] | None = None,
              checked: bool = False) -> Run:
    """Check ``model`` and ``config`` together, resolve the config once (:func:`resolve_settings`), build the
    calibration blocks, measure the perplexity before and set up the :class:`PruneLoop`.

    ``device``, ``criterion``, ``precision``: already resolved by the caller (default: from ``config``); ``checked``: the caller
    already refused what :func:`check_writable` and :func:`~compressor.algorithm.saved_plan.check_plan` refuse;
    ``statistics_dir``, ``store``: where compensation's statistics go when they are kept on disk, and the store a
    memory plan chose (default: chosen when the loop starts)."""
    t_start = time.time()
    trace = memory if memory is not None else MemoryTrace()
    acc = accelerator
    model_id = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    from compressor.modeling.loading import check_architecture

    check_architecture(model.config, model_id)
    if not checked:
        check_writable(config, model.config.model_type)
        if plan is not None:
            from compressor.algorithm.saved_plan import check_plan

            check_plan(plan, model.config, model_id)
    from compressor.algorithm.groups import discover_groups

    device = acc.device if acc is not None else (device or resolve_device(config.device))
    groups = discover_groups(model)
    # infeasible widths, or a result that would not reload, are refused here, before any work
    settings = resolve_settings(model, config, groups, device=device, criterion=criterion, precision=precision,
                                plan=plan, store=store)
    with trace.phase("calibration"):
        blocks = as_blocks(data, tokenizer, config, add_bos=needs_bos(model.config))
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and blocks.shape[1] > max_pos:
        raise ConfigError(f"seq_len {blocks.shape[1]} is above the model's limit max_position_embeddings={max_pos}")
    is_main = acc is None or acc.is_main_process
    params_before = count_params(model)
    if model.device != device and not getattr(model, "is_quantized", False):
        model.to(device)
    with trace.phase("perplexity_before"):
        ppl_before = _perplexity(model, tokenizer, eval_text, config) if is_main else None
    loop = PruneLoop(model, config, blocks, plan=plan, accelerator=acc, model_id=model_id, groups=groups,
                     settings=settings, statistics_dir=statistics_dir)
    return Run(loop, model_id, tokenizer, eval_text, params_before, ppl_before, trace, t_start, is_main)


def run_steps(run: Run, *, progress: ProgressFn | None = None,
              after_step: Callable[[PruneLoop], None] | None = None) -> None:
    """Step ``run``'s loop to the end; ``progress`` gets every step's record (main process), ``after_step`` the loop
    after every step (e.g. to write a checkpoint)."""
    loop = run.loop
    with run.trace.phase("loop"):
        while not loop.done:
            rec = loop.step()
            if progress is not None and run.is_main:
                progress(dict(rec.as_dict(), total_steps=loop.cfg.steps))
            if after_step is not None:
                after_step(loop)


def conclude(run: Run) -> PruneResult:
    """Merge ``run``'s finished loop into the smaller model, measure the perplexity after, build the report."""
    loop, trace = run.loop, run.trace
    ranks_agree = loop.masks_agree_across_ranks()
    if ranks_agree is False:
        raise RuntimeError("data-parallel ranks chose different masks; this is a bug, please report it")
    with trace.phase("merge"):
        merged = loop.finish()
    with trace.phase("perplexity_after"):
        ppl_after = _perplexity(merged, run.tokenizer, run.eval_text, loop.cfg) if run.is_main else None
    report = build_report(loop, merged, model_id=run.model_id, params_before=run.params_before,
                          ppl_before=run.ppl_before, ppl_after=ppl_after, wall_time_s=time.time() - run.t_start,
                          peak_rss_mb=trace.overall_peak_mb, ranks_agree=ranks_agree)
    report["memory_phases"] = trace.as_list()
    return PruneResult(merged, report, loop.ema.value, loop.masks, loop.groups, loop.history)


def prune(model: Any, config: PruneConfig, data: Any, *, tokenizer: Any = None, eval_text: str | None = None,
          plan: dict[str, Any] | None = None, progress: ProgressFn | None = None,
          memory: MemoryTrace | None = None) -> PruneResult:
    """Prune ``model`` with LoRAPrune in memory and return the merged, smaller model (no files, no locks: for
    checkpoints, resume, memory checks and a saved folder use :func:`compressor.job.prune_job`; ``config.save_every``
    is not used here).

    Args:
        model: a loaded causal LM of a type in :mod:`compressor.modeling.architectures` (llama, mistral, qwen2,
            qwen3, gemma, gemma2, gemma3_text, phi3), or a model spec accepted by
            :func:`compressor.modeling.loading.load_model` (built-in name, HF folder, .gguf file).
        config: what to do (:class:`PruneConfig`).
        data: calibration data: a LongTensor ``[num_blocks, seq_len]``, a list of strings, or a path /
            built-in name accepted by :func:`calibration.load_texts`.
        tokenizer: needed when ``data`` or ``eval_text`` is text.
        eval_text: held-out text; perplexity before and after goes into the report
            (``config.eval_windows`` windows of ``config.eval_seq_len`` tokens).
        plan: saved pruning plan (``{"heads": [...], "channels": [...]}`` from
            :func:`compressor.job.checkpoint.load_plan`): mask at once from these scores, no scoring, then fine-tune.
        progress: called after every optimizer step with ``{"step", "loss", "sparsity", "lr", ...}``.
        memory: a :class:`compressor.core.memory.MemoryTrace` to record the phases into (``load`` when ``model`` is
            a spec, ``calibration``, ``perplexity_before``, ``loop``, ``merge``, ``perplexity_after``); default a new
            one. The report gets them as ``memory_phases`` and its ``peak_rss_mb`` is the trace's overall peak.

    Returns:
        :class:`PruneResult`.

    Example:
        >>> from compressor import PruneConfig, prune, load_model
        >>> model, tok, _ = load_model("smollm2-135m")                     # doctest: +SKIP
        >>> res = prune(model, PruneConfig(ratio=0.5, steps=100), "wiki", tokenizer=tok)  # doctest: +SKIP
        >>> res.model.save_pretrained("pruned")                             # doctest: +SKIP
    """
    trace = memory if memory is not None else MemoryTrace()
    acc = accelerator()
    device = acc.device if acc is not None else resolve_device(config.device)
    precision = None
    if not isinstance(model, nn.Module):
        from compressor.algorithm.precision import precision_for
        from compressor.modeling.loading import load_config, load_model, resolve_model

        spec = str(model)
        with trace.phase("load"):
            precision = precision_for(config, device, getattr(load_config(resolve_model(spec)), "hidden_size", None))
            model, tok, _ = load_model(spec, dtype=config.dtype, base_bits=config.base_bits,
                                       linear_dtype=precision.held, device=device if acc is None else None)
        model.config._name_or_path = model.config._name_or_path or spec
        tokenizer = tokenizer or tok
    run = start_run(model, config, data, tokenizer=tokenizer, eval_text=eval_text, plan=plan, memory=trace,
                    device=device, precision=precision, accelerator=acc)
    run_steps(run, progress=progress)
    return conclude(run)


def _perplexity(model: nn.Module, tokenizer: Any, text: str | None, cfg: PruneConfig) -> dict[str, Any] | None:
    if not text or cfg.eval_windows <= 0 or tokenizer is None:
        return None
    from compressor.evaluation.perplexity import default_add_bos, perplexity
    from compressor.modeling.adapters import unwrap

    was = model.training
    model.eval()
    seq = min(cfg.eval_seq_len, getattr(model.config, "max_position_embeddings", cfg.eval_seq_len))
    # a base held in bfloat16 (compressor.modeling.held.hold_projections) runs under autocast, as in the fine-tune
    held = held_dtype(unwrap(model)) is not None
    try:
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16) if held else contextlib.nullcontext():
            r = perplexity(unwrap(model), tokenizer, text, seq_len=seq, max_windows=cfg.eval_windows,
                           add_bos=default_add_bos(model, tokenizer))
    finally:
        model.train(was)
    return r

