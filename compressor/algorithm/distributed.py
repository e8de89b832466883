"""Data-parallel runs (``accelerate launch --multi_gpu --num_processes N -m compressor.cli prune ...``; gloo on
CPU): every rank trains on its own share of each batch, DDP averages the gradients, and the group scores are
averaged across ranks before the moving average, so every rank masks the same groups."""
from __future__ import annotations

import os
from typing import Any

import torch

from compressor.algorithm.masking import MaskState
from compressor.algorithm.scoring import LayerScores


def world_size() -> int:
    """Processes of this run (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_secondary_rank() -> bool:
    """Whether this process is a data-parallel rank other than the first (it writes nothing)."""
    return world_size() > 1 and int(os.environ.get("RANK", "0")) != 0


def accelerator() -> Any:
    """An ``accelerate.Accelerator`` when launched data-parallel, else None."""
    if world_size() > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return None


def reduce_scores(acc: Any, scores: list[LayerScores], device: torch.device) -> list[LayerScores]:
    """``scores`` averaged over the ranks."""
    flat = torch.cat([torch.cat([s.heads, s.channels]) for s in scores]).to(device)
    flat = acc.reduce(flat, "mean").cpu()
    out, i = [], 0
    for s in scores:
        h, c = s.heads.numel(), s.channels.numel()
        out.append(LayerScores(flat[i:i + h].clone(), flat[i + h:i + h + c].clone()))
        i += h + c
    return out


def masks_agree(acc: Any, masks: MaskState, device: torch.device) -> bool | None:
    """Whether every rank holds the same masks (None in a single-process run)."""
    if acc is None:
        return None
    acc.wait_for_everyone()
    flat = torch.cat([torch.cat([m.heads, m.channels]) for m in masks.layers]).to(torch.uint8).to(device)
    gathered = acc.gather(flat.unsqueeze(0)).cpu()
    return bool((gathered == gathered[0]).all())
