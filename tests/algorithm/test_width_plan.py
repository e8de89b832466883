"""The width plan: skipped layers stay dense while the total ratio is met; adaptive widths hit the ratio, respect
the floors and follow the scores; the loop with both finishes masked == merged."""
from __future__ import annotations

import math

import pytest
import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.loop import PruneLoop
from compressor.algorithm.masking import MaskState
from compressor.algorithm.scoring import LayerScores
from compressor.algorithm.width_plan import WidthPlan, sparsity
from compressor.core.errors import ConfigError
from tests.tiny import layer_groups, logits_of, tiny_loop, tiny_model, tiny_text, tiny_tokenizer


def test_skip_layers_stay_dense_and_the_total_ratio_is_met():
    loop = tiny_loop(layers=4, skip_layers="0,-1", ratio=0.3, steps=8)
    while not loop.done:
        loop.step()
    full = loop.groups.layers[0]
    assert [int(m.channels.sum()) for m in loop.masks.layers][0] == full.intermediate_size
    assert int(loop.masks.layers[3].heads.sum()) == full.num_heads
    assert abs(sparsity(loop.groups, loop.masks) - 0.3) < 0.1
    merged = loop.finish()  # per-layer widths (tests/modeling/test_perlayer.py)
    assert merged.config.per_layer_intermediate_size[0] == full.intermediate_size


@pytest.mark.parametrize("ratio,floor", [(0.5, 0.1), (0.3, 0.25)])
def test_adaptive_widths_hit_the_ratio_and_respect_floors(ratio, floor):
    loop = tiny_loop(layers=4, widths="adaptive", min_channels=floor, ratio=ratio, steps=10, channel_multiple=4,
                 criterion="activation")
    prev = None
    while not loop.done:
        loop.step()
        counts = [int(m.channels.sum()) for m in loop.masks.layers]
        if prev is not None:
            assert all(c <= p for c, p in zip(counts, prev)), "masks only tighten"
        prev = counts
    lg = loop.groups.layers[0]
    uniform = WidthPlan(loop.groups, loop.cfg).final.intermediate_size
    assert abs(sum(prev) - uniform * 4) < 4, "the same total number of channels as the uniform solution"
    assert all(c % 4 == 0 for c in prev)
    assert min(prev) >= math.ceil(floor * lg.intermediate_size / 4) * 4 or min(prev) >= 4
    assert all(c >= floor * lg.intermediate_size - 1e-9 for c in prev)


def test_adaptive_floor_above_the_budget_is_refused():
    with pytest.raises(ConfigError, match="min_channels=0.5 keeps 20 MLP channels"):
        tiny_loop(layers=4, widths="adaptive", min_channels=0.5, ratio=0.3, channel_multiple=4)


def test_adaptive_allocation_follows_the_scores():
    lgs = tuple(layer_groups(index=i, inter=16) for i in range(2))
    groups = ModelGroups("llama", 32, lgs)
    cfg = PruneConfig(ratio=0.5, widths="adaptive", min_channels=0.25, channel_multiple=4, head_policy="balanced")
    plan = WidthPlan(groups, cfg)
    masks = MaskState.full(groups)
    # layer 0's channels all score above layer 1's: layer 1 goes down to its floor first
    sc = [LayerScores(torch.ones(6).double(), torch.full((16,), 10.0).double()),
          LayerScores(torch.ones(6).double(), torch.linspace(0, 1, 16).double())]
    _, chans = plan.at(1, 1, sc, masks)
    total = plan.final.intermediate_size * 2
    assert sum(chans) == total and chans[1] == max(4, total - 16) and chans[0] == min(16, total - 4)


def test_prune_loop_with_skip_layers_and_adaptive_widths_finishes(tmp_path):
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig

    cfg = PruneConfig(ratio=0.3, steps=6, prune_every=2, seq_len=32, batch_size=2, eval_windows=0, lr=1e-3,
                      skip_layers="0", widths="adaptive", channel_multiple=4, min_channels=0.25,
                      criterion="activation")
    loop = PruneLoop(tiny_model("llama-gqa", layers=4), cfg, as_blocks([tiny_text(3000)], tiny_tokenizer(), cfg))
    while not loop.done:
        loop.step()
    loop.masked_model.eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    masked = logits_of(loop.masked_model, ids)
    merged = loop.finish()
    assert torch.allclose(masked, logits_of(merged, ids), atol=1e-5)
    heads = merged.config.per_layer_num_attention_heads
    assert heads[0] == 6 and len(set(heads[1:])) == 1 and heads[1] < 6
    assert merged.config.per_layer_intermediate_size == [int(m.channels.sum()) for m in loop.masks.layers]
