"""The run's precision: bfloat16 autocast (``amp``) and the dtype the frozen base is held in."""
from __future__ import annotations

import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import get_criterion
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
