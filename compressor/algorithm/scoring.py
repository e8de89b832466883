"""Turn element importances into per-group scores (paper Eq. 4) and smooth them (Eq. 11)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.algorithm.criteria import ElementCriterion, ProjectionTensors
from compressor.algorithm.groups import MLP, LayerGroups, ModelGroups, decoder_layers, projection
from compressor.algorithm.masking import masked_part
from compressor.modeling.adapters import base_weight, lora_parts
from compressor.modeling.architectures import COL_PARTS, LLAMA_PROJECTIONS, ROW_PARTS, Projection

ROW_PRUNED = ROW_PARTS  # groups own output rows
COL_PRUNED = COL_PARTS  # groups own input columns


def projection_tensors(mod: nn.Module, criterion: ElementCriterion, generator: torch.Generator | None,
                       adapter: str = "default") -> ProjectionTensors:
    A, B, s = lora_parts(mod, adapter)
    w = base_weight(mod)
    t = ProjectionTensors(weight=w, scaling=s, generator=generator)
    if A is not None:
        t.lora_A, t.lora_B = A.detach().float(), B.detach().float()
        if A.grad is not None and B.grad is not None:
            t.grad_A, t.grad_B = A.grad.detach().float(), B.grad.detach().float()
        elif criterion.needs_lora_grads:
            t.grad_A = torch.zeros_like(t.lora_A) if A.grad is None else A.grad.detach().float()
            t.grad_B = torch.zeros_like(t.lora_B) if B.grad is None else B.grad.detach().float()
    if criterion.needs_weight_grad:
        g = getattr(getattr(mod, "base_layer", mod).weight, "grad", None)
        t.weight_grad = torch.zeros_like(w) if g is None else g.detach().float()
    return t


@dataclass
class LayerScores:
    """Per-group scores of one layer: ``heads`` [num_heads], ``channels`` [intermediate]."""

    heads: torch.Tensor
    channels: torch.Tensor


AGGREGATES = ("sum-sq", "official")


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if float(n) > 0 else v


def layer_scores(layer: nn.Module, lg: LayerGroups, criterion: ElementCriterion,
                 generator: torch.Generator | None = None, aggregate: str = "sum-sq",
                 projections: tuple[Projection, ...] = LLAMA_PROJECTIONS) -> LayerScores:
    """Group scores of one layer from the criterion's element importances (Eq. 4).

    ``aggregate="sum-sq"``: each group's score is the sum of its elements' importances (the criteria return
    squared saliencies, e.g. Eq. 10). ``aggregate="official"`` (the official LoRAPrune code): the
    absolute saliency (the square root of the importance) is summed per group within each projection, each
    projection's group vector is scaled to unit L2 norm, and the projections' vectors are summed.

    ``projections`` (default: llama's unfused ones) come from the model's
    :class:`~compressor.modeling.architectures.Architecture`; a fused projection is scored once and its importances
    split into its logical parts' rows, so each part contributes exactly as an unfused one would.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r} is not valid; use one of {', '.join(AGGREGATES)}")
    d = lg.head_dim
    head_parts: list[torch.Tensor] = []
    chan_parts: list[torch.Tensor] = []
    for proj in projections:
        if not any(masked_part(lg, part) for part in proj.parts):
            continue  # KV heads are kept under GQA; they are not part of a q-head group
        imp = criterion(projection_tensors(projection(layer, proj.name), criterion, generator))
        if aggregate == "official":
            imp = imp.clamp_min(0).sqrt()
        if not proj.row_pruned:
            pieces = [(proj.parts[0], imp.sum(dim=0))]
        else:
            red = imp.sum(dim=1)
            pieces = [(part, red[start:start + n]) for part, start, n in lg.part_offsets(proj) if masked_part(lg, part)]
        for part, v in pieces:
            if part in MLP:
                chan_parts.append(v)
            else:
                head_parts.append(v.view(lg.num_heads, d).sum(1))
    if aggregate == "official":
        head_parts = [_unit(v.double()) for v in head_parts]
        chan_parts = [_unit(v.double()) for v in chan_parts]
    heads = torch.stack([v.double() for v in head_parts]).sum(0)
    channels = torch.stack([v.double() for v in chan_parts]).sum(0)
    return LayerScores(heads, channels)


def model_scores(model: nn.Module, groups: ModelGroups, criterion: ElementCriterion,
                 generator: torch.Generator | None = None, aggregate: str = "sum-sq") -> list[LayerScores]:
    """Group scores of every layer of ``model`` (peft-wrapped or plain)."""
    projections = groups.architecture.projections
    return [layer_scores(layer, lg, criterion, generator, aggregate, projections)
            for layer, lg in zip(decoder_layers(model), groups.layers)]


class MovingAverage:
    """``G ← λG + (1−λ)Ĝ`` per group (Eq. 11). A step with a non-finite score is skipped and counted.

    ``start="first"``: the first accepted step initialises ``G = Ĝ`` (no zero-initialisation bias);
    ``start="zero"``: ``G`` starts at 0 (the official code), so early scores weigh less.
    """

    def __init__(self, lam: float = 0.9, start: str = "first"):
        if start not in ("first", "zero"):
            raise ValueError(f"moving-average start {start!r} is not valid; use first or zero")
        self.lam = float(lam)
        self.start = start
        self.value: list[LayerScores] | None = None
        self.updates = 0
        self.skipped = 0

    def update(self, scores: list[LayerScores]) -> bool:
        if not all(torch.isfinite(s.heads).all() and torch.isfinite(s.channels).all() for s in scores):
            self.skipped += 1
            return False
        if self.value is None and self.start == "first":
            self.value = [LayerScores(s.heads.clone(), s.channels.clone()) for s in scores]
        else:
            if self.value is None:
                self.value = [LayerScores(torch.zeros_like(s.heads), torch.zeros_like(s.channels)) for s in scores]
            lam = self.lam
            for g, s in zip(self.value, scores):
                g.heads.mul_(lam).add_(s.heads, alpha=1 - lam)
                g.channels.mul_(lam).add_(s.channels, alpha=1 - lam)
        self.updates += 1
        return True

    def state_dict(self) -> dict:
        return {"lam": self.lam, "start": self.start, "updates": self.updates, "skipped": self.skipped,
                "heads": None if self.value is None else [s.heads for s in self.value],
                "channels": None if self.value is None else [s.channels for s in self.value]}

    def load_state_dict(self, sd: dict) -> None:
        self.lam, self.updates, self.skipped = sd["lam"], sd["updates"], sd["skipped"]
        self.start = sd.get("start", "first")
        self.value = None if sd["heads"] is None else [
            LayerScores(h.clone(), c.clone()) for h, c in zip(sd["heads"], sd["channels"])]
