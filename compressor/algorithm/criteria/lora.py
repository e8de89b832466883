"""LoRA-guided criterion (LoRAPrune, Zhang et al. 2023, Eq. 10).

The gradient of the merged weight ``W = W0 + BA`` is estimated from LoRA's factors and their gradients
only, so ``W0`` never needs a gradient (or even to be in float):

    Î = [ (∇B·A + B·∇A − ∇B·∇A) ⊙ (W0 + BA·scaling) ]²        (Eq. 10)

``∇B`` and ``∇A`` already carry the LoRA scaling (it sits in the forward pass), so it is not applied to
the gradient estimate again.
"""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import ProjectionTensors, register_criterion


@register_criterion("lora", needs_lora_grads=True)
def lora_importance(t: ProjectionTensors) -> torch.Tensor:
    """Element importance of Eq. 10 with the weight's shape ``[out, in]``."""
    A, B, gA, gB = t.lora_A, t.lora_B, t.grad_A, t.grad_B
    if A is None or B is None or gA is None or gB is None:
        raise ValueError("the 'lora' criterion needs lora_A, lora_B and their gradients")
    # one matmul with inner size 3r:  [∇B, B, −∇B] · [A; ∇A; ∇A]
    grad_est = torch.cat([gB, B, -gB], dim=1) @ torch.cat([A, gA, gA], dim=0)
    merged = t.weight + (B @ A) * t.scaling
    return (grad_est * merged).pow(2)
