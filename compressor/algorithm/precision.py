"""The run's precision: bfloat16 autocast (``amp``) and the dtype the frozen base is held in."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import Criterion, get_criterion
from compressor.core.device import native_bf16

#: ``amp='auto'`` leaves models narrower than this in float32: their matrix products are too small for bfloat16
#: to pay (a 64-wide test model's run is 1.4 x slower under autocast, measured), and they keep exact float32 figures
AMP_MIN_HIDDEN = 256


def resolve_amp(cfg: PruneConfig, device: torch.device, hidden_size: int | None = None) -> bool:
    """Whether the fine-tune runs its forward passes under bfloat16 autocast (``cfg.amp``; ``auto``: only in
    float32 runs of models at least :data:`AMP_MIN_HIDDEN` wide, on hardware with native bfloat16 matmuls)."""
    if cfg.amp == "bf16":
        return True
    wide = hidden_size is None or hidden_size >= AMP_MIN_HIDDEN
    return cfg.amp == "auto" and cfg.dtype == "float32" and not cfg.base_bits and wide and native_bf16(device)


def held_linear_dtype(cfg: PruneConfig, device: torch.device, hidden_size: int | None = None) -> str | None:
    """``bfloat16`` when the run computes under bfloat16 autocast (:func:`resolve_amp`) and its criterion needs no
    float32 gradient of ``W``: the frozen decoder projections are then held once in bfloat16 (no float32 master
    beside autocast's copies; embeddings, norms, LoRA, optimizer and statistics stay float32). None otherwise."""
    if not resolve_amp(cfg, device, hidden_size) or get_criterion(cfg.criterion).needs_weight_grad:
        return None
    return "bfloat16"


@dataclass(frozen=True)
class Precision:
    """The run's precision, resolved once: ``amp`` (bfloat16 autocast of the forward passes) and ``held`` (the dtype
    name the frozen decoder projections are held in; None: the model's own dtype)."""

    amp: bool
    held: str | None


def precision_for(cfg: PruneConfig, device: torch.device, hidden_size: int | None = None,
                  criterion: Criterion | None = None) -> Precision:
    """:func:`resolve_amp` and :func:`held_linear_dtype` in one resolution (``criterion``: the run's, when the caller
    has it)."""
    amp = resolve_amp(cfg, device, hidden_size)
    needs_w_grad = (criterion or get_criterion(cfg.criterion)).needs_weight_grad
    return Precision(amp=amp, held="bfloat16" if amp and not needs_w_grad else None)


def output_dtype(held: str | None, base_bits: int | None, source_dtype: str | None) -> torch.dtype | None:
    """The merged model's dtype: with a base held in 16 bits (``held``) or in ``base_bits`` bits, the checkpoint's own
    16-bit dtype (``source_dtype``) or float32; otherwise None (the model's dtype,
    :func:`compressor.algorithm.merge.merge_and_slice`)."""
    if held is None and not base_bits:
        return None
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(source_dtype or "", torch.float32)
