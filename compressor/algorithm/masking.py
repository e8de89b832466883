"""Binary masks on heads and channels (paper Eq. 13: ``z = (xW0 + xBA) ⊙ M``).

Masks are applied with forward hooks on the (peft-wrapped) projections, so they cover the base and
LoRA outputs together: the outputs of ``q/k/v`` (k, v only under MHA) and ``gate/up`` are multiplied by
the row mask, and the inputs of ``o_proj`` and ``down_proj`` by the column mask. A fused projection
(Phi-3's ``qkv_proj``, ``gate_up_proj``) gets one row mask, its parts' masks stacked in its row order. A
masked model computes exactly what the physically sliced model computes (see ``tests/algorithm/test_merge.py``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.algorithm.groups import LayerGroups, ModelGroups, decoder_layers, projection
from compressor.modeling.architectures import Projection


@dataclass
class LayerMask:
    heads: torch.Tensor  # bool [num_heads], True = kept
    channels: torch.Tensor  # bool [intermediate], True = kept

    def kept_heads(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.heads).flatten()]

    def kept_channels(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.channels).flatten()]


@dataclass
class MaskState:
    """Masks of every layer plus the hooks that apply them."""

    layers: list[LayerMask]
    _handles: list = field(default_factory=list, repr=False)
    _float: list = field(default_factory=list, repr=False)

    @classmethod
    def full(cls, groups: ModelGroups) -> MaskState:
        return cls([LayerMask(torch.ones(lg.num_heads, dtype=torch.bool),
                              torch.ones(lg.intermediate_size, dtype=torch.bool)) for lg in groups.layers])

    def install(self, model: nn.Module, groups: ModelGroups) -> MaskState:
        """Register hooks on ``model``'s projections; call :meth:`remove` to take them off."""
        self.remove()
        self._float = []
        projections = groups.architecture.projections
        for layer, lg, lm in zip(decoder_layers(model), groups.layers, self.layers):
            fm = _FloatMasks(lg, lm, projections)
            self._float.append(fm)
            for proj in projections:
                mod = projection(layer, proj.name)
                if not proj.row_pruned:
                    which = "head_rows" if proj.parts[0] == "o_proj" else "channels"
                    self._handles.append(mod.register_forward_pre_hook(_in_hook(fm, which)))
                elif any(masked_part(lg, part) for part in proj.parts):
                    self._handles.append(mod.register_forward_hook(_out_hook(fm, proj.name)))
        return self

    def refresh(self) -> None:
        """Re-read the boolean masks into the float masks used by the hooks (after changing masks)."""
        for fm in self._float:
            fm.refresh()

    @contextlib.contextmanager
    def bypassed(self):
        """Inside the block the hooks pass activations through unmasked (the dense model, e.g. as teacher)."""
        prev = [fm.active for fm in self._float]
        for fm in self._float:
            fm.active = False
        try:
            yield self
        finally:
            for fm, a in zip(self._float, prev):
                fm.active = a

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict:
        return {"heads": [m.heads.clone() for m in self.layers], "channels": [m.channels.clone() for m in self.layers]}

    def load_state_dict(self, sd: dict) -> None:
        for m, h, c in zip(self.layers, sd["heads"], sd["channels"]):
            m.heads.copy_(h)
            m.channels.copy_(c)
        self.refresh()


def masked_part(lg: LayerGroups, part: str) -> bool:
    """Whether the rows of logical projection ``part`` belong to groups (k, v rows are kept under GQA)."""
    return not (lg.gqa and part in ("k_proj", "v_proj"))


def part_mask(lg: LayerGroups, lm: LayerMask, part: str) -> torch.Tensor:
    """Bool keep-mask over the rows (q/k/v/gate/up) or columns (o/down) of logical projection ``part``."""
    if part in ("gate_proj", "up_proj", "down_proj"):
        return lm.channels
    if not masked_part(lg, part):
        return torch.ones(lg.part_size(part), dtype=torch.bool)
    return lm.heads.repeat_interleave(lg.head_dim)


class _FloatMasks:
    def __init__(self, lg: LayerGroups, lm: LayerMask, projections: tuple[Projection, ...]):
        self.lg, self.lm, self.projections = lg, lm, projections
        self.active = True
        self.refresh()

    def refresh(self) -> None:
        self.masks = {"head_rows": self.lm.heads.float().repeat_interleave(self.lg.head_dim),
                      "channels": self.lm.channels.float()}
        for proj in self.projections:
            if proj.row_pruned:
                self.masks[proj.name] = torch.cat([part_mask(self.lg, self.lm, p) for p in proj.parts]).float()
        self._cache: dict = {}

    def get(self, which: str, like: torch.Tensor) -> torch.Tensor:
        key = (which, like.device, like.dtype)
        t = self._cache.get(key)
        if t is None:
            t = self.masks[which].to(device=like.device, dtype=like.dtype)
            self._cache[key] = t
        return t


def _out_hook(fm: _FloatMasks, which: str):
    def hook(module, args, output):
        return output * fm.get(which, output) if fm.active else output

    return hook


def _in_hook(fm: _FloatMasks, which: str):
    def hook(module, args):
        if not fm.active:
            return None
        x = args[0]
        return (x * fm.get(which, x),) + tuple(args[1:])

    return hook


def mask_lowest(state: MaskState, scores, groups: ModelGroups, heads_per_kv_keep: int | Sequence[int],
                channels_keep: int | Sequence[int]) -> None:
    """Mask the lowest-scoring groups of every layer so each keeps the given widths (one number for every
    layer, or one per layer).

    Already-masked groups stay masked (the schedule only tightens). Under GQA the query heads are
    ranked within each KV group and ``heads_per_kv_keep`` kept per group; under MHA
    ``heads_per_kv_keep`` is the number of heads kept. Ties break towards the lower index.
    """
    n = len(state.layers)
    hk_all = [heads_per_kv_keep] * n if isinstance(heads_per_kv_keep, int) else list(heads_per_kv_keep)
    ch_all = [channels_keep] * n if isinstance(channels_keep, int) else list(channels_keep)
    for lm, sc, lg, heads_per_kv_keep, channels_keep in zip(state.layers, scores, groups.layers, hk_all, ch_all):
        hs = sc.heads.clone().double()
        hs[~lm.heads] = -float("inf")
        new_heads = torch.zeros_like(lm.heads)
        per, n_blocks = (lg.heads_per_kv, lg.num_kv_heads) if lg.gqa else (lg.num_heads, 1)
        for g in range(n_blocks):
            block = hs[g * per:(g + 1) * per]
            keep = _top_indices(block, heads_per_kv_keep) + g * per
            new_heads[keep] = True
        lm.heads.copy_(new_heads & lm.heads)
        cs = sc.channels.clone().double()
        cs[~lm.channels] = -float("inf")
        new_ch = torch.zeros_like(lm.channels)
        new_ch[_top_indices(cs, channels_keep)] = True
        lm.channels.copy_(new_ch & lm.channels)
    state.refresh()


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable: sort by (-score, index) so equal scores keep the lower index
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)
