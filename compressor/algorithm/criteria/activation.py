"""``activation``: first-order effect of removing a whole head or channel, from activations and their
gradients at the inputs of ``o_proj`` / ``down_proj`` (no W gradient). Group-level: the scores are
collected by :class:`compressor.algorithm.activation_scorer.ActivationScorer`, not from element importances."""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import ProjectionTensors, register_criterion


@register_criterion("activation", group_level=True)
def activation_importance(t: ProjectionTensors) -> torch.Tensor:
    raise ValueError("the 'activation' criterion scores whole groups from activation gradients; "
                     "use compressor.algorithm.activation_scorer.ActivationScorer")
