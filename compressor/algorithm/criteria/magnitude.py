"""Magnitude criterion: the squared L2 norm of a group's (merged) weights (sum of ``W²``)."""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import ProjectionTensors, register_criterion


@register_criterion("magnitude")
def magnitude_importance(t: ProjectionTensors) -> torch.Tensor:
    merged = t.weight
    if t.lora_A is not None and t.lora_B is not None:
        merged = merged + (t.lora_B @ t.lora_A) * t.scaling
    return merged.pow(2)
