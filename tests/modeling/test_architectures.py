"""Architecture support (issue #13): every entry of compressor.modeling.architectures on a tiny random model.

Per case: groups verified against torch-pruning's graph; masked == sliced (no LoRA) and masked == merged (LoRA
folded) logits; save -> stock ``from_pretrained`` -> identical logits; a short end-to-end ``prune()``; ONNX
export parity of the pruned model (three cases by default, the others ``slow``: ~10 s each on a free core).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from compressor.algorithm.groups import decoder_layers, discover_groups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import merge_and_slice
from compressor.core.errors import UnsupportedArchitectureError
from compressor.modeling.architectures import (
    Architecture,
    check_onnx,
    get_architecture,
    onnx_architectures,
    register_architecture,
)

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, attn_implementation="eager", initializer_range=0.1)
_GEMMA = dict(head_dim=8, query_pre_attn_scalar=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"])

#: name -> (config class, model class, extra config); sequences are longer than every sliding window
CASES = {
    "llama3-rope-tied-gqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})),
    # hidden 48: transformers >= 5.16's LlamaConfig / Gemma2Config refuse the 3 heads the MHA cases are pruned to
    # when they do not divide hidden_size (tests/modeling/test_perlayer.py covers a llama whose head count does not)
    "llama3-rope-untied-mha": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=48, num_key_value_heads=4, head_dim=8, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})),
    # head_dim 16 != hidden // heads = 8, as Qwen3 ships it
    "qwen3-gqa": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)),
    "qwen3-mha": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=4, head_dim=8, tie_word_embeddings=False)),
    "gemma3-gqa": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(num_key_value_heads=2, **_GEMMA)),
    "gemma2-mha": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        hidden_size=48, num_key_value_heads=4, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **_GEMMA)),
    "gemma-gqa": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=2, head_dim=8)),
    "phi3-mha": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=4, pad_token_id=0, partial_rotary_factor=0.5)),
    "phi3-gqa": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False)),
}


def arch_model(case: str, seed: int = 0):
    import transformers

    cfg_name, model_name, extra = CASES[case]
    cfg = getattr(transformers, cfg_name)(**{**_COMMON, **extra})
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(cfg).eval()


def _ids(n=2, t=12, seed=1):
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _lora(model):
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.finetune import wrap_lora

    pm = wrap_lora(model, PruneConfig(ratio=0.5, lora_r=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B non-zero so merge parity means something
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


def _mask(pm, groups):
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.scoring import model_scores

    lg = groups.layers[0]
    masks = MaskState.full(groups).install(pm, groups)
    scores = model_scores(pm, groups, get_criterion("magnitude"))
    per = lg.heads_per_kv if lg.gqa else lg.num_heads
    mask_lowest(masks, scores, groups, per - 1, lg.intermediate_size // 2)
    assert all(int(m.heads.sum()) == lg.num_kv_heads * (per - 1) if lg.gqa else per - 1 for m in masks.layers)
    return masks


def _head_norms(model) -> dict[str, torch.Tensor]:
    arch = get_architecture(model.config)
    return {f"{i}.{n}": getattr(layer.self_attn, n).weight.detach().clone()
            for i, layer in enumerate(decoder_layers(model)) for n in arch.head_norms}


@pytest.mark.parametrize("case", list(CASES))
def test_groups_verified_with_torch_pruning(case):
    m = arch_model(case)
    g = discover_groups(m)
    cfg = m.config
    assert g.verified_with == "torch-pruning DependencyGraph" and g.num_layers == 2
    for lg in g.layers:
        assert (lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) == (
            cfg.num_attention_heads, cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or 8, 48)


@pytest.mark.parametrize("case", list(CASES))
def test_masked_equals_sliced_equals_merged(case):
    model = arch_model(case)
    groups = discover_groups(model)
    plain = copy.deepcopy(model)
    norms = _head_norms(model)
    pm = _lora(model)
    masks = _mask(pm, groups)
    ids = _ids()
    with torch.no_grad():
        masked = pm(input_ids=ids).logits
        with pm.disable_adapter():
            masked_base = pm(input_ids=ids).logits
    assert not torch.allclose(masked, masked_base, atol=1e-4), "LoRA must matter for the parity check"
    sliced = merge_and_slice(plain, groups, copy.deepcopy(masks))  # no LoRA: the physically sliced base
    merged = merge_and_slice(pm, groups, masks)
    assert type(merged).__name__ == get_architecture(merged.config).model_class
    assert not any("lora" in n for n, _ in merged.named_parameters())
    lg, kept = groups.layers[0], masks.layers[0]
    n_heads = int(kept.heads.sum())
    cfg = merged.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (
        n_heads, lg.num_kv_heads if lg.gqa else n_heads, lg.head_dim, int(kept.channels.sum()))
    for k, w in _head_norms(merged).items():  # per-head norms shared by all heads stay whole
        torch.testing.assert_close(w, norms[k], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(sliced(input_ids=ids).logits, masked_base, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(merged(input_ids=ids).logits, masked, rtol=1e-4, atol=1e-5)
    if model.config.tie_word_embeddings:
        assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight


@pytest.mark.parametrize("case", list(CASES))
def test_merged_folder_reloads_with_stock_transformers(case, tmp_path):
    from transformers import AutoModelForCausalLM

    model = arch_model(case)
    groups = discover_groups(model)
    pm = _lora(model)
    merged = merge_and_slice(pm, groups, _mask(pm, groups)).eval()
    merged.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == model.config.model_type and saved["head_dim"] == groups.layers[0].head_dim
    re = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    stock = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # the default attention kernel
    assert type(re) is type(merged)
    ids = _ids()
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        torch.testing.assert_close(re(input_ids=ids).logits, ref, rtol=0, atol=0)
        if not getattr(merged.config, "attn_logit_softcapping", None):  # SDPA ignores gemma2's attention soft-cap
            torch.testing.assert_close(stock(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
    assert discover_groups(re).layers[0].num_heads == merged.config.num_attention_heads


@pytest.mark.parametrize("case", ["qwen3-gqa", "gemma3-gqa", "gemma2-mha", "phi3-gqa"])
def test_prune_end_to_end(case):
    from compressor.algorithm.api import prune
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loss import supports_chunked_loss
    from tests.tiny import tiny_text, tiny_tokenizer

    m = arch_model(case)
    tok = tiny_tokenizer(VOCAB)
    text = tiny_text(1500, vocab=VOCAB)
    # gemma2 soft-caps its logits: the chunked loss refuses it and the loop falls back to the stock loss
    assert supports_chunked_loss(m) == (case != "gemma2-mha")
    cfg = PruneConfig(ratio=0.4, steps=4, prune_every=1, seq_len=24, batch_size=2, eval_windows=0, lr=1e-3)
    res = prune(m, cfg, [text], tokenizer=tok)
    r = res.report
    assert r["model_type"] == m.config.model_type and r["params_total_after"] < r["params_total_before"]
    assert abs(r["ratio_achieved"] - 0.4) < 0.2
    assert res.model.config.intermediate_size == r["widths_after"]["intermediate_size"] < 48
    with torch.no_grad():
        assert torch.isfinite(res.model(input_ids=_ids()).logits).all()


def test_unsupported_moe_is_refused_with_supported_list():
    from transformers import MixtralConfig, MixtralForCausalLM

    from compressor.algorithm.api import prune
    from compressor.algorithm.config import PruneConfig
    from compressor.modeling.loading import check_architecture

    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1)
    m = MixtralForCausalLM(cfg)
    for call in (lambda: check_architecture(m.config, "tiny-mixtral"), lambda: discover_groups(m),
                 lambda: prune(m, PruneConfig(ratio=0.5, steps=2, prune_every=1), torch.zeros(2, 8, dtype=torch.long))):
        with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts") as exc:
            call()
        for name in ("'mixtral'", "supported: llama", "qwen3", "gemma3_text", "phi3"):
            assert name in str(exc.value)


def test_registry_rejects_duplicates_and_onnx_less_architectures(monkeypatch):
    from compressor.modeling import architectures

    with pytest.raises(ValueError, match="already registered"):
        register_architecture(get_architecture("llama"))
    with pytest.raises(ValueError, match="exactly once"):
        Architecture("bad", "BadForCausalLM", architectures.LLAMA_PROJECTIONS[:-1])
    assert {"llama", "qwen3", "gemma3_text", "gemma2", "phi3"} <= set(onnx_architectures())
    fake = Architecture("noonnx", "NoOnnxForCausalLM", architectures.LLAMA_PROJECTIONS, onnx=False)
    monkeypatch.setitem(architectures._REGISTRY, "noonnx", fake)
    with pytest.raises(UnsupportedArchitectureError, match="cannot be exported to ONNX.*supports llama"):
        check_onnx({"model_type": "noonnx"}, "m")


def test_onnx_export_refuses_onnx_less_architecture(monkeypatch, tmp_path):
    from compressor.modeling import architectures
    from exporters import export_onnx

    model = arch_model("qwen3-mha")
    fake = Architecture("qwen3", "Qwen3ForCausalLM", architectures.LLAMA_PROJECTIONS, onnx=False)
    monkeypatch.setitem(architectures._REGISTRY, "qwen3", fake)
    with pytest.raises(UnsupportedArchitectureError, match="ONNX export supports llama"):
        export_onnx(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", [
    "qwen3-gqa", "gemma3-gqa", "phi3-gqa",  # explicit head_dim, a graph without position_ids, fused projections
    *(pytest.param(c, marks=pytest.mark.slow) for c in ("llama3-rope-tied-gqa", "gemma2-mha", "gemma-gqa", "phi3-mha")),
])
def test_onnx_export_parity_of_pruned_model(case, tmp_path):
    import numpy as np
    import onnxruntime

    from exporters import export_onnx
    from tests.tiny import tiny_tokenizer

    model = arch_model(case)
    groups = discover_groups(model)
    pm = _lora(model)
    merged = merge_and_slice(pm, groups, _mask(pm, groups)).eval()
    src = tmp_path / "hf"
    merged.save_pretrained(src)
    tiny_tokenizer(VOCAB).save_pretrained(src)
    out = tmp_path / "onnx"
    res = export_onnx(src, out, threads=1, prompts=("w1 w2 w3 w4", "w10 w20"), max_new_tokens=6)
    par = res.report["validation"]["parity"]
    assert par["passed"] and res.report["validation"]["generate"]["all_equal"]
    # the graph's inputs are optimum's: the gemma family has no position_ids (positions from the cache length)
    assert ("position_ids" in res.report["inputs"]) == (not case.startswith("gemma"))
    ids = _ids(n=1)
    with torch.no_grad():  # independent check in plain onnxruntime: a prefill longer than the sliding windows
        ref = merged(input_ids=ids).logits
    sess = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    for i in sess.get_inputs():
        if i.name == "position_ids":
            feed[i.name] = np.arange(ids.shape[1])[None]
        elif i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    got = sess.run(["logits"], feed)[0]
    assert np.abs(ref.numpy() - got).max() < 1e-4
    try:  # the floor-stack job: the folder loads in stock optimum
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError:
        return
    ort = ORTModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert (ref - got).abs().max().item() < 1e-4


def test_head_pruning_that_would_not_reload_is_refused_before_the_run(tmp_path):
    """Phi-3 with longrope checks its rope factors against hidden_size // num_attention_heads, not head_dim."""
    import transformers
    from transformers import AutoModelForCausalLM

    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop
    from compressor.core.errors import ConfigError

    def longrope():
        cfg = transformers.Phi3Config(**{**_COMMON, "max_position_embeddings": 256}, num_key_value_heads=4,
                                      pad_token_id=0, original_max_position_embeddings=64,
                                      rope_scaling={"type": "longrope", "short_factor": [1.0] * 4,
                                                    "long_factor": [2.0] * 4})
        torch.manual_seed(0)
        return transformers.Phi3ForCausalLM(cfg).eval()

    m = longrope()
    groups = discover_groups(m)
    masks = MaskState.full(groups)
    for lm in masks.layers:
        lm.heads[1] = False
    before = {n: p.clone() for n, p in m.named_parameters()}
    with pytest.raises(ConfigError, match="would not load with stock transformers.*short_factor"):
        merge_and_slice(m, groups, masks)
    assert m.config.num_attention_heads == 4 and all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    with pytest.raises(ConfigError, match="keep every attention head"):  # balanced at 50 % drops heads
        PruneLoop(longrope(), PruneConfig(ratio=0.5, steps=2, prune_every=1, head_policy="balanced"),
                  torch.zeros(2, 8, dtype=torch.long))
    for lm in masks.layers:  # MLP channels only: reloads
        lm.heads[1] = True
        lm.channels[:8] = False
    merged = merge_and_slice(m, groups, masks)
    merged.save_pretrained(tmp_path)
    re = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=_ids()).logits, merged(input_ids=_ids()).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kv", [4, 2])
