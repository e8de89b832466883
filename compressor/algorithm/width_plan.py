"""The run's target widths: per layer, at each mask update (uniform or adaptive MLP widths, skipped layers dense),
checked before any work against what the installed transformers can reload; and the share of weights masked."""
from __future__ import annotations

import math
from typing import Any

import torch

from compressor.algorithm.config import PruneConfig, parse_skip_layers
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.masking import MaskState
from compressor.algorithm.merge import check_pruned_config, pruned_config_updates
from compressor.algorithm.schedule import Widths, layer_params, solve_widths, widths_at
from compressor.algorithm.scoring import LayerScores
from compressor.core.errors import ConfigError
from compressor.modeling.adapters import unwrap


class WidthPlan:
    """Target widths per layer at each mask update: the uniform solution (``widths="uniform"``) or MLP widths
    from one ranking across layers (``"adaptive"``); layers in ``skip_layers`` stay dense."""

    def __init__(self, groups: ModelGroups, cfg: PruneConfig):
        self.groups, self.cfg = groups, cfg
        n = groups.num_layers
        self.skip = parse_skip_layers(cfg.skip_layers, n)
        self.pruned = [i for i in range(n) if i not in self.skip]
        lg0 = groups.layers[0]
        eff = cfg.ratio * n / len(self.pruned)
        if eff >= 1.0:
            raise ConfigError(f"ratio {cfg.ratio} with skip_layers={cfg.skip_layers!r} ({len(self.skip)} of {n} layers "
                              f"dense) would remove {eff:.0%} of every other layer; lower the ratio or skip fewer layers")
        self.final: Widths = solve_widths(lg0, groups.hidden_size, eff, cfg.channel_multiple, cfg.head_policy)
        if cfg.widths == "adaptive" and self.floor() > self.final.intermediate_size:
            raise ConfigError(f"min_channels={cfg.min_channels} keeps {self.floor()} MLP channels per layer, more than "
                              f"ratio {cfg.ratio} leaves on average ({self.final.intermediate_size} of "
                              f"{lg0.intermediate_size}); give min_channels <= "
                              f"{self.final.intermediate_size / lg0.intermediate_size:.2f}")

    def floor(self) -> int:
        """Fewest MLP channels an adaptive layer keeps (``min_channels``, rounded up to ``channel_multiple``)."""
        m = max(1, self.cfg.channel_multiple)
        inter = self.groups.layers[0].intermediate_size
        return min(inter, max(m, int(math.ceil(self.cfg.min_channels * inter / m)) * m))

    @property
    def uniform(self) -> bool:
        return self.cfg.widths == "uniform" and not self.skip

    def at(self, k: int, n_events: int, scores: list[LayerScores] | None, masks: MaskState
           ) -> tuple[list[int], list[int]]:
        """``(heads_per_kv, channels)`` per layer after update ``k`` (1-based) of ``n_events``."""
        lg0 = self.groups.layers[0]
        per_full = lg0.heads_per_kv if lg0.gqa else lg0.num_heads
        hk, ch = widths_at(k, n_events, lg0, self.final, self.cfg.schedule)
        heads = [per_full] * self.groups.num_layers
        chans = [lg0.intermediate_size] * self.groups.num_layers
        for i in self.pruned:
            heads[i], chans[i] = hk, ch
        if self.cfg.widths == "adaptive" and scores is not None:
            alloc = self._allocate(ch * len(self.pruned), scores, masks)
            for i, c in zip(self.pruned, alloc):
                chans[i] = c
        return heads, chans

    def _allocate(self, total: int, scores: list[LayerScores], masks: MaskState) -> list[int]:
        """Split ``total`` MLP channels over the pruned layers by one ranking of their (moving-average)
        scores across layers, with a floor of ``min_channels`` and multiples of ``channel_multiple``."""
        m = max(1, self.cfg.channel_multiple)
        floor = self.floor()
        kept = [int(masks.layers[i].channels.sum()) for i in self.pruned]
        srt = []
        for i in self.pruned:
            s = scores[i].channels.double().clone()
            s[~masks.layers[i].channels] = -float("inf")
            srt.append(torch.sort(s, descending=True).values)
        base = [min(floor, k) for k in kept]
        extra = max(0, total - sum(base))
        pool = torch.cat([s[b:k] for s, b, k in zip(srt, base, kept)])
        owner = torch.cat([torch.full((k - b,), j) for j, (b, k) in enumerate(zip(base, kept))]).long()
        counts = list(base)
        if extra > 0 and pool.numel():
            top = torch.topk(pool, min(extra, pool.numel())).indices
            for j in owner[top].tolist():
                counts[j] += 1
        counts = [min(k, max(b, int(round(c / m)) * m)) for c, b, k in zip(counts, base, kept)]

        def block_score(j: int, start: int) -> float:
            blk = srt[j][start:start + m]
            return float(blk.mean()) if blk.numel() else -float("inf")

        while total - sum(counts) >= m:  # add the best next block
            cand = [(block_score(j, counts[j]), j) for j in range(len(counts)) if counts[j] + m <= kept[j]]
            if not cand:
                break
            counts[max(cand)[1]] += m
        while sum(counts) - total >= m:  # drop the worst last block
            cand = [(block_score(j, counts[j] - m), j) for j in range(len(counts)) if counts[j] - m >= base[j]]
            if not cand:
                break
            counts[min(cand)[1]] -= m
        return counts


