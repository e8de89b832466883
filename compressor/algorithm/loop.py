"""The LoRAPrune loop as an object: one training + scoring step at a time, mask updates, state, merge.

:class:`PruneLoop` composes the parts of one run, each built from the config resolved once
(:func:`compressor.algorithm.settings.resolve_settings`): the fine-tune (:class:`~compressor.algorithm.finetune.FineTune`),
the masks with their scorer and moving average, compensation (:class:`~compressor.algorithm.compensation_run.
CompensationRun`) and the data order, and exposes them as steps::

    loop = PruneLoop(model, config, blocks)
    while not loop.done:
        rec = loop.step()           # forward/backward, scoring, optimizer step, mask update
    merged = loop.finish()          # fold LoRA, slice the masked groups

:func:`compressor.algorithm.api.prune` runs it in memory, :func:`compressor.job.prune_job` with checkpoints;
benchmarks drive the same object (``loop.step(batch)``, ``loop.masked_model``) instead of copying the training step.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from typing import Any

import torch
from torch import nn

from compressor.algorithm.activation_scorer import ActivationScorer
from compressor.algorithm.compensation_run import CompensationRun, kept_of
from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import GroupCriterion
from compressor.algorithm.distributed import masks_agree, reduce_scores
from compressor.algorithm.finetune import DataOrder, FineTune, StepRecord
from compressor.algorithm.groups import ModelGroups, discover_groups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import merge_and_slice
from compressor.algorithm.precision import output_dtype
from compressor.algorithm.saved_plan import plan_scores
from compressor.algorithm.scoring import LayerScores, MovingAverage, model_scores
from compressor.algorithm.settings import RunSettings, resolve_settings
from compressor.algorithm.width_plan import sparsity
from compressor.core.errors import NonFiniteError
from compressor.core.rng import rng_state, set_rng_state
from compressor.modeling.held import hold_projections

log = logging.getLogger("compressor")


def run_id(cfg: PruneConfig, model_id: str, blocks: torch.Tensor) -> str:
    """Hash of everything that decides the result (config fields marked ``result``, model, data): a
    checkpoint is resumed only by the run that wrote it."""
    from dataclasses import fields

    keep = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get("result", True)}
    if model_id and os.path.exists(model_id):  # './m/' and '/abs/m' name the same model
        model_id = os.path.realpath(model_id)
    h = hashlib.sha256(json.dumps([keep, model_id], sort_keys=True, default=str).encode())
    h.update(blocks.numpy().tobytes())
    return h.hexdigest()[:16]


class PruneLoop:
    """One LoRAPrune run (Algorithm 1), a step at a time.

    Args:
        model: a loaded plain causal LM (it is wrapped with LoRA in place).
        config: the run's :class:`PruneConfig`.
        blocks: calibration token blocks ``[num_blocks, seq_len]``.
        plan: saved scores (``{"heads": [...], "channels": [...]}``): mask at once, no scoring.
        accelerator: an ``accelerate.Accelerator`` for data-parallel runs (None: one process).
        model_id: names the model in the run id that guards resume.
        groups: the model's groups (discovered when not given).
        settings: ``config`` resolved for this model (:func:`~compressor.algorithm.settings.resolve_settings`;
            resolved here when not given).
        statistics_dir: where compensation keeps its statistics when they go to disk (``compensate_store``;
            default a temporary folder).
    """

    def __init__(self, model: Any, config: PruneConfig, blocks: torch.Tensor, *,
                 plan: dict[str, Any] | None = None, accelerator: Any = None, model_id: str = "model",
                 groups: ModelGroups | None = None, settings: RunSettings | None = None,
                 statistics_dir: str | os.PathLike | None = None):
        self.cfg, self.blocks, self.acc, self.plan, self.model = config, blocks, accelerator, plan, model
        acc = accelerator
        self.world: int = acc.num_processes if acc is not None else 1
        self.rank: int = acc.process_index if acc is not None else 0
        self.is_main = acc is None or acc.is_main_process
        torch.manual_seed(config.seed)
        self.groups = groups or discover_groups(model)
        s = settings or resolve_settings(model, config, self.groups, plan=plan,
                                         device=acc.device if acc is not None else None)
        self.settings, self.device, self.crit, self.widths = s, s.device, s.criterion, s.widths
        #: bfloat16 autocast for the forward passes; ``held``: the dtype the frozen projections are held in
        self.amp, self.held = s.precision.amp, s.precision.held
        self.events, self.peak_lr, self.stock_config_refused = s.events, s.peak_lr, s.stock_config_refused
        if s.stock_config_refused is not None and self.is_main:
            from compressor.algorithm.width_plan import remote_code_note

            log.warning("%s", remote_code_note(self.groups, s.widths.final.num_heads, s.stock_config_refused))
        self.last_event = self.events[-1] if self.events else 0
        if getattr(model, "device", self.device) != self.device and not getattr(model, "is_quantized", False):
            model.to(self.device)
        #: the dtype the checkpoint of the model declares (the output's dtype when the base is held in bfloat16)
        self.source_dtype = getattr(model, "lorapress_source_dtype", None) or _float_dtype_name(model)
        if self.held is not None:
            hold_projections(model, getattr(torch, self.held))
        self.tune = FineTune(model, config, criterion=self.crit, peak_lr=self.peak_lr, amp=self.amp,
                             device=self.device, accelerator=acc)
        self.pm = self.tune.pm
        self.masks = MaskState.full(self.groups).install(self.pm, self.groups)
        self.scorer = ActivationScorer(self.pm, self.groups) \
            if isinstance(self.crit, GroupCriterion) and plan is None else None
        self.ema = MovingAverage(config.lam, config.ema_start)
        #: compensation within the run; ``comp``: its statistics (:class:`~compressor.algorithm.compensation.Compensator`)
        self.compensation = CompensationRun(self.pm, self.groups, config, device=self.device, accelerator=acc,
                                            statistics_dir=statistics_dir, store=s.store,
                                            precision=s.precision) if config.compensate else None
        self.comp = self.compensation.comp if self.compensation is not None else None
        #: criterion ``residual``: the scorer reads transforms built from compensation's statistics, (re)built for
        #: the current masks before the next score whenever ``_residual_stale``
        self._residual = self.crit.uses_compensation and self.scorer is not None
        self._residual_stale = self._residual
        self.data = DataOrder(blocks, config.seed)
        self.step_count, self.pos = 0, 0
        self.per_step = config.batch_size * config.grad_accum * self.world
        if plan is not None:
            self._apply_plan(plan)
        self.tune.start()
        self.run_id = run_id(config, model_id, blocks)
        self.gen = torch.Generator().manual_seed(config.seed + 17)
        self.history: list[dict[str, Any]] = []
        #: the checkpoint step this run continued from (None for a run started from step 0)
        self.resumed_from: int | None = None
        self.schedule_log: list[dict[str, Any]] = []
        #: called as ``observe(loop)`` after each step's backward pass, before scoring and the optimizer step
        self.observers: list[Any] = []

    def autocast(self):
        """Context for a forward pass under the run's mixed precision (a no-op when ``amp`` is off)."""
        return self.tune.autocast()

    opt = property(lambda self: self.tune.opt)
    sched = property(lambda self: self.tune.sched)
    trainable = property(lambda self: self.tune.trainable)
    chunked = property(lambda self: self.tune.chunked)
    dense_base = property(lambda self: self.compensation.dense_base if self.compensation is not None else None)

    def compensation_target(self) -> int:
        """Tokens compensation's statistics should rest on (:meth:`CompensationRun.target_tokens`; 0 without)."""
        return self.compensation.target_tokens() if self.compensation is not None else 0

    # ---- steps ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step_count >= self.cfg.steps

    @property
    def scoring(self) -> bool:
        """Whether the step about to run (or running) scores."""
        return self.plan is None and self.step_count + 1 <= self.last_event

    def next_batch(self) -> torch.Tensor:
        """The next global batch in the run's deterministic data order (all ranks' shares)."""
        return self.data.take(self.pos, self.per_step)

    def teacher(self):
        """Context in which the model is the dense teacher (LoRA off, masks bypassed, dense compensated weights)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.pm.disable_adapter())
        stack.enter_context(self.masks.bypassed())
        if self.compensation is not None:
            stack.enter_context(self.compensation.dense_weights())
        return stack

    def step(self, batch: torch.Tensor | None = None) -> StepRecord:
        """One optimizer step on ``batch`` (default :meth:`next_batch`): loss and backward, scoring while
        the schedule scores, the optimizer step, and a mask update if one is due."""
        cfg, t0 = self.cfg, time.time()
        batch_all = self.next_batch() if batch is None else batch
        if self._residual_stale and self.scoring:
            self._prepare_residual()
        loss, lm_loss = self.tune.backward(batch_all[self.rank::self.world], self.teacher, self.step_count + 1)
        for observe in self.observers:  # e.g. benchmarks reading the gradients of this step
            observe(self)
        skipped = False
        if self.scoring:
            skipped = not self.ema.update(self.scores())
            if skipped and self.ema.value is None and self.step_count + 1 == self.last_event:
                raise NonFiniteError(f"importance scores are NaN/inf at step {self.step_count + 1} and no finite "
                                     f"scores exist")
        elif self.scorer is not None:
            self.scorer.reset()
        if cfg.joint or self.plan is not None or self.step_count + 1 > cfg.prune_every:  # not a scoring-only phase
            self.tune.optimizer_step()
        self.tune.zero_grad()
        self.step_count += 1
        self.pos += self.per_step
        updated = self.update_masks(self.step_count)
        distilled = cfg.distill > 0 or cfg.distill_hidden > 0
        rec = StepRecord(step=self.step_count, loss=round(loss, 6), lr=self.tune.lr,
                         sparsity=round(sparsity(self.groups, self.masks), 6), time_s=round(time.time() - t0, 4),
                         lm_loss=round(lm_loss, 6) if distilled else None, scores_skipped=skipped,
                         masks_updated=updated)
        self.history.append(rec.as_dict())
        return rec

    def scores(self) -> list[LayerScores]:
        """This step's group scores (from the gradients of the last backward pass), averaged over ranks."""
        if isinstance(self.crit, GroupCriterion):
            assert self.scorer is not None, "a group criterion scores through its scorer"
            s = self.scorer.collect()
        else:
            s = model_scores(self.pm, self.groups, self.crit, self.gen, self.cfg.aggregate)
        return reduce_scores(self.acc, s, self.device) if self.acc is not None else s

    def update_masks(self, step: int) -> bool:
        """Tighten the masks if ``step`` is a scheduled update; returns whether it was."""
        if step not in self.events or self.ema.value is None:
            return False
        k = self.events.index(step) + 1
        heads, chans = self.widths.at(k, len(self.events), self.ema.value, self.masks)
        old = [(m.heads.clone(), m.channels.clone()) for m in self.masks.layers]
        if self.compensation is not None and self.compensation.collecting:
            self._top_up()  # before the first masks: the statistics are the dense model's
        elif self.compensation is not None and self.cfg.compensate_stats == "current":
            self.compensation.comp.restart()  # the model as it is now: earlier masks applied, LoRA trained so far
            self._top_up(masked=True)
        mask_lowest(self.masks, self.ema.value, self.groups, heads, chans)
        if self.compensation is not None:  # the statistics end here (dense; or the current model, re-collected above)
            self.compensation.fold(old, kept_of(self.masks), last=step == self.last_event)
        self._residual_stale = self._residual
        first = self.widths.pruned[0]
        entry: dict[str, Any] = {"step": step, "heads_per_kv": heads[first], "intermediate": chans[first],
                                 "sparsity": round(sparsity(self.groups, self.masks), 6)}
        if not self.widths.uniform:
            entry["heads_per_kv"], entry["intermediate"] = heads, [int(m.channels.sum()) for m in self.masks.layers]
        self.schedule_log.append(entry)
        return True

    def _top_up(self, minimum: int = 0, masked: bool = False) -> None:
        """Compensation's statistics from forward passes over the sequences after this rank's position (masks
        bypassed unless ``masked``)."""
        assert self.compensation is not None
        ctx = contextlib.ExitStack()
        if not masked:
            ctx.enter_context(self.masks.bypassed())
        ctx.enter_context(self.autocast())
        self.compensation.top_up(self.pm, self.data, pos=self.pos, rank=self.rank, device=self.device, context=ctx,
                         minimum=minimum)

    def _prepare_residual(self) -> None:
        """Criterion ``residual``: complete compensation's statistics now (they are the dense model's, so this
        is before any mask) and give the scorer each kept group's residual transform for the current masks."""
        assert self.compensation is not None and self.scorer is not None
        if self.compensation.collecting:
            self._top_up()
            self.compensation.finish_collecting()
        self.scorer.set_transforms(self.compensation.residual_transforms(kept_of(self.masks)))
        self._residual_stale = False

    def _apply_plan(self, plan: dict[str, Any]) -> None:
        self.ema.update(plan_scores(plan, self.groups))
        heads, chans = self.widths.at(1, 1, self.ema.value, self.masks)
        old = [(m.heads.clone(), m.channels.clone()) for m in self.masks.layers]
        mask_lowest(self.masks, self.ema.value, self.groups, heads, chans)
        if self.compensation is not None:  # statistics from forward passes over the first batches, then the fold
            self._top_up(minimum=self.cfg.prune_every * self.cfg.batch_size)
            self.compensation.fold(old, kept_of(self.masks), last=True)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-exactly (tensors + JSON values)."""
        return {"run_id": self.run_id, "step": self.step_count, "pos": self.pos, "history": self.history,
                "schedule": self.schedule_log, **self.tune.state_dict(),
                "ema": self.ema.state_dict(), "masks": self.masks.state_dict(), "gen": self.gen.get_state(),
                "rng": rng_state(), "config": self.cfg.to_dict(),
                **(self.compensation.state_dict() if self.compensation is not None else {})}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.tune.load_state_dict(st)
        self.ema.load_state_dict(st["ema"])
        self.masks.load_state_dict(st["masks"])
        self.step_count, self.pos = st["step"], st["pos"]
        self.resumed_from = self.step_count
        self.history, self.schedule_log = st["history"], st["schedule"]
        self.gen.set_state(st["gen"])
        set_rng_state(st["rng"])
        if self.compensation is not None:
            self.compensation.load_state_dict(st, released=self.step_count >= self.last_event)
        self._residual_stale = self._residual

    # ---- results -------------------------------------------------------------------------------
    @property
    def masked_model(self) -> nn.Module:
        """The peft model with the current masks applied: computes what the merged model will."""
        return self.pm

    def masks_agree_across_ranks(self) -> bool | None:
        return masks_agree(self.acc, self.masks, self.device)

    @property
    def output_dtype(self) -> torch.dtype | None:
        """The merged model's dtype (:func:`compressor.algorithm.precision.output_dtype`)."""
        return output_dtype(self.held, self.cfg.base_bits, self.source_dtype)

    def finish(self) -> nn.Module:
        """Fold LoRA into the base and slice the masked groups: the plain, smaller model (of the per-layer class
        of its architecture when the layers end with different widths, see :mod:`compressor.modeling.perlayer`)."""
        if self.scorer is not None:
            self.scorer.remove()
        if self.compensation is not None:
            self.compensation.release()
        self.tune.finish()
        merged = merge_and_slice(self.pm, self.groups, self.masks, dtype=self.output_dtype)
        merged.eval()
        return merged


def _float_dtype_name(model: nn.Module) -> str | None:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return str(p.dtype).replace("torch.", "")
    return None
