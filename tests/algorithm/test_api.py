"""compressor.algorithm.api: prune() on tiny random models reaches the ratio with every criterion, is
deterministic, checks what it is given (8-bit base, a plan, a writable architecture) and runs on a GPU."""
from __future__ import annotations

import pytest
import torch

from compressor import PruneConfig
from compressor.algorithm.api import prune
from compressor.core.errors import ConfigError
from compressor.modeling.loading import load_model
from tests.tiny import tiny_eval_config, tiny_folder, tiny_model, tiny_text, tiny_tokenizer


@pytest.mark.parametrize("case", ["llama-mha", "llama-gqa", "qwen2-gqa", "mistral-mqa"])
@pytest.mark.parametrize("criterion", ["lora", "taylor", "magnitude", "random"])
def test_prune_runs_and_reaches_ratio(case, criterion):
    m = tiny_model(case)
    tok = tiny_tokenizer()
    text = tiny_text(3000)
    res = prune(m, tiny_eval_config(criterion=criterion), [text], tokenizer=tok, eval_text=text)
    r = res.report
    assert r["ratio_asked"] == 0.5 and abs(r["ratio_achieved"] - 0.5) < 0.2
    assert r["params_total_after"] < r["params_total_before"]
    assert r["history"][-1]["sparsity"] == pytest.approx(r["ratio_achieved"], abs=1e-6)
    sp = [h["sparsity"] for h in r["history"]]
    assert sp == sorted(sp) and sp[0] < sp[-1], "progressive schedule: sparsity rises monotonically"
    assert r["perplexity_before"]["ppl"] > 0 and r["perplexity_after"]["ppl"] > 0
    assert not any("lora" in n for n, _ in res.model.named_parameters())
    assert res.model.config.num_attention_heads == r["widths_after"]["num_attention_heads"]


def test_prune_is_deterministic():
    text = tiny_text(2000)
    a = prune(tiny_model("llama-gqa"), tiny_eval_config(steps=6), [text], tokenizer=tiny_tokenizer())
    b = prune(tiny_model("llama-gqa"), tiny_eval_config(steps=6), [text], tokenizer=tiny_tokenizer())
    assert a.report["kept"] == b.report["kept"]
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("criterion", ["lora", "taylor"])
def test_gradient_checkpointing_gives_the_same_result(criterion):
    text = tiny_text(2000)
    a = prune(tiny_model("llama-gqa"), tiny_eval_config(steps=6, criterion=criterion), [text], tokenizer=tiny_tokenizer())
    m = tiny_model("llama-gqa")
    b = prune(m, tiny_eval_config(steps=6, criterion=criterion, gradient_checkpointing=True), [text], tokenizer=tiny_tokenizer())
    assert a.report["kept"] == b.report["kept"]
    assert [h["loss"] for h in a.report["history"]] == pytest.approx([h["loss"] for h in b.report["history"]], rel=1e-5)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    on = getattr(b.model, "is_activation_checkpointing", None)  # transformers 5's name; 4.x: is_gradient_checkpointing
    assert not (b.model.is_gradient_checkpointing if on is None else on), "the returned model is an ordinary one"


def test_prune_with_distillation_logs_both_losses():
    text = tiny_text(2000)
    res = prune(tiny_model("llama-gqa"), tiny_eval_config(steps=4, distill=0.5), [text], tokenizer=tiny_tokenizer())
    h = res.report["history"]
    assert all("lm_loss" in r and r["loss"] != r["lm_loss"] for r in h)
    assert res.report["config"]["distill"] == 0.5


def test_separate_mode_prunes_once():
    res = prune(tiny_model("llama-mha"), tiny_eval_config(joint=False), [tiny_text(2000)], tokenizer=tiny_tokenizer())
    ev = res.report["schedule"]["events"]
    assert len(ev) == 1 and ev[0]["step"] == 2 and res.report["mode"] == "separate"


