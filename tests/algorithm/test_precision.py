"""Mixed precision: amp='bf16' autocasts the forward passes and keeps the state in float32 (resumed runs
bit-exact), 'auto' follows the hardware probe, and a base held in bfloat16 merges to the checkpoint's dtype."""
from __future__ import annotations

import math

import pytest
import torch

from compressor import PruneConfig
from compressor.core.errors import ConfigError
from tests.tiny import tiny_config, tiny_loop, tiny_model, tiny_tokenizer


def test_amp_bf16_autocasts_the_forward_passes_and_keeps_float32_state(monkeypatch):
    """amp='bf16': the training, teacher and compensation forward passes run under bfloat16 autocast; the frozen
    decoder projections are held once in bfloat16, the embeddings, norms, LoRA factors, gradients, compensation
    statistics and the merged output stay float32, masked == merged holds and a resumed run is bit-exact. 'auto' follows the hardware probe; bad combinations are refused
    with the value named."""
    from compressor.algorithm import precision as precision_mod

    kw = dict(compensate=True, steps=8, prune_every=2, prune_until=0.5, criterion="activation", distill=0.5)
    a = tiny_loop("llama-mha", amp="bf16", **kw)
    assert a.amp
    seen: list[torch.dtype] = []
    mods = [m for n, m in a.pm.named_modules() if n.endswith("mlp.down_proj.base_layer")]
    h = mods[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    a.step()
    h.remove()
    assert seen and all(d == torch.bfloat16 for d in seen), seen  # teacher and student passes
    held = {n: p.dtype for n, p in a.pm.named_parameters() if ".base_layer." in n}
    assert held and set(held.values()) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for n, p in a.pm.named_parameters() if ".base_layer." not in n)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in a.trainable)
    grams = [g for layer in a.comp.gram for g in layer.values() if g is not None]
    assert grams and all(g.dtype == torch.float32 for g in grams)  # statistics of the first step's passes
    import copy

    st = copy.deepcopy(a.state_dict())
    b = tiny_loop("llama-mha", amp="bf16", **kw)
    b.load_state_dict(st)
    while not a.done:
        ra, rb = a.step(), b.step()
        assert ra.loss == rb.loss and math.isfinite(ra.loss)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    a.pm.eval()
    from compressor.modeling.held import hold_projections

    hold_projections(a.pm, torch.float32)  # the same held weights in float32: the masked model computed exactly
    with torch.no_grad():
        masked = a.pm(input_ids=ids).logits
    wa, wb = a.finish(), b.finish()
    assert all(p.dtype == torch.float32 for p in wa.parameters())
    with torch.no_grad():
        assert torch.allclose(masked, wa(input_ids=ids).logits, atol=1e-4)
    sa, sb = wa.state_dict(), wb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # off: no autocast; auto: the hardware probe decides, and never for bfloat16 weights or an 8-bit base
    assert not tiny_loop(amp="off", steps=2).amp
    from compressor.algorithm import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision_mod.resolve_amp(tiny_config(amp="auto"), torch.device("cpu"))
    assert precision_mod.resolve_amp(tiny_config(amp="auto"), torch.device("cpu"), hidden_size=576)
    assert not precision_mod.resolve_amp(tiny_config(amp="auto"), torch.device("cpu"), hidden_size=64)  # too narrow to pay
    assert not tiny_loop(amp="auto", steps=2).amp  # the tiny test model
    assert not precision_mod.resolve_amp(tiny_config(amp="auto", dtype="bfloat16"), torch.device("cpu"))
    assert not precision_mod.resolve_amp(tiny_config(amp="auto", base_bits=8, compensate=False), torch.device("cpu"))
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert not precision_mod.resolve_amp(tiny_config(amp="auto"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="amp='fp8'.*off, bf16, auto"):
        tiny_config(amp="fp8")
    with pytest.raises(ConfigError, match="amp='bf16'.*dtype='bfloat16'"):
        tiny_config(amp="bf16", dtype="bfloat16")
    with pytest.raises(ConfigError, match="amp='bf16'.*base_bits=8"):
        tiny_config(amp="bf16", base_bits=8, compensate=False)


def test_prune_with_a_held_base_writes_the_checkpoint_dtype(tmp_path):
    """amp='bf16' end to end from a folder: the base is held in bfloat16 during the run, the merged model is
    float32 for a float32 checkpoint and bfloat16 for a bfloat16 one; the job's report has the memory plan."""
    from compressor.job import prune_job
    from tests.tiny import tiny_text

    data = tmp_path / "cal.txt"
    data.write_text(tiny_text(2000))
    for src_dtype in (torch.float32, torch.bfloat16):
        m = tiny_model("llama-mha").to(src_dtype)
        d = tmp_path / str(src_dtype)
        m.save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, amp="bf16", seq_len=32, batch_size=2,
                          eval_windows=0, device="cpu")
        res = prune_job(str(d), tmp_path / f"out-{src_dtype}", cfg, data=str(data), eval_data="none")
        assert {p.dtype for p in res.model.parameters()} == {src_dtype}
        plan = res.report["memory_plan"]
        assert plan["held"] == "bfloat16 projections" and plan["peak_gib"] > 0 and plan["fits"] in (True, None)
