"""``activation``: first-order effect of removing a whole head or channel, from activations and their
gradients at the inputs of ``o_proj`` / ``down_proj`` (no W gradient). A group criterion: its scorer is
:class:`compressor.algorithm.activation_scorer.ActivationScorer`."""
from __future__ import annotations

from compressor.algorithm.criteria import GroupCriterion, register_group_criterion

ACTIVATION = register_group_criterion(GroupCriterion("activation"))