def test_prune_with_8bit_base_merges_to_plain_float(tmp_path):
    """LoRAPrune-8bit: W0 in bitsandbytes int8 (CPU), scores from LoRA only, merge dequantizes."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from compressor.modeling.loading import load_model

    src = tmp_path / "src"
    tiny_model("llama-gqa").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    m8, tok, _ = load_model(str(src), base_bits=8)
    assert type(m8.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    text = tiny_text(2000)
    res = prune(m8, tiny_eval_config(steps=6, base_bits=8, criterion="lora", compensate=False), [text], tokenizer=tok, eval_text=text)
    assert type(res.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert res.model.dtype == torch.float32 and not hasattr(res.model.config, "quantization_config")
    assert res.report["perplexity_after"]["ppl"] > 0
    res.model.save_pretrained(tmp_path / "out")
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=ids).logits, res.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_taylor_refuses_8bit_base():
    from compressor.core.errors import ConfigError

    with pytest.raises(ConfigError, match="taylor"):
        prune(tiny_model("llama-mha"), tiny_eval_config(criterion="taylor", base_bits=8, compensate=False), torch.randint(0, 96, (4, 32)))


def test_plan_check_in_the_api():
    from compressor import PruneConfig
    from compressor.algorithm.api import prune
    from compressor.core.errors import ConfigError

    plan = {"heads": [torch.rand(4)] * 2, "channels": [torch.rand(48)] * 2}
    with pytest.raises(ConfigError, match="4 heads x 48 MLP channels"):
        prune(tiny_model("llama-gqa"), PruneConfig(ratio=0.5, steps=4, prune_every=2), torch.randint(0, 96, (4, 32)),
              plan=plan)


def test_check_writable_refuses_only_architectures_without_a_per_layer_class():
    from compressor.algorithm.api import check_writable
    from compressor.algorithm.config import PruneConfig

    check_writable(PruneConfig(ratio=0.5, widths="adaptive"), "qwen2")
    check_writable(PruneConfig(ratio=0.5), "gemma3")  # uniform: any architecture
    with pytest.raises(ConfigError, match="llama, mistral, qwen2 only, not 'gemma3'"):
        check_writable(PruneConfig(ratio=0.5, skip_layers="0"), "gemma3")
    with pytest.raises(ConfigError, match="model_type 'lorapress_llama'.*pruning it again is not supported"):
        check_writable(PruneConfig(ratio=0.5), "lorapress_llama")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_cuda_load_prune_and_merge_stay_on_the_device(tmp_path):
    """Loaded straight onto the GPU in the held dtypes, pruned with statistics in host memory, merged there."""
    from compressor import prune
    from compressor.algorithm.api import as_blocks
    from tests.tiny import tiny_text

    _, d = tiny_folder(tmp_path)
    held, _, _ = load_model(str(d), linear_dtype="bfloat16", device="cuda")
    assert {p.device.type for p in held.parameters()} == {"cuda"}
    cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, amp="bf16", seq_len=32, batch_size=2, eval_windows=0,
                      device="cuda", compensate_store="host", compensate_tokens=128)
    res = prune(str(d), cfg, as_blocks([tiny_text(2000)], tiny_tokenizer(), cfg))
    assert {p.device.type for p in res.model.parameters()} == {"cuda"}
    assert res.report["memory_plan"]["device"].startswith("cuda")


def test_prune_with_4bit_nf4_base_merges_to_plain_float(tmp_path):
    """QLoRA-style: W0 in bitsandbytes NF4 (CPU), the default activation criterion without compensation; the merge
    dequantizes and the result reloads with stock transformers."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from compressor.modeling.loading import load_model

    src = tmp_path / "src"
    tiny_model("llama-gqa").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    m4, tok, _ = load_model(str(src), base_bits=4)
    proj = m4.model.layers[0].self_attn.q_proj
    assert type(proj).__name__ == "Linear4bit" and proj.weight.quant_state.quant_type == "nf4"
    res = prune(m4, tiny_eval_config(steps=6, base_bits=4, compensate=False), [tiny_text(2000)], tokenizer=tok)
    assert type(res.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert res.model.dtype == torch.float32 and not hasattr(res.model.config, "quantization_config")
    res.model.save_pretrained(tmp_path / "out")
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=ids).logits, res.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
