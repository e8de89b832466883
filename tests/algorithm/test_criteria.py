"""compressor.algorithm.criteria: the LoRA-gradient criterion (Eq. 10) against an element-wise reference and the
gradients it needs, the registry, and the least-squares residual transform of the ``residual`` criterion."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.criteria import ProjectionTensors, available_criteria, get_criterion
from compressor.core.errors import ConfigError
from tests.tiny import tiny_eval_config, tiny_model


def test_lora_criterion_matches_reference():
    g = torch.Generator().manual_seed(0)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    gA, gB = torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    s = 2.0
    got = get_criterion("lora")(ProjectionTensors(W, lora_A=A, lora_B=B, grad_A=gA, grad_B=gB, scaling=s))
    # independent element-wise reference of Eq. 10
    ref = torch.zeros(6, 5)
    for i in range(6):
        for j in range(5):
            gest = sum(gB[i, k] * A[k, j] + B[i, k] * gA[k, j] - gB[i, k] * gA[k, j] for k in range(2))
            ref[i, j] = (gest * (W[i, j] + s * sum(B[i, k] * A[k, j] for k in range(2)))) ** 2
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_lora_criterion_never_needs_weight_grad():
    crit = get_criterion("lora")
    assert crit.needs_lora_grads and not crit.needs_weight_grad
    assert get_criterion("taylor").needs_weight_grad


def test_unknown_criterion_lists_valid():
    with pytest.raises(ConfigError, match="activation, lora, magnitude, random, residual, taylor"):
        get_criterion("nope")
    assert available_criteria() == ["activation", "lora", "magnitude", "random", "residual", "taylor"]


def test_lora_criterion_leaves_base_without_grad():
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.finetune import wrap_lora
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.scoring import model_scores

    m = tiny_model("llama-gqa")
    groups = discover_groups(m)
    pm = wrap_lora(m, tiny_eval_config())
    ids = torch.randint(0, 96, (2, 16))
    pm(input_ids=ids, labels=ids).loss.backward()
    base = [p for n, p in pm.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in base), "W0 must never get a gradient"
    scores = model_scores(pm, groups, get_criterion("lora"))
    assert all(torch.isfinite(s.heads).all() and s.channels.abs().sum() > 0 for s in scores)
    pm_t = wrap_lora(tiny_model("llama-gqa"), tiny_eval_config(criterion="taylor"))
    assert any(p.requires_grad for n, p in pm_t.named_parameters() if "base_layer.weight" in n)


def test_residual_transform_is_the_least_squares_residual_of_each_group():
    from compressor.algorithm.criteria.residual import residual_transform

    torch.manual_seed(0)
    x = torch.randn(4000, 12, dtype=torch.double) @ torch.randn(12, 12, dtype=torch.double)
    g = x.t() @ x
    for width, kept_idx in ((1, [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]), (3, [0, 1, 2, 6, 7, 8, 9, 10, 11])):
        kept = torch.zeros(12, dtype=torch.bool)
        kept[kept_idx] = True
        r = x.float() @ residual_transform(g, kept, width, damp=1e-12)
        assert torch.equal(r[:, ~kept], torch.zeros_like(r[:, ~kept])), "inputs not kept score nothing"
        for start in range(0, 12, width):
            grp = list(range(start, start + width))
            if not kept[grp].all():
                continue
            others = [i for i in kept_idx if i not in grp]
            beta = torch.linalg.lstsq(x[:, others], x[:, grp]).solution
            ref = x[:, grp] - x[:, others] @ beta
            assert torch.allclose(r[:, grp].double(), ref, atol=1e-3 * float(ref.abs().max()))
