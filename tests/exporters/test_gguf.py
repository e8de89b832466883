"""GGUF export on tiny random LLaMA / Qwen2 models (dense and head-pruned, tied and untied embeddings):
metadata round trip, llama.cpp parity (f32 / f16 / q8_0), tokenizer, errors, CLI and llama.cpp benchmark."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.algorithm.merge import merge_and_slice
from compressor.core.errors import (
    ConfigError,
    DependencyMissingError,
    OutputExistsError,
    UnsupportedArchitectureError,
    ValidationError,
)
from compressor.modeling.sizes import rope_theta
from exporters import export_gguf
from exporters.gguf.write import interleave_rope_rows
from tests.tiny import CASES, per_layer_masked, tiny_bpe_tokenizer, tiny_model

VOCAB = 320  # the byte-level BPE tokenizer needs the 256 byte symbols + specials + a few merges

#: name -> (tests/tiny.py case, tie_word_embeddings); "head-pruned": heads * head_dim != hidden
MODELS = {
    "llama-dense-untied": ("llama-mha", False),
    "llama-headpruned-gqa-tied": ("llama-gqa", True),
    "qwen2-dense-tied": ("qwen2-gqa", True),
    "mistral-mqa-untied": ("mistral-mqa", False),
}


def _llamacpp():
    return pytest.importorskip("xllamacpp", reason='xllamacpp not installed (pip install "lorapress[gguf]")')


def _model(name: str, **config):
    case, tied = MODELS[name] if name in MODELS else (name, False)
    m = tiny_model(case, vocab=VOCAB, tie_word_embeddings=tied, initializer_range=0.1, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0, **config)
    with torch.no_grad():  # Qwen2 initialises its q/k/v biases to 0: make them matter
        for layer in m.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if proj.bias is not None:
                    proj.bias.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def tok():
    return tiny_bpe_tokenizer(VOCAB)


def _read(path):
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("name", list(MODELS))
def test_metadata_and_tensors_round_trip(name, tok, tmp_path):
    m = _model(name)
    res = export_gguf(m, tmp_path / "g", tokenizer=tok, validate=False)
    assert res.format == "gguf" and not res.validated and (tmp_path / "g" / "export_report.json").is_file()
    meta, tensors = _read(tmp_path / "g" / "model.gguf")
    cfg = m.config
    _, heads, kv, hd, hidden, inter = CASES[MODELS[name][0]]
    head_pruned = heads * hd != hidden
    arch = "qwen2" if cfg.model_type == "qwen2" and not head_pruned else "llama"
    assert meta["general.architecture"] == arch
    want = {"block_count": 2, "context_length": 128, "embedding_length": hidden, "feed_forward_length": inter,
            "attention.head_count": heads, "attention.head_count_kv": kv, "attention.key_length": hd,
            "attention.value_length": hd, "rope.dimension_count": hd, "vocab_size": VOCAB}
    for k, v in want.items():
        assert meta[f"{arch}.{k}"] == v, k
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(rope_theta(cfg))
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == VOCAB and len(meta["tokenizer.ggml.merges"]) > 0
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.padding_token_id"] == 0 and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.ggml.token_type"][:3] == [3, 3, 3] and meta["tokenizer.ggml.token_type"][3] == 1
    assert ("output.weight" in tensors) == (not cfg.tie_word_embeddings)
    assert ("blk.0.attn_q.bias" in tensors) == (cfg.model_type == "qwen2")
    assert len([t for t in tensors if t.startswith("blk.1.")]) == 9 + (3 if cfg.model_type == "qwen2" else 0)

    def data(t):  # GGUF shapes are reversed (ne0 first); .data is the row-major numpy view
        return np.asarray(tensors[t].data).reshape(tuple(int(x) for x in reversed(tensors[t].shape)))

    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    np.testing.assert_array_equal(data("token_embd.weight"), sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(data("blk.1.ffn_down.weight"), sd["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(data("blk.0.attn_v.weight"), sd["model.layers.0.self_attn.v_proj.weight"])
    q, k = sd["model.layers.0.self_attn.q_proj.weight"], sd["model.layers.0.self_attn.k_proj.weight"]
    if arch == "llama":  # rope rows interleaved per head
        np.testing.assert_array_equal(data("blk.0.attn_q.weight"), interleave_rope_rows(q, heads))
        np.testing.assert_array_equal(data("blk.0.attn_k.weight"), interleave_rope_rows(k, kv))
        assert not np.array_equal(data("blk.0.attn_q.weight"), q)
    else:
        np.testing.assert_array_equal(data("blk.0.attn_q.weight"), q)
        np.testing.assert_array_equal(data("blk.0.attn_q.bias").ravel(), sd["model.layers.0.self_attn.q_proj.bias"])
    rep = res.report
    assert rep["gguf"]["metadata"][f"{arch}.attention.key_length"] == hd and rep["validation"] == {"enabled": False}
    assert rep["tokenizer"]["pre"] == "gpt-2" and rep["files"]["model.gguf"] > 0


def test_interleave_matches_rope_layouts():
    """HF's rotate-half rope on q == llama.cpp's adjacent-pair rope on the interleaved rows (then interleaved)."""
    torch.manual_seed(0)
    heads, hd, pos = 3, 8, 5
    q = torch.randn(heads * hd)
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    ang = pos * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    x = q.view(heads, hd)
    hf = x * cos + torch.cat([-x[:, hd // 2:], x[:, : hd // 2]], dim=-1) * sin
    y = torch.from_numpy(interleave_rope_rows(q.numpy(), heads)).view(heads, hd // 2, 2)
    a, b = y[..., 0], y[..., 1]
    gg = torch.stack([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], dim=-1).reshape(-1)
    torch.testing.assert_close(gg, torch.from_numpy(interleave_rope_rows(hf.reshape(-1).numpy(), heads)))


@pytest.mark.parametrize("name", list(MODELS) + ["qwen2-headpruned"])
def test_llamacpp_parity_f32(name, tok, tmp_path):
    _llamacpp()
    if name == "qwen2-headpruned":
        m = _model("qwen2-gqa", num_attention_heads=2)  # 2 heads * 8 != 32: written as llama with biases
    else:
        m = _model(name)
    res = export_gguf(m, tmp_path / "g", tokenizer=tok)
    val = res.report["validation"]
    lp = val["logprobs"]
    assert res.validated and lp["passed"] and lp["max_abs_diff"] <= 1e-3 and lp["argmax_agreement"] == 1.0
    assert lp["tolerance"] == {"max_abs_diff": 1e-3} and len(lp["prompts"]) >= 6
    assert val["tokenizer"]["passed"] and val["tokenizer"]["checks"] == 10
    saved = json.loads((tmp_path / "g" / "export_report.json").read_text())
    assert saved["validation"]["logprobs"]["max_abs_diff"] == pytest.approx(lp["max_abs_diff"])
    if name == "qwen2-headpruned":
        assert res.report["gguf"]["architecture"] == "llama" and "head-pruned" in res.report["gguf"]["notes"][0]


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_llamacpp_parity_rope_scaling(rope_scaling, tok, tmp_path):
    _llamacpp()
    m = _model("llama-gqa", rope_scaling=rope_scaling, rope_theta=500.0)
    res = export_gguf(m, tmp_path / "g", tokenizer=tok)
    assert res.report["validation"]["logprobs"]["max_abs_diff"] <= 1e-3
    _, tensors = _read(tmp_path / "g" / "model.gguf")
    assert ("rope_freqs.weight" in tensors) == (rope_scaling["rope_type"] == "llama3")


def test_q8_0_and_f16_within_tolerance(tok, tmp_path):
    _llamacpp()
    m = _model("llama-headpruned-gqa-tied")
    q = export_gguf(m, tmp_path / "q8", tokenizer=tok, gguf_type="q8_0").report
    lp = q["validation"]["logprobs"]
    assert lp["passed"] and lp["mean_kl"] <= 0.02 and lp["argmax_gated"] >= 1
    assert all(r["argmax_torch"] == r["argmax_llama"] for r in lp["prompts"] if r["margin"] >= 0.05)
    assert lp["max_abs_diff"] > 1e-4, "q8_0 is lossy: a zero difference would mean it was not quantized"
    _, tensors = _read(tmp_path / "q8" / "model.gguf")
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"  # 40 columns: not a multiple of 32
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert "blk.0.ffn_down.weight" in q["gguf"]["f16_fallback"]
    f16 = export_gguf(m, tmp_path / "f16", tokenizer=tok, gguf_type="f16").report
    assert f16["validation"]["logprobs"]["max_abs_diff"] <= 5e-2
    size = {t: (tmp_path / t / "model.gguf").stat().st_size for t in ("q8", "f16")}
    assert size["q8"] < size["f16"]


def test_tokenizer_that_adds_bos(tmp_path):
    """add_bos_token follows the HF tokenizer, and llama.cpp's tokenization with special tokens matches it."""
    _llamacpp()
    tok = tiny_bpe_tokenizer(VOCAB, add_bos=True)
    assert tok.encode("Hi")[0] == 1
    res = export_gguf(_model("qwen2-dense-tied"), tmp_path / "g", tokenizer=tok)
    meta, _ = _read(tmp_path / "g" / "model.gguf")
    assert meta["tokenizer.ggml.add_bos_token"] is True and res.report["tokenizer"]["add_bos_token"] is True
    with_special = [r for r in res.report["validation"]["tokenizer"]["results"] if r["add_special"]]
    assert with_special and all(r["equal"] for r in with_special)


