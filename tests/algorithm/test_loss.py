"""compressor.algorithm.loss: the chunked LM loss equals the stock loss, in value and in gradients."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.loss import decoder_hidden, distill_loss, lm_loss, supports_chunked_loss
from tests.tiny import CASES, masked_lora, tiny_model


def _grads(pm):
    return {n: p.grad.clone() for n, p in pm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_chunked_loss_equals_stock_loss_and_grads(case, chunk):
    pm, _ = masked_lora(case)
    assert supports_chunked_loss(pm)
    ids = torch.randint(0, 96, (3, 21), generator=torch.Generator().manual_seed(0))
    ref = pm(input_ids=ids, labels=ids).loss
    ref.backward()
    g_ref = _grads(pm)
    pm.zero_grad(set_to_none=True)
    loss, ce = lm_loss(pm, ids, chunk_tokens=chunk)
    loss.backward()
    g = _grads(pm)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert ce == pytest.approx(ref.item(), rel=1e-5)
    assert g.keys() == g_ref.keys() and len(g) > 0
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_chunked_distillation_equals_full_distillation():
    pm, masks = masked_lora("llama-gqa")
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), pm.disable_adapter(), masks.bypassed():
        t_logits = pm(input_ids=ids).logits
    out = pm(input_ids=ids, labels=ids)
    ref = 0.7 * out.loss + 0.3 * distill_loss(out.logits, t_logits)
    ref.backward()
    g_ref = _grads(pm)
    pm.zero_grad(set_to_none=True)
    with pm.disable_adapter(), masks.bypassed():
        th = decoder_hidden(pm, ids)
    loss, ce = lm_loss(pm, ids, chunk_tokens=5, teacher_hidden=th, distill=0.3)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert ce == pytest.approx(out.loss.item(), rel=1e-5)
    for n, g in _grads(pm).items():
        torch.testing.assert_close(g, g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_prune_stock_and_chunked_loss_agree():
    from compressor.algorithm.api import prune
    from tests.tiny import tiny_text, tiny_tokenizer

    text = tiny_text(2000)
    base = dict(ratio=0.5, steps=6, prune_every=2, seq_len=32, batch_size=2, eval_windows=0, lr=1e-3)
    a = prune(tiny_model("llama-gqa"), PruneConfig(**base, loss_chunk_tokens=0), [text], tokenizer=tiny_tokenizer())
    b = prune(tiny_model("llama-gqa"), PruneConfig(**base, loss_chunk_tokens=16), [text], tokenizer=tiny_tokenizer())
    assert a.report["kept"] == b.report["kept"]
    assert [h["loss"] for h in a.report["history"]] == pytest.approx([h["loss"] for h in b.report["history"]], rel=1e-4)


def test_hidden_distillation_chunked_equals_stock_and_a_hand_computation():
    from compressor.algorithm.loss import hidden_match, training_loss

    pm, masks = masked_lora("llama-gqa")
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))

    def teacher():
        import contextlib

        st = contextlib.ExitStack()
        st.enter_context(pm.disable_adapter())
        st.enter_context(masks.bypassed())
        return st

    # hand computation of the hidden term from the per-layer outputs
    with torch.no_grad(), teacher():
        t = pm(input_ids=ids, output_hidden_states=True).hidden_states[1:]
    s = pm(input_ids=ids, output_hidden_states=True).hidden_states[1:]
    hand = torch.stack([((a - b) ** 2).sum(-1).div((b ** 2).sum(-1)).mean() for a, b in zip(s, t)]).mean()
    torch.testing.assert_close(hidden_match(tuple(s), tuple(t)), hand)
    assert hand.item() > 0, "the masked student differs from the dense teacher"

    stock, ce0 = training_loss(pm, ids, distill=0.3, distill_hidden=2.0, teacher=teacher)
    stock.backward()
    g_ref = _grads(pm)
    pm.zero_grad(set_to_none=True)
    chunked, ce1 = training_loss(pm, ids, distill=0.3, distill_hidden=2.0, teacher=teacher, chunk_tokens=5)
    chunked.backward()
    plain, _ = training_loss(pm, ids, distill=0.3, teacher=teacher)
    torch.testing.assert_close(chunked, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stock - plain, 2.0 * hand.detach(), rtol=1e-4, atol=1e-6)
    assert ce0 == pytest.approx(ce1, rel=1e-5)
    for n, g in _grads(pm).items():
        torch.testing.assert_close(g, g_ref[n], rtol=1e-4, atol=1e-6, msg=n)

    # hidden distillation alone (distill=0) still runs the teacher; a bad weight is refused with its name
    alone, _ = training_loss(pm, ids, distill_hidden=1.0, teacher=teacher, chunk_tokens=5)
    assert torch.isfinite(alone)
    from compressor.core.errors import ConfigError

    with pytest.raises(ConfigError, match="distill_hidden"):
        PruneConfig(ratio=0.5, distill_hidden=-1.0)


def test_distill_teacher_is_the_dense_model():
    from tests.tiny import masked_lora

    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        dense = tiny_model("llama-gqa")(input_ids=ids).logits
    pm, masks = masked_lora("llama-gqa")
    with torch.no_grad():
        student = pm(input_ids=ids).logits
        with pm.disable_adapter(), masks.bypassed():
            teacher = pm(input_ids=ids).logits
        again = pm(input_ids=ids).logits
    torch.testing.assert_close(teacher, dense)  # LoRA off, masks off: the original model
    torch.testing.assert_close(again, student)  # both come back on after the block
    assert (student - dense).abs().max() > 1e-3
    assert distill_loss(dense, dense).abs() < 1e-6 and distill_loss(student, dense) > 0
