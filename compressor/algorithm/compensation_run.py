"""Compensation within a run: when its statistics are collected, where they are kept, the fold at every mask
update, and the dense weights the distillation teacher needs once compensation has edited them
(:mod:`compressor.algorithm.compensation` holds the statistics and the least-squares fold themselves)."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.algorithm.compensation import TOKENS_CAP, TOKENS_PER_INPUT, Compensator, base_weights
from compressor.algorithm.config import PruneConfig
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.masking import MaskState
from compressor.algorithm.precision import Precision
from compressor.core.errors import ConfigError
from compressor.modeling.adapters import unwrap

log = logging.getLogger("compressor")

#: kept heads and channels of every layer, ``[(heads, channels), ...]``
Kept = list[tuple[torch.Tensor, torch.Tensor]]


def kept_of(masks: MaskState) -> Kept:
    return [(m.heads, m.channels) for m in masks.layers]


def choose_store(model: nn.Module, cfg: PruneConfig, device: torch.device, num_layers: int,
                 precision: Precision | None = None) -> tuple[str, int]:
    """Where compensation's statistics go and how many layers one collection pass covers
    (:func:`compressor.algorithm.memory_plan.resolve_store`, with the weights already on the device counted as resident)."""
    from compressor.algorithm.memory_plan import model_shape, resolve_store

    if cfg.compensate_store in ("device", "host"):
        return cfg.compensate_store, num_layers
    resident = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == device.type)
    return resolve_store(model_shape(unwrap(model).config), cfg, device, resident=resident, precision=precision)


class CompensationRun:
    """One run's compensation (``compensate``).

    Args:
        pm: the peft-wrapped model (statistics are hooked into its compensated projections).
        groups: the dense model's groups.
        cfg: the run's config (``compensate_*``, ``teacher``, ``distill*``, ``batch_size``).
        device: the run's device.
        accelerator: data-parallel runs reduce the statistics across ranks.
        statistics_dir: the folder of statistics kept on disk (default: a temporary one).
        store: where the statistics go and layers per collection pass, when already resolved (the job's memory
            plan); default :func:`choose_store` (with the run's ``precision``).
    """

    def __init__(self, pm: nn.Module, groups: ModelGroups, cfg: PruneConfig, *, device: torch.device,
                 accelerator: Any = None, statistics_dir: str | os.PathLike | None = None,
                 store: tuple[str, int] | None = None, precision: Precision | None = None):
        self.cfg, self.acc = cfg, accelerator
        where, per_pass = store or choose_store(pm, cfg, device, groups.num_layers, precision)
        if where == "disk" and accelerator is not None:
            raise ConfigError("compensate_store='disk' cannot run data-parallel; use 'device' or 'host'")
        self.comp = Compensator(pm, groups, store=where, layers_per_pass=per_pass,
                                folder=None if statistics_dir is None else Path(statistics_dir))
        # compensation edits W0 of o_proj/down_proj in place; the distillation teacher must stay the dense model, so
        # it runs on a copy of those weights taken while they are still dense (swapped in, not copied)
        #: the base weights compensation edits (o_proj, down_proj), by name
        self.base: dict[str, Any] = base_weights(pm, groups)
        teacher = cfg.teacher == "dense" and (cfg.distill > 0 or cfg.distill_hidden > 0)
        self.dense_base: dict[str, torch.Tensor] | None = (
            {k: w.detach().clone() for k, w in self.base.items()} if teacher else None)

    @property
    def collecting(self) -> bool:
        return self.comp.collecting

    def target_tokens(self) -> int:
        """Tokens the statistics should rest on (``compensate_tokens``; default :data:`TOKENS_PER_INPUT` × the
        widest compensated input, at most :data:`TOKENS_CAP`)."""
        if self.cfg.compensate_tokens is not None:
            return int(self.cfg.compensate_tokens)
        return min(TOKENS_PER_INPUT * self.comp.widest_input(), TOKENS_CAP)

    @torch.no_grad()
    def top_up(self, pm: nn.Module, data: Any, *, pos: int, rank: int, device: torch.device, context: Any,
               minimum: int = 0) -> None:
        """Forward passes of ``pm`` (no gradients; inside ``context``, e.g. masks bypassed and autocast) over the
        calibration sequences of ``data`` (:class:`~compressor.algorithm.finetune.DataOrder`) that follow this
        rank's position ``pos``, until the statistics rest on :meth:`target_tokens` tokens (and at least
        ``minimum`` sequences were seen)."""
        seq_len = int(data.blocks.shape[1])
        need_tokens = max(0, self.target_tokens() - self.comp.tokens)
        n = max(-(-need_tokens // seq_len), minimum - self.comp.tokens // seq_len)
        if n <= 0:
            return
        was_training = pm.training
        pm.eval()
        start, bs = pos + rank * n, self.cfg.batch_size
        batches = [data.take(start + i, min(bs, n - i)).to(device) for i in range(0, n, bs)]
        # progress in tenths where the statistics of all layers come from one pass (same sums, same order); a disk
        # store's grouped passes take the batches at once
        chunk = len(batches) if self.comp.store == "disk" else max(1, -(-len(batches) // 10))
        log.info("Compensation statistics: %d sequences of %d tokens through the model (forward only; at wide MLPs "
                 "the slowest part of a run)", n, seq_len)
        t0 = time.time()
        try:
            with context:
                for j in range(0, len(batches), chunk):
                    self.comp.collect_grouped(pm, batches[j:j + chunk])
                    done = min(n, (j + chunk) * bs)
                    log.info("Compensation statistics: %d/%d sequences, %.0f s", done, n, time.time() - t0)
        finally:
            pm.train(was_training)

    def finish_collecting(self) -> None:
        """End the statistics (reduced across ranks)."""
        self.comp.stop_collecting(self.acc)

    def fold(self, old: Kept, new: Kept, *, last: bool) -> None:
        """End the statistics and fold the stand-in for what ``old`` -> ``new`` removed; ``last``: no mask update
        follows, so the statistics are freed."""
        self.finish_collecting()
        self.comp.fold(old, new)
        if last:
            self.comp.release()

    def residual_transforms(self, kept: Kept) -> list[dict[str, torch.Tensor | None]]:
        return self.comp.residual_transforms(kept)

    @contextlib.contextmanager
    def dense_weights(self) -> Iterator[None]:
        """Inside the block the edited base weights are the dense ones (teacher ``dense``; no copy)."""
        if self.dense_base is None:
            yield
            return
        saved = {k: p.data for k, p in self.base.items()}
        try:
            for k, p in self.base.items():
                p.data = self.dense_base[k]
            yield
        finally:
            for k, p in self.base.items():
                p.data = saved[k]

    def release(self) -> None:
        """Free the statistics and the teacher's dense copies (at the merge)."""
        self.comp.release()
        self.dense_base, self.base = None, {}

    def state_dict(self) -> dict[str, Any]:
        return {"compensation": self.comp.state_dict(),
                "base": {k: w.detach().clone() for k, w in self.base.items()}}

    def load_state_dict(self, st: dict[str, Any], *, released: bool) -> None:
        """Restore from a checkpoint; ``released``: the last mask update is behind (statistics no longer needed)."""
        self.comp.load_state_dict(st["compensation"])
        if released:
            self.comp.release()
        with torch.no_grad():
            for k, w in self.base.items():
                w.copy_(st["base"][k])