def test_failed_validation_keeps_nothing(tok, tmp_path):
    _llamacpp()
    out = tmp_path / "g"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValidationError, match=r"max \|log-prob diff\| .* > 0.*mean KL") as ei:
        export_gguf(_model("llama-dense-untied"), out, tokenizer=tok, force=True, tolerances={"max_abs_diff": 0.0})
    assert "not kept" in str(ei.value)
    assert (out / "old.txt").read_text() == "old" and not (out / "model.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".g.tmp")], "the temporary folder is removed"


def test_tokenizer_mismatch_is_refused(tok, tmp_path):
    _llamacpp()
    with pytest.raises(ValidationError, match="tokenizes .* differently"):
        export_gguf(_model("llama-dense-untied"), tmp_path / "g", tokenizer=tok, tokenizer_pre="llama-bpe")
    assert not (tmp_path / "g").exists()


def test_bad_type_and_existing_output(tok, tmp_path):
    m = _model("llama-dense-untied")
    with pytest.raises(ConfigError, match="'q4'.*f32, f16, q8_0"):
        export_gguf(m, tmp_path / "g", tokenizer=tok, gguf_type="q4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        export_gguf(m, busy, tokenizer=tok, validate=False)
    export_gguf(m, busy, tokenizer=tok, validate=False, force=True)
    assert not (busy / "x").exists() and (busy / "model.gguf").is_file()


def test_unsupported_inputs(tok, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=32))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*llama.*mistral.*qwen2"):
        export_gguf(gpt2, tmp_path / "a", tokenizer=tok, validate=False)
    m = _model("llama-dense-untied")
    # per-layer widths, as a non-uniform prune would need (written past transformers 5's field type check)
    vars(m.config)["intermediate_size"] = [48, 40]
    with pytest.raises(UnsupportedArchitectureError, match="lists in intermediate_size.*lorapress per-layer config"):
        export_gguf(m, tmp_path / "b", tokenizer=tok, validate=False)
    from tests.tiny import tiny_tokenizer

    with pytest.raises(UnsupportedArchitectureError, match="byte-level BPE"):
        export_gguf(_model("llama-dense-untied"), tmp_path / "c", tokenizer=tiny_tokenizer(VOCAB), validate=False)
    with pytest.raises(ConfigError, match="tokenizer"):
        export_gguf(_model("llama-dense-untied"), tmp_path / "d", tokenizer=None, validate=False)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_missing_xllamacpp(tok, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # `import xllamacpp` now raises ImportError
    with pytest.raises(DependencyMissingError, match=r'lorapress\[gguf\].*--no-validate'):
        export_gguf(_model("llama-dense-untied"), tmp_path / "g", tokenizer=tok)
    assert not (tmp_path / "g").exists()
    res = export_gguf(_model("llama-dense-untied"), tmp_path / "g", tokenizer=tok, validate=False)
    assert (tmp_path / "g" / "model.gguf").is_file() and res.report["validation"] == {"enabled": False}


def test_pre_tokenizer_detection(tok):
    from tokenizers import pre_tokenizers

    from exporters.gguf.vocab import pre_tokenizer_name

    assert pre_tokenizer_name(tok)[0] == "gpt-2"
    t2 = tiny_bpe_tokenizer(VOCAB)
    t2.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert pre_tokenizer_name(t2) == ("smollm", "structure: single digits, then GPT-2 ByteLevel regex")
    t2.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    with pytest.raises(UnsupportedArchitectureError, match="--tokenizer-pre"):
        pre_tokenizer_name(t2)


def test_cli_export_and_bench(tok, tmp_path):
    _llamacpp()
    from compressor.cli import main

    src = tmp_path / "hf"
    _model("llama-headpruned-gqa-tied").save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "gg"
    r = CliRunner().invoke(main, ["export", str(src), "--format", "gguf", "--quantize", "q8_0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "llama.cpp vs PyTorch" in r.output and "tokenizer: llama.cpp == HF" in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--format", "gguf", "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--format", "gguf", "--type", "q4_k", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "f32, f16, q8_0" in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--format", "onnx", "--type", "f16", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--format gguf" in r.output
    base = tmp_path / "gg32"
    assert CliRunner().invoke(main, ["export", str(src), "--format", "gguf", "--no-validate", "--out", str(base)]).exit_code == 0
    r = CliRunner().invoke(main, ["bench", str(out), "--baseline", str(base), "--runs", "2", "--warmup", "0",
                                  "--prompt-lengths", "8,16", "--decode-batches", "1,4", "--context", "8",
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "bench_report.json").read_text())
    r = CliRunner().invoke(main, ["bench", str(out), "--runs", "1", "--warmup", "0", "--threads", "1"])
    assert r.exit_code == 2 and "bench_report.json" in r.output and "--force" in r.output, r.output
    assert set(rep["model"]["latency"]) == {"prefill_8", "prefill_16", "decode_b1"}
    assert rep["settings"]["provider"] == "llama.cpp-cpu" and rep["model"]["quantized"] is True
    assert rep["baseline"]["quantized"] is False and rep["ratios"]["file_bytes"] < 1
    assert all(st["median_ms"] > 0 for st in rep["model"]["latency"].values())
    assert any("decode batch 4 not measured" in n for n in rep["model"]["notes"])
    assert rep["model"]["config"]["head_dim"] == 8 and rep["model"]["config"]["tied"] is True


@pytest.mark.parametrize("case", ["llama-gqa", "llama-mha", "qwen2-gqa"])
def test_gguf_deci_parity_in_llamacpp(case, tmp_path):
    pytest.importorskip("xllamacpp", reason='xllamacpp not installed (pip install "lorapress[gguf]")')
    from gguf import GGUFReader

    from exporters import export_gguf

    pm, masks, groups = per_layer_masked(case, vocab=320, lora=False, initializer_range=0.1, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=0)
    with torch.no_grad():  # Qwen2 initialises its q/k/v biases to 0: make them matter
        for layer in pm.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if getattr(proj, "bias", None) is not None:
                    proj.bias.normal_(0, 0.3)
    merged = merge_and_slice(pm, groups, masks).eval()
    res = export_gguf(merged, tmp_path / "g", tokenizer=tiny_bpe_tokenizer(320), gguf_type="f32")
    lp = res.report["validation"]["logprobs"]
    assert lp["passed"] and lp["max_abs_diff"] < 1e-4 and lp["argmax_agreement"] == 1.0
    r = GGUFReader(str(tmp_path / "g" / "model.gguf"))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    c = merged.config
    assert meta["general.architecture"] == "deci"
    assert meta["deci.feed_forward_length"] == list(c.per_layer_intermediate_size)
    assert meta["deci.attention.head_count"] == list(c.per_layer_num_attention_heads)
    assert meta["deci.attention.head_count_kv"] == list(c.per_layer_num_key_value_heads)
    assert meta["deci.attention.key_length"] == groups.layers[0].head_dim
    from exporters.measure.gguf import gguf_dims
    from exporters.measure.inputs import count_params

    dims, _ = gguf_dims(tmp_path / "g" / "model.gguf")
    assert count_params(dims) == sum(p.numel() for p in merged.parameters())
