"""Vanilla first-order Taylor criterion (LoRAPrune Eq. 3, LLM-Pruner's element-wise first order).

``I = (∇W ⊙ W)²`` — needs the gradient of the full base weight, which is what makes it the
memory-hungry baseline: every ``W0`` must be kept trainable in float.
"""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import ProjectionTensors, register_criterion


@register_criterion("taylor", needs_weight_grad=True)
def taylor_importance(t: ProjectionTensors) -> torch.Tensor:
    if t.weight_grad is None:
        raise ValueError("the 'taylor' criterion needs the weight's gradient")
    merged = t.weight
    if t.lora_A is not None and t.lora_B is not None:
        merged = merged + (t.lora_B @ t.lora_A) * t.scaling
    return (t.weight_grad * merged).pow(2)