def check_output_config(model: Any, groups: ModelGroups, cfg: PruneConfig) -> tuple[WidthPlan, str | None]:
    """The run's :class:`WidthPlan` and how its result will be written, checked before any work.

    Returns ``(plan, refusal)``: ``refusal`` is None when the pruned model is a stock folder (or has per-layer
    widths anyway), else the installed transformers' message refusing the uniform stock config: the result is then
    written as the per-layer remote-code folder of its architecture (see :func:`compressor.algorithm.merge.check_pruned_config`).

    Raises:
        ConfigError: the widths are infeasible, or their stock config would not reload and the architecture has no
            per-layer class (e.g. a head-pruned Gemma2/Gemma3 on transformers >= 5.16, Phi-3 with longrope).
    """
    plan = WidthPlan(groups, cfg)
    final = plan.final
    refusal = check_pruned_config(unwrap(model).config, pruned_config_updates(groups, final.num_heads,
                                                                            final.intermediate_size))
    return plan, refusal if plan.uniform else None


def remote_code_note(groups: ModelGroups, heads: int, refusal: str) -> str:
    """The note printed before a run whose uniform result is written as a per-layer remote-code folder."""
    import transformers

    h = groups.hidden_size
    return (f"transformers {transformers.__version__} refuses a stock {groups.model_type} config with {heads} "
            f"attention heads and hidden_size {h} ({refusal}); the pruned model will be written as a remote-code "
            f"folder (model_type lorapress_{groups.model_type}: loads with lorapress, or with "
            f"trust_remote_code=True). A head count that divides {h} keeps a stock folder (a lower --ratio, or "
            f"--head-policy mlp-first, which prunes MLP channels before heads)")


def kept_params(groups: ModelGroups, masks: MaskState) -> tuple[int, int]:
    """``(kept, total)`` weights of the prunable projections under ``masks``."""
    total = kept = 0
    for lg, lm in zip(groups.layers, masks.layers):
        h = int(lm.heads.sum())
        total += layer_params(lg, groups.hidden_size)
        kept += layer_params(lg, groups.hidden_size, h, lg.num_kv_heads if lg.gqa else h, int(lm.channels.sum()))
    return kept, total


def sparsity(groups: ModelGroups, masks: MaskState) -> float:
    """Fraction of the prunable projections' weights currently masked."""
    kept, total = kept_params(groups, masks)
    return (total - kept) / total
