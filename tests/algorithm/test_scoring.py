"""compressor.algorithm.scoring: group scores (sum of squares and the official per-projection normalisation)
against a hand computation, and the moving average of the scores."""
from __future__ import annotations

import math

import pytest
import torch

from compressor.algorithm.criteria import ProjectionTensors, get_criterion
from compressor.algorithm.groups import decoder_layers, discover_groups, projection
from compressor.algorithm.scoring import LayerScores, MovingAverage, layer_scores, projection_tensors
from tests.tiny import tiny_loop, tiny_model


def test_moving_average_first_and_zero_start():
    s1 = [LayerScores(torch.tensor([1.0, 2.0]).double(), torch.tensor([4.0]).double())]
    s2 = [LayerScores(torch.tensor([3.0, 0.0]).double(), torch.tensor([0.0]).double())]
    first = MovingAverage(0.5, "first")
    first.update(s1)
    first.update(s2)
    assert first.value[0].heads.tolist() == [2.0, 1.0] and first.value[0].channels.tolist() == [2.0]
    zero = MovingAverage(0.5, "zero")
    zero.update(s1)
    assert zero.value[0].heads.tolist() == [0.5, 1.0]
    zero.update(s2)
    assert zero.value[0].heads.tolist() == [1.75, 0.5]
    bad = [LayerScores(torch.tensor([float("nan"), 0.0]).double(), torch.tensor([0.0]).double())]
    assert not zero.update(bad) and zero.skipped == 1
    sd = zero.state_dict()
    again = MovingAverage()
    again.load_state_dict(sd)
    assert again.start == "zero" and torch.equal(again.value[0].heads, zero.value[0].heads)


def _proj_sum(layer, lg, crit, name, power):
    imp = crit(projection_tensors(projection(layer, name), crit, None))
    imp = imp.sqrt() if power == "abs" else imp
    return imp.sum(1) if name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") else imp.sum(0)


@pytest.mark.parametrize("case", ["llama-gqa", "llama-mha"])
def test_layer_scores_sum_sq_and_official_equal_hand_computation(case):
    from tests.tiny import peft_random_lora

    m = tiny_model(case)
    groups = discover_groups(m)
    pm = peft_random_lora(m)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    pm(input_ids=ids, labels=ids).loss.backward()
    crit = get_criterion("lora")
    layer, lg = decoder_layers(pm)[0], groups.layers[0]
    d = lg.head_dim
    attn = ["q_proj", "o_proj"] + ([] if lg.gqa else ["k_proj", "v_proj"])
    # Eq. 4: sum of element importances per group
    heads = sum(_proj_sum(layer, lg, crit, n, "sq").view(lg.num_heads, d).sum(1) for n in attn)
    chans = sum(_proj_sum(layer, lg, crit, n, "sq") for n in ("gate_proj", "up_proj", "down_proj"))
    got = layer_scores(layer, lg, crit)
    assert torch.allclose(got.heads, heads.double(), rtol=1e-6) and torch.allclose(got.channels, chans.double(), rtol=1e-6)
    # official: |.| per element, per-projection group vector scaled to unit L2 norm, then summed
    hv = [_proj_sum(layer, lg, crit, n, "abs").view(lg.num_heads, d).sum(1).double() for n in attn]
    cv = [_proj_sum(layer, lg, crit, n, "abs").double() for n in ("gate_proj", "up_proj", "down_proj")]
    off = layer_scores(layer, lg, crit, aggregate="official")
    assert torch.allclose(off.heads, sum(v / v.norm() for v in hv), rtol=1e-6)
    assert torch.allclose(off.channels, sum(v / v.norm() for v in cv), rtol=1e-6)
    assert off.channels.sum() <= 3 * math.sqrt(lg.intermediate_size) + 1e-6


def test_official_aggregation_in_the_loop_is_scale_free():
    tp = ProjectionTensors(weight=torch.randn(4, 3), lora_A=torch.randn(2, 3), lora_B=torch.randn(4, 2),
                           grad_A=torch.randn(2, 3), grad_B=torch.randn(4, 2))
    crit = get_criterion("lora")
    assert torch.allclose(crit(tp).sqrt(), ((torch.cat([tp.grad_B, tp.lora_B, -tp.grad_B], 1)
                                            @ torch.cat([tp.lora_A, tp.grad_A, tp.grad_A], 0))
                                           * (tp.weight + tp.lora_B @ tp.lora_A)).abs(), rtol=1e-5)
    loop = tiny_loop(aggregate="official", steps=4)
    loop.step()
    for s in loop.ema.value:
        assert torch.isfinite(s.channels).all() and s.channels.max() <= 3.0 + 1e-6
