"""Random criterion: i.i.d. uniform element scores from a seeded generator (a sanity baseline)."""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import ProjectionTensors, register_criterion


@register_criterion("random")
def random_importance(t: ProjectionTensors) -> torch.Tensor:
    return torch.rand(t.weight.shape, generator=t.generator, dtype=torch.float32).to(t.weight.device)
