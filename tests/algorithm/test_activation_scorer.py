"""compressor.algorithm.activation_scorer: the ``activation`` criterion equals the first-order effect of removing
a group, and with compensation's transforms (criterion ``residual``) that of a compensated removal."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.api import prune
from compressor.algorithm.groups import decoder_layers, projection
from compressor.core.errors import ConfigError
from tests.tiny import tiny_config, tiny_loop, tiny_model, tiny_text, tiny_tokenizer


def test_activation_scores_equal_first_order_effect_of_removing_a_group():
    loop = tiny_loop("llama-gqa", criterion="activation", distill=0.0)  # the plain LM loss, as the reference below
    batch = loop.next_batch()
    # reference: d loss / d (group gate) at gate = 1, per sequence, squared, summed over the batch
    from compressor.modeling.adapters import unwrap

    lm = unwrap(loop.pm)
    layer = decoder_layers(loop.pm)[1]
    lg = loop.groups.layers[1]
    ref_c = torch.zeros(lg.intermediate_size, dtype=torch.double)
    ref_h = torch.zeros(lg.num_heads, dtype=torch.double)
    for b in range(batch.shape[0]):
        gate_c = torch.ones(lg.intermediate_size, requires_grad=True)
        gate_h = torch.ones(lg.num_heads, requires_grad=True)
        h1 = projection(layer, "down_proj").register_forward_pre_hook(lambda mod, a, g=gate_c: (a[0] * g,))
        h2 = projection(layer, "o_proj").register_forward_pre_hook(
            lambda mod, a, g=gate_h: (a[0] * g.repeat_interleave(lg.head_dim),))
        ids = batch[b:b + 1]
        out = lm(input_ids=ids, labels=ids)
        # the loop's loss is the mean over the batch's tokens; per sequence that is 1/batch of its own mean
        (out.loss / batch.shape[0]).backward()
        h1.remove()
        h2.remove()
        ref_c += gate_c.grad.double() ** 2
        ref_h += gate_h.grad.double() ** 2
        loop.pm.zero_grad(set_to_none=True)
    loop.scorer.reset()
    loop.step(batch)
    got = loop.ema.value[1]
    assert torch.allclose(got.channels, ref_c, rtol=1e-3, atol=1e-12)
    assert torch.allclose(got.heads, ref_h, rtol=1e-3, atol=1e-12)


def test_activation_needs_no_weight_gradient_and_checkpointing_gives_the_same_scores():
    a = tiny_loop(criterion="activation", steps=4)
    a.step()
    assert all(p.grad is None and not p.requires_grad for n, p in a.pm.named_parameters() if "lora_" not in n)
    b = tiny_loop(criterion="activation", steps=4, gradient_checkpointing=True)
    b.step()
    for x, y in zip(a.ema.value, b.ema.value):
        assert torch.allclose(x.channels, y.channels, rtol=1e-5) and torch.allclose(x.heads, y.heads, rtol=1e-5)


def test_activation_prune_merges_and_reaches_ratio():
    tok = tiny_tokenizer()
    res = prune(tiny_model("qwen2-gqa"), tiny_config(criterion="activation"), [tiny_text(3000)], tokenizer=tok)
    assert res.report["history"][-1]["sparsity"] == pytest.approx(res.report["ratio_achieved"], abs=1e-6)
    assert res.report["criterion"] == "activation"
    assert res.report["peak_lr"] == 1e-3 and res.report["history"][0]["lr"] <= 1e-3


def test_residual_scores_equal_first_order_effect_of_a_compensated_removal():
    loop = tiny_loop("llama-gqa", criterion="residual", compensate=True, distill=0.0)
    batch = loop.next_batch()
    loop._prepare_residual()
    assert loop.comp is not None and not loop.comp.collecting, "statistics complete before the first score"
    assert loop.comp.tokens >= loop.compensation_target()
    from compressor.modeling.adapters import unwrap

    lm = unwrap(loop.pm)
    i = 1
    layer, lg = decoder_layers(loop.pm)[i], loop.groups.layers[i]
    mc, mh = loop.scorer.transforms[i]["channels"], loop.scorer.transforms[i]["heads"]
    ref_c = torch.zeros(lg.intermediate_size, dtype=torch.double)
    ref_h = torch.zeros(lg.num_heads, dtype=torch.double)
    for b in range(batch.shape[0]):
        # x -> x - eps * r: d loss / d eps at 0 is minus the first-order effect of replacing the group by its
        # least-squares stand-in (what compensation leaves of it)
        ec = torch.zeros(lg.intermediate_size, requires_grad=True)
        eh = torch.zeros(lg.num_heads, requires_grad=True)
        h1 = projection(layer, "down_proj").register_forward_pre_hook(lambda mod, a, e=ec: (a[0] - (a[0] @ mc) * e,))
        h2 = projection(layer, "o_proj").register_forward_pre_hook(
            lambda mod, a, e=eh: (a[0] - (a[0] @ mh) * e.repeat_interleave(lg.head_dim),))
        ids = batch[b:b + 1]
        (lm(input_ids=ids, labels=ids).loss / batch.shape[0]).backward()
        h1.remove()
        h2.remove()
        ref_c += ec.grad.double() ** 2
        ref_h += eh.grad.double() ** 2
        loop.pm.zero_grad(set_to_none=True)
    loop.scorer.reset()
    loop.step(batch)
    got = loop.ema.value[i]
    assert torch.allclose(got.channels, ref_c, rtol=1e-3, atol=1e-12)
    assert torch.allclose(got.heads, ref_h, rtol=1e-3, atol=1e-12)
    act = tiny_loop("llama-gqa", criterion="activation", compensate=True, distill=0.0)
    act.step(batch)
    assert not torch.allclose(act.ema.value[i].channels, got.channels, rtol=1e-2), "differs from plain activation"


def test_residual_needs_compensation_prunes_merges_and_resumes():
    with pytest.raises(ConfigError, match="criterion='residual'.*compensate"):
        tiny_config(criterion="residual", compensate=False)
    a = tiny_loop("llama-mha", criterion="residual", compensate=True, steps=10, prune_every=2, head_policy="balanced")
    for _ in range(3):
        a.step()
    import copy

    st = copy.deepcopy(a.state_dict())
    b = tiny_loop("llama-mha", criterion="residual", compensate=True, steps=10, prune_every=2, head_policy="balanced")
    b.load_state_dict(st)
    while not a.done:
        ra, rb = a.step(), b.step()
        assert ra.loss == rb.loss and ra.sparsity == rb.sparsity
    assert a.history[-1]["sparsity"] == pytest.approx(0.5, abs=0.05)
    ids = a.next_batch()
    with torch.no_grad():
        masked = a.pm(input_ids=ids).logits
    wa, wb = a.finish(), b.finish()
    with torch.no_grad():
        merged = wa(input_ids=ids).logits
    assert torch.allclose(masked, merged, atol=1e-4), "masked == merged"
    sa, sb = wa.state_dict(), wb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "resumed run == uninterrupted run"
