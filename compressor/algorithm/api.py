"""LoRAPrune's progressive pruning loop (Algorithm 1) and the one-call API :func:`prune`.

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
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.loop import DataOrder, PruneLoop, StepRecord, wrap_lora
from compressor.algorithm.loss import distill_loss
from compressor.algorithm.masking import MaskState
from compressor.algorithm.scoring import LayerScores
from compressor.algorithm.summary import build_report, count_params
from compressor.core.device import resolve_device
from compressor.core.errors import CalibrationError, ConfigError, NonFiniteError, ResumeError
from compressor.core.lock import output_lock
from compressor.core.memory import MemoryTrace, peak_rss_mb
from compressor.job.checkpoint import (
    PLAN_FILE,
    has_checkpoint,
    load_checkpoint,
    load_plan,
    save_checkpoint,
    save_plan,
)
from compressor.modeling.architectures import needs_bos
from compressor.modeling.loading import held_dtype

__all__ = ["prune", "PruneResult", "PruneLoop", "StepRecord", "save_plan", "load_plan", "PLAN_FILE",
           "distill_loss", "wrap_lora", "DataOrder", "peak_rss_mb"]

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


class _Stop:
    """SIGINT → finish the current step, write a checkpoint, then raise KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self):
        import threading

        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


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


def _distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return None


def prune(model: Any, config: PruneConfig, data: Any, *, tokenizer: Any = None, eval_text: str | None = None,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
          plan: dict[str, Any] | None = None, progress: ProgressFn | None = None,
          memory: MemoryTrace | None = None, memory_check: bool = True) -> PruneResult:
    """Prune ``model`` with LoRAPrune and return the merged, smaller model.

    Args:
        model: a loaded causal LM of a type in :mod:`compressor.modeling.architectures` (llama, mistral, qwen2, qwen3,
            gemma, gemma2, gemma3_text, phi3), or a model spec accepted by
            :func:`compressor.modeling.loading.load_model` (built-in name, HF folder, .gguf file).
        config: what to do (:class:`PruneConfig`).
        data: calibration data: a LongTensor ``[num_blocks, seq_len]``, a list of strings, or a path /
            built-in name accepted by :func:`calibration.load_texts`.
        tokenizer: needed when ``data`` or ``eval_text`` is text.
        eval_text: held-out text; perplexity before and after goes into the report
            (``config.eval_windows`` windows of ``config.eval_seq_len`` tokens).
        checkpoint_dir: where resumable checkpoints go (every ``config.save_every`` steps, and on Ctrl-C).
        resume: continue from the checkpoint in ``checkpoint_dir``.
        plan: saved pruning plan (``{"heads": [...], "channels": [...]}`` from :func:`load_plan`): mask at
            once from these scores, no scoring, then fine-tune.
        progress: called after every optimizer step with ``{"step", "loss", "sparsity", "lr", ...}``.
        memory: a :class:`compressor.core.memory.MemoryTrace` to record the phases into (``load`` when ``model`` is a
            spec, ``calibration``, ``perplexity_before``, ``loop``, ``merge``, ``perplexity_after``); default a new
            one. The report gets them as ``memory_phases`` and its ``peak_rss_mb`` is the trace's overall peak.
        memory_check: predict the run's peak memory from the model's config first (:mod:`compressor.algorithm.plan`; the
            report's ``memory_plan``) and refuse, before any weight is read, a run that would not fit its device
            (:class:`~compressor.algorithm.plan.InsufficientMemoryError`, naming the options that would fit).

    Returns:
        :class:`PruneResult`.

    Example:
        >>> from compressor import PruneConfig, prune, load_model
        >>> model, tok, _ = load_model("smollm2-135m")                     # doctest: +SKIP
        >>> res = prune(model, PruneConfig(ratio=0.5, steps=100), "wiki", tokenizer=tok)  # doctest: +SKIP
        >>> res.model.save_pretrained("pruned")                             # doctest: +SKIP
    """
    t_start = time.time()
    trace = memory if memory is not None else MemoryTrace()
    acc = _distributed()
    device = acc.device if acc is not None else resolve_device(config.device)
    from compressor.algorithm.plan import check_fits, plan_run

    mem_plan, alts, resident = plan_run(model, config, device)
    if memory_check:
        check_fits(mem_plan, alts, resident=resident)
    if not isinstance(model, nn.Module):
        from compressor.algorithm.precision import held_linear_dtype
        from compressor.modeling.loading import load_config, load_model, resolve_model

        model_id = str(model)
        with trace.phase("load"):
            hidden = getattr(load_config(resolve_model(model)), "hidden_size", None)
            model, tok, _ = load_model(model, dtype=config.dtype, base_bits=config.base_bits,
                                       linear_dtype=held_linear_dtype(config, device, hidden),
                                       device=device if acc is None else None)
        tokenizer = tokenizer or tok
    else:
        model_id = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    from compressor.modeling.loading import check_architecture

    check_architecture(model.config, model_id)
    check_writable(config, model.config.model_type)
    if plan is not None:
        from compressor.job.checkpoint import check_plan

        check_plan(plan, model.config, model_id)
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.loop import check_output_config

    groups = discover_groups(model)
    output = check_output_config(model, groups, config)  # infeasible widths, or a result that would not reload
    with trace.phase("calibration"):
        blocks = as_blocks(data, tokenizer, config, add_bos=needs_bos(model.config))
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and blocks.shape[1] > max_pos:
        raise ConfigError(f"seq_len {blocks.shape[1]} is above the model's limit max_position_embeddings={max_pos}")
    if checkpoint_dir is None and (resume or config.save_every):
        raise ConfigError("resume / save_every need a checkpoint folder (checkpoint_dir)")
    is_main = acc is None or acc.is_main_process
    params_before = count_params(model)
    if model.device != device and not getattr(model, "is_quantized", False):
        model.to(device)
    with trace.phase("perplexity_before"):
        ppl_before = _perplexity(model, tokenizer, eval_text, config) if is_main else None

    # one run per checkpoint folder: a second prune() on it fails at once (OutputLockedError)
    with _Stop() as stop, output_lock(checkpoint_dir) if checkpoint_dir is not None else contextlib.nullcontext(), \
            trace.phase("loop"):
        loop = PruneLoop(model, config, blocks, plan=plan, accelerator=acc, model_id=model_id, groups=groups,
                         output=output, statistics_dir=None if checkpoint_dir is None
                         else os.path.join(checkpoint_dir, "compensation"))
        if resume:
            _resume(loop, checkpoint_dir)
        while not loop.done:
            try:
                rec = loop.step()
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc}; the last good checkpoint (if any) is kept in {str(checkpoint_dir)!r}; "
                                     f"resume it with --resume, or start again with a lower --lr") from exc
            if progress is not None and is_main:
                progress(dict(rec.as_dict(), total_steps=config.steps))
            due = config.save_every and loop.step_count % config.save_every == 0
            if checkpoint_dir is not None and is_main and (due or stop.requested):
                save_checkpoint(checkpoint_dir, loop.state_dict())
            if stop.requested:
                raise KeyboardInterrupt(f"stopped at step {loop.step_count}; checkpoint written to {str(checkpoint_dir)!r}")
    ranks_agree = loop.masks_agree_across_ranks()
    if ranks_agree is False:
        raise RuntimeError("data-parallel ranks chose different masks; this is a bug, please report it")
    with trace.phase("merge"):
        merged = loop.finish()
    with trace.phase("perplexity_after"):
        ppl_after = _perplexity(merged, tokenizer, eval_text, config) if is_main else None
    report = build_report(loop, merged, model_id=model_id, params_before=params_before, ppl_before=ppl_before,
                          ppl_after=ppl_after, wall_time_s=time.time() - t_start, peak_rss_mb=trace.overall_peak_mb,
                          ranks_agree=ranks_agree)
    report["memory_phases"] = trace.as_list()
    report["memory_plan"] = mem_plan.as_dict()
    return PruneResult(merged, report, loop.ema.value, loop.masks, loop.groups, loop.history)


