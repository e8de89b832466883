"""compressor.algorithm.schedule: when the masks are updated (prune_events, prune_start), how far each update
goes (linear / cubic progress), and the final widths a ratio asks for (head policies, refused ratios)."""
from __future__ import annotations

import math

import pytest

from compressor.algorithm.groups import discover_groups
from compressor.algorithm.schedule import achieved_ratio, progress_at, prune_events, solve_widths, widths_at
from compressor.core.errors import ConfigError
from tests.tiny import layer_groups, tiny_loop, tiny_model


@pytest.mark.parametrize("steps,every,until,start,expected", [
    (20, 2, 0.5, 0.0, [2, 4, 6, 8, 10]),
    (20, 2, 0.5, 0.2, [6, 8, 10]),
    (10, 3, 1.0, 0.0, [3, 6, 9]),
    (10, 20, 0.5, 0.0, [10]),
    (100, 10, 0.9, 0.1, [20, 30, 40, 50, 60, 70, 80, 90]),
])
def test_prune_events_table(steps, every, until, start, expected):
    assert prune_events(steps, every, until, start) == expected


@pytest.mark.parametrize("k,n,schedule,expected", [
    (1, 4, "linear", 0.25), (4, 4, "linear", 1.0), (1, 4, "cubic", 1 - 0.75 ** 3), (2, 4, "cubic", 1 - 0.5 ** 3),
    (4, 4, "cubic", 1.0),
])
def test_progress_at_table(k, n, schedule, expected):
    assert progress_at(k, n, schedule) == pytest.approx(expected)


def test_widths_at_linear_and_cubic():
    lg = layer_groups()
    final = solve_widths(lg, 32, 0.5, 8, "balanced")
    assert widths_at(4, 4, lg, final) == (final.heads_per_kv, final.intermediate_size)
    lin = [widths_at(k, 4, lg, final)[1] for k in range(1, 5)]
    cub = [widths_at(k, 4, lg, final, "cubic")[1] for k in range(1, 5)]
    assert lin == sorted(lin, reverse=True) and cub == sorted(cub, reverse=True)
    assert all(c <= v for c, v in zip(cub, lin)), "cubic prunes faster early"
    drop = lg.intermediate_size - final.intermediate_size
    assert lin[0] == lg.intermediate_size - math.floor(drop * 0.25)


def test_prune_start_leaves_masks_full_until_then():
    loop = tiny_loop(steps=20, prune_every=2, prune_start=0.2, prune_until=0.6)
    assert loop.events[0] == 6
    while not loop.done:
        rec = loop.step()
        if rec.step < 6:
            assert rec.sparsity == 0.0 and loop.ema.updates == rec.step, "scores accumulate, nothing masked"
    assert loop.history[5]["sparsity"] > 0


def test_cubic_schedule_prunes_faster_first():
    lin = tiny_loop(steps=20, prune_every=2, prune_until=0.8)
    cub = tiny_loop(steps=20, prune_every=2, prune_until=0.8, schedule="cubic")
    while not lin.done:
        lin.step()
        cub.step()
    sl = [h["sparsity"] for h in lin.history]
    sc = [h["sparsity"] for h in cub.history]
    assert sl[-1] == sc[-1] and sc[1] > sl[1]
    assert sc == sorted(sc)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_ratio_out_of_range(ratio):
    g = discover_groups(tiny_model("llama-gqa"))
    with pytest.raises(ConfigError, match="open interval"):
        solve_widths(g.layers[0], g.hidden_size, ratio)


def test_ratio_leaving_no_heads():
    g = discover_groups(tiny_model("llama-gqa"))
    with pytest.raises(ConfigError, match="no attention heads"):
        solve_widths(g.layers[0], g.hidden_size, 0.99)


def test_widths_balanced_on_smollm_shapes():
    from compressor.algorithm.groups import LayerGroups

    lg = LayerGroups(0, 9, 3, 64, 1536)
    w = solve_widths(lg, 576, 0.5, head_policy="balanced")
    assert (w.num_heads, w.num_kv_heads) == (3, 3) and w.intermediate_size % 8 == 0
    assert abs(achieved_ratio(lg, 576, w) - 0.5) < 0.01
    w2 = solve_widths(lg, 576, 0.2, head_policy="balanced")
    assert abs(achieved_ratio(lg, 576, w2) - 0.2) < 0.01


def test_widths_mlp_first_keeps_heads_until_mlp_floor():
    from compressor.algorithm.groups import LayerGroups

    lg = LayerGroups(0, 9, 3, 64, 1536)
    w = solve_widths(lg, 576, 0.5)  # default policy
    assert (w.num_heads, w.num_kv_heads) == (9, 3) and w.intermediate_size == 512
    assert abs(achieved_ratio(lg, 576, w) - 0.5) < 0.01
    w6 = solve_widths(lg, 576, 0.6)  # the MLP alone cannot absorb 60 % above its floor: a third of the heads go
    assert w6.num_heads == 6 and w6.intermediate_size >= 0.25 * 1536
    assert abs(achieved_ratio(lg, 576, w6) - 0.6) < 0.01
    w7 = solve_widths(lg, 576, 0.7)  # floor unreachable: as few heads as allowed, the rest from the MLP
    assert w7.num_heads == 3 and abs(achieved_ratio(lg, 576, w7) - 0.7) < 0.01
