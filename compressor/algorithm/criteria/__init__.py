"""Importance criteria, registered by name. Two kinds:

* element criteria (:func:`register_criterion`: ``lora``, ``taylor``, ``magnitude``, ``random``): a pure function of
  one projection's tensors (:class:`ProjectionTensors`) returning an element-wise importance matrix with the weight's
  shape ``[out, in]``. Group scores are sums of these (paper Eq. 4), formed in :mod:`compressor.algorithm.scoring`.
* group criteria (:func:`register_group_criterion`: ``activation``, ``residual``): whole heads and channels scored
  from activations and their gradients (:class:`compressor.algorithm.activation_scorer.ActivationScorer`).

Example:
    >>> from compressor.algorithm.criteria import get_criterion, available_criteria
    >>> sorted(available_criteria())
    ['activation', 'lora', 'magnitude', 'random', 'residual', 'taylor']
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from compressor.core.errors import ConfigError


@dataclass
class ProjectionTensors:
    """What a criterion may read for one linear projection (all float32, on one device).

    Attributes:
        weight: base weight ``W0`` ``[out, in]`` (dequantized when the base is 8- or 4-bit).
        weight_grad: ``dL/dW0`` — only for criteria with ``needs_weight_grad`` (vanilla Taylor).
        lora_A, lora_B: LoRA factors ``A [r, in]`` and ``B [out, r]``.
        grad_A, grad_B: their gradients.
        scaling: LoRA's ``alpha / r``.
        generator: seeded generator for stochastic criteria.
    """

    weight: torch.Tensor
    weight_grad: torch.Tensor | None = None
    lora_A: torch.Tensor | None = None
    lora_B: torch.Tensor | None = None
    grad_A: torch.Tensor | None = None
    grad_B: torch.Tensor | None = None
    scaling: float = 1.0
    generator: torch.Generator | None = None


class ElementCriterion(Protocol):
    name: str
    needs_lora_grads: bool
    needs_weight_grad: bool
    uses_compensation: bool

    def __call__(self, t: ProjectionTensors) -> torch.Tensor: ...


@dataclass(frozen=True)
class GroupCriterion:
    """A criterion that scores whole groups from activations and their gradients, through
    :class:`compressor.algorithm.activation_scorer.ActivationScorer` (``uses_compensation``: the scorer reads residual
    transforms built from compensation's statistics)."""

    name: str
    uses_compensation: bool = False
    needs_lora_grads: bool = False
    needs_weight_grad: bool = False


Criterion = ElementCriterion | GroupCriterion

_REGISTRY: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_lora_grads: bool = False, needs_weight_grad: bool = False
                       ) -> Callable[[Callable[[ProjectionTensors], torch.Tensor]], ElementCriterion]:
    """Decorator registering the element criterion ``fn`` under ``name``. Duplicate names are rejected."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"criterion {name!r} is already registered")
        fn.name = name
        fn.needs_lora_grads = needs_lora_grads
        fn.needs_weight_grad = needs_weight_grad
        fn.uses_compensation = False
        _REGISTRY[name] = fn
        return fn

    return deco


def register_group_criterion(criterion: GroupCriterion) -> GroupCriterion:
    """Register a group criterion under its name. Duplicate names are rejected."""
    if criterion.name in _REGISTRY:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    _REGISTRY[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    """Return the criterion registered as ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown criterion {name!r}; valid criteria: {', '.join(sorted(_REGISTRY))}") from None


def available_criteria() -> list[str]:
    return sorted(_REGISTRY)


from compressor.algorithm.criteria import activation, lora, magnitude, random, residual, taylor  # noqa: E402,F401  (registration side effects)