def _resume(loop: PruneLoop, checkpoint_dir: str | os.PathLike | None) -> None:
    if checkpoint_dir is None or not has_checkpoint(checkpoint_dir):
        raise ResumeError(f"--resume given but there is no checkpoint in {str(checkpoint_dir)!r}")
    st = load_checkpoint(checkpoint_dir)
    if st.get("run_id") != loop.run_id:
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} was written by a run with another model, "
                          f"data or configuration (run id {st.get('run_id')} != {loop.run_id}); resume it with the "
                          f"options it was started with, start over with --force (discards it), or use another --out")
    step, history = st.get("step"), st.get("history")
    if not isinstance(history, list) or not isinstance(step, int) or not 0 <= step <= loop.cfg.steps \
            or len(history) != step:
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} is inconsistent (edited?): step {step!r} with "
                          f"{len(history) if isinstance(history, list) else history!r} history entries, for a run of "
                          f"{loop.cfg.steps} steps; start over with --force (discards it)")
    try:
        loop.load_state_dict(st)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:  # a hand-edited checkpoint
        raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} does not fit this run's model: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}; start over with "
                          f"--force (discards it)") from exc


def _perplexity(model: nn.Module, tokenizer: Any, text: str | None, cfg: PruneConfig) -> dict[str, Any] | None:
    if not text or cfg.eval_windows <= 0 or tokenizer is None:
        return None
    from compressor.evaluation.perplexity import default_add_bos, perplexity
    from compressor.modeling.adapters import unwrap

    was = model.training
    model.eval()
    seq = min(cfg.eval_seq_len, getattr(model.config, "max_position_embeddings", cfg.eval_seq_len))
    # a base held in bfloat16 (compressor.modeling.loading.hold_projections) runs under autocast, as in the fine-tune
    held = held_dtype(unwrap(model)) is not None
    try:
        device_type = next(model.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16) if held else contextlib.nullcontext():
            r = perplexity(unwrap(model), tokenizer, text, seq_len=seq, max_windows=cfg.eval_windows,
                           add_bos=default_add_bos(model, tokenizer))
    finally:
        model.train(was)
    return r

