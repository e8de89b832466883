"""How much to prune, and when.

``--ratio r`` is the fraction of the parameters of the decoder layers' prunable projections
(``q,k,v,o,gate,up,down``) to remove. Every layer is pruned to the same widths so the result is a stock
config. How the budget is split between heads and MLP channels is the ``head_policy`` (see
:func:`solve_widths`); under GQA the KV heads are always kept. The achieved ratio is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compressor.algorithm.groups import LayerGroups
from compressor.core.errors import ConfigError
from compressor.modeling.flops import projection_params


@dataclass(frozen=True)
class Widths:
    """Target widths of every layer."""

    heads_per_kv: int  # query heads kept per KV group (MHA: heads kept, KV groups of one)
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


def layer_params(lg: LayerGroups, hidden: int, heads: int | None = None, kv: int | None = None,
                 inter: int | None = None) -> int:
    """Weights in one layer's prunable projections (biases ignored)."""
    heads = lg.num_heads if heads is None else heads
    kv = lg.num_kv_heads if kv is None else kv
    inter = lg.intermediate_size if inter is None else inter
    return projection_params(hidden, lg.head_dim, heads, kv, inter)


def _kept(lg: LayerGroups, heads_per_kv: int) -> tuple[int, int]:
    if lg.gqa:
        return lg.num_kv_heads * heads_per_kv, lg.num_kv_heads
    return heads_per_kv, heads_per_kv


HEAD_POLICIES = ("mlp-first", "balanced")
#: under ``mlp-first`` the MLP keeps at least this fraction of its channels before heads are pruned
MLP_FIRST_MIN_CHANNELS = 0.25


def solve_widths(lg: LayerGroups, hidden: int, ratio: float, channel_multiple: int = 8,
                 head_policy: str = "mlp-first") -> Widths:
    """Widths that remove about ``ratio`` of a layer's prunable weights.

    Candidates are every feasible head count (≥ 1 head per KV group); for each, the MLP width that
    best meets the ratio is computed (rounded to ``channel_multiple`` when possible). Then

    * ``head_policy="mlp-first"`` (default): the candidate that keeps the most heads while the MLP keeps at
      least ``MLP_FIRST_MIN_CHANNELS`` of its channels (measured on SmolLM2-135M: removing a third of the
      heads cost ~1.8 nats of training loss at once, removing 28 % of the MLP channels ~0.1);
    * ``head_policy="balanced"``: the candidate whose head keep-fraction is closest to its channel
      keep-fraction (the paper's uniform ratio), ties broken by the closer achieved ratio.

    Raises:
        ConfigError: ``ratio`` outside (0, 1), or so large that a layer would keep no head or channel.
    """
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio < 1.0):
        raise ConfigError(f"ratio {ratio!r} is not valid; give a number in the open interval (0, 1)")
    total = layer_params(lg, hidden)
    budget = total * (1.0 - ratio)
    per_group_max = lg.heads_per_kv if lg.gqa else lg.num_heads
    if head_policy not in HEAD_POLICIES:
        raise ConfigError(f"head_policy {head_policy!r} is not valid; use one of {', '.join(HEAD_POLICIES)}")
    best: tuple[Any, Widths] | None = None
    candidates: list[tuple[int, Widths, float]] = []
    for hk in range(1, per_group_max + 1):
        heads, kv = _kept(lg, hk)
        attn = layer_params(lg, hidden, heads, kv, 0)
        rest = budget - attn
        inter = rest / (3 * hidden)
        if channel_multiple > 1 and lg.intermediate_size >= channel_multiple:
            inter_r = int(round(inter / channel_multiple)) * channel_multiple
        else:
            inter_r = int(round(inter))
        inter_r = min(inter_r, lg.intermediate_size)
        if inter_r < 1:
            continue
        head_frac = heads / lg.num_heads
        ch_frac = inter_r / lg.intermediate_size
        achieved = 1 - layer_params(lg, hidden, heads, kv, inter_r) / total
        key = (round(abs(head_frac - ch_frac), 9), abs(achieved - ratio))
        candidates.append((hk, Widths(hk, heads, kv, inter_r), ch_frac))
        if best is None or key < best[0]:
            best = (key, Widths(hk, heads, kv, inter_r))
    if head_policy == "mlp-first" and candidates:
        ok = [c for c in candidates if c[2] >= MLP_FIRST_MIN_CHANNELS]
        best = (None, max(ok, key=lambda c: c[0])[1] if ok else min(candidates, key=lambda c: c[0])[1])
    if best is None:
        raise ConfigError(
            f"ratio {ratio} would leave layers with no attention heads or no MLP channels "
            f"(heads={lg.num_heads}, kv_heads={lg.num_kv_heads}, intermediate={lg.intermediate_size}); "
            f"the largest feasible ratio is about {max_ratio(lg, hidden):.3f}"
        )
    widths = best[1]
    return widths


def max_ratio(lg: LayerGroups, hidden: int) -> float:
    heads, kv = _kept(lg, 1)
    return 1 - layer_params(lg, hidden, heads, kv, 1) / layer_params(lg, hidden)


def achieved_ratio(lg: LayerGroups, hidden: int, w: Widths) -> float:
    return 1 - layer_params(lg, hidden, w.num_heads, w.num_kv_heads, w.intermediate_size) / layer_params(lg, hidden)


SCHEDULES = ("linear", "cubic")


def prune_events(total_steps: int, prune_every: int, prune_until: float, prune_start: float = 0.0) -> list[int]:
    """Optimizer steps (1-based) after which masks are updated: every ``prune_every`` steps after the first
    ``prune_start × total_steps`` (scoring only) up to ``prune_until × total_steps`` (at least one event)."""
    first = int(math.floor(total_steps * prune_start)) + prune_every
    last = max(first, int(math.floor(total_steps * prune_until)))
    last = min(last, total_steps)
    first = min(first, last)
    ev = list(range(first, last + 1, prune_every))
    return ev or [min(prune_every, total_steps)]


def progress_at(event: int, n_events: int, schedule: str = "linear") -> float:
    """Share of the way from dense to the target after event ``event`` (1-based) of ``n_events``:
    ``k/n`` (linear) or ``1 − (1 − k/n)³`` (cubic, Zhu & Gupta 2017; the official LoRAPrune trainer)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule {schedule!r} is not valid; use one of {', '.join(SCHEDULES)}")
    frac = min(1.0, max(0.0, event / n_events))
    return frac if schedule == "linear" else 1.0 - (1.0 - frac) ** 3


def widths_at(event: int, n_events: int, lg: LayerGroups, final: Widths, schedule: str = "linear") -> tuple[int, int]:
    """Progressive schedule: after event ``event`` (1-based) of ``n_events`` the widths have moved
    :func:`progress_at` of the way from dense to ``final``. Returns ``(heads_per_kv, intermediate)``."""
    frac = progress_at(event, n_events, schedule)
    per_full = lg.heads_per_kv if lg.gqa else lg.num_heads
    hk = per_full - int(math.floor((per_full - final.heads_per_kv) * frac + 1e-9))
    ch = lg.intermediate_size - int(math.floor((lg.intermediate_size - final.intermediate_size) * frac + 1e-9))
    return hk, ch