def test_fused_phi3_scores_and_masks_as_the_unfused_llama_with_the_same_weights(kv):
    """Phi-3's qkv_proj / gate_up_proj split into q, k, v / gate, up: a llama with those weights computes the same,
    and its groups get the same scores and, masked alike, the same logits."""
    import transformers

    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.scoring import model_scores

    phi = arch_model("phi3-mha" if kv == 4 else "phi3-gqa")
    phi.config.partial_rotary_factor = 1.0
    if isinstance(getattr(phi.config, "rope_parameters", None), dict):  # where transformers 5 reads it
        phi.config.rope_parameters["partial_rotary_factor"] = 1.0
    phi = transformers.Phi3ForCausalLM(phi.config).eval()
    cfg = transformers.LlamaConfig(**{**_COMMON, "num_key_value_heads": kv, "head_dim": 8,
                                      "tie_word_embeddings": False, "rms_norm_eps": phi.config.rms_norm_eps})
    llama = transformers.LlamaForCausalLM(cfg).eval()
    sd = {}
    for k, v in phi.state_dict().items():
        if ".qkv_proj." in k:
            q, kk, vv = v.split([32, 8 * kv, 8 * kv])
            sd.update({k.replace("qkv_proj", "q_proj"): q, k.replace("qkv_proj", "k_proj"): kk,
                       k.replace("qkv_proj", "v_proj"): vv})
        elif ".gate_up_proj." in k:
            g, u = v.chunk(2)
            sd.update({k.replace("gate_up_proj", "gate_proj"): g, k.replace("gate_up_proj", "up_proj"): u})
        else:
            sd[k] = v
    llama.load_state_dict(sd)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(phi(input_ids=ids).logits, llama(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    crit = get_criterion("magnitude")
    states = []
    for m in (phi, llama):
        groups = discover_groups(m)
        scores = model_scores(m, groups, crit)
        masks = MaskState.full(groups).install(m, groups)
        lg = groups.layers[0]
        mask_lowest(masks, scores, groups, (lg.heads_per_kv if lg.gqa else lg.num_heads) - 1, 24)
        with torch.no_grad():
            states.append((scores, masks.state_dict(), m(input_ids=ids).logits))
    (s_phi, m_phi, l_phi), (s_llama, m_llama, l_llama) = states
    for a, b in zip(s_phi, s_llama):
        torch.testing.assert_close(a.heads, b.heads)
        torch.testing.assert_close(a.channels, b.channels)
    assert all(torch.equal(x, y) for k in ("heads", "channels") for x, y in zip(m_phi[k], m_llama[k]))
    torch.testing.assert_close(l_phi, l_llama, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["gemma3-gqa", pytest.param("phi3-gqa", marks=pytest.mark.slow)])
def test_bench_counts_the_pruned_export(case, tmp_path):
    """The bench's parameter count from config.json (norms per architecture) equals the model's; a graph without
    position_ids (gemma) benchmarks too."""
    from exporters import bench, export_onnx
    from tests.tiny import tiny_tokenizer

    model = arch_model(case)
    groups = discover_groups(model)
    pm = _lora(model)
    merged = merge_and_slice(pm, groups, _mask(pm, groups)).eval()
    merged.save_pretrained(tmp_path / "hf")
    tiny_tokenizer(VOCAB).save_pretrained(tmp_path / "hf")
    export_onnx(tmp_path / "hf", tmp_path / "onnx", validate=False)
    rep = bench(tmp_path / "onnx", runs=2, warmup=1, prompt_lengths=(16,), decode_batches=(1,), context=8, threads=1,
                write=False, measure_memory=False)
    assert rep.model.params == sum(p.numel() for p in merged.parameters())


def test_gemma_calibration_and_report_perplexity_start_with_bos():
    """Gemma needs BOS (an architecture fact): its calibration blocks and the report's perplexity windows start
    with it; LLaMA keeps the papers' no-BOS protocol."""
    from compressor.algorithm.api import as_blocks, prune
    from compressor.algorithm.config import PruneConfig
    from compressor.modeling.architectures import needs_bos
    from tests.tiny import tiny_text, tiny_tokenizer

    assert needs_bos("gemma3_text") and needs_bos({"model_type": "gemma"}) and needs_bos("lorapress_gemma2")
    assert not needs_bos("llama") and not needs_bos("qwen2") and not needs_bos("no-such-type")
    tok = tiny_tokenizer(VOCAB)
    text = tiny_text(1500, vocab=VOCAB)
    cfg = PruneConfig(ratio=0.4, steps=2, prune_every=1, seq_len=24, batch_size=2, eval_windows=2, eval_seq_len=24)
    assert (as_blocks([text], tok, cfg, add_bos=True)[:, 0] == tok.bos_token_id).all()
    assert not (as_blocks([text], tok, cfg)[:, 0] == tok.bos_token_id).any()
    seen = []
    m = arch_model("gemma3-gqa")
    hook = m.get_input_embeddings().register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 0].clone()))
    r = prune(m, cfg, [text], tokenizer=tok, eval_text=text).report
    hook.remove()
    assert r["perplexity_before"]["add_bos"] and r["perplexity_after"]["add_bos"]
    batches = [s for s in seen if s.numel() == cfg.batch_size]  # the training steps (not the 1-row graph trace)
    assert batches and all((s == tok.bos_token_id).all() for s in batches)
    r = prune(arch_model("llama3-rope-untied-mha"), cfg, [text], tokenizer=tok, eval_text=text).report
    assert not r["perplexity_before"]["add_bos"]
