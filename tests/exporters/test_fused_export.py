"""Fused ONNX Runtime graphs on tiny random LLaMAs: ``--format onnx --optimize`` and ``--format onnx-genai``.

Cases include head-pruned models (``head_dim != hidden / heads``), GQA and tied embeddings; every route must
match PyTorch for a prefill and cached decode steps, and generate the same greedy tokens.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from compressor.core.errors import ConfigError, UnsupportedArchitectureError, ValidationError
from exporters import bench, export_onnx

PROMPTS = ("w1 w2 w3 w4", "w10 w20 w30", "w5")  # words of the tiny tokenizer's vocabulary

#: name: (hidden, heads, kv heads, head_dim, intermediate, tied); head_dim 16 for GroupQueryAttention's CPU kernel
FUSED_CASES = {
    "dense-gqa": (64, 4, 2, 16, 96, False),
    "pruned-mha": (64, 2, 2, 16, 128, False),        # hidden / heads = 32 != 16
    # 3 query heads on 1 KV head, tied lm_head; hidden / heads = 32 != 16 (hidden a multiple of the heads, which
    # transformers 5's config validation requires)
    "pruned-gqa-tied": (96, 3, 1, 16, 40, True),
}


def _genai_available() -> bool:
    try:
        import onnx_ir  # noqa: F401
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return False
    return True


needs_genai = pytest.mark.skipif(not _genai_available(),
                                 reason='onnxruntime-genai / onnx-ir not installed (pip install "lorapress[genai]")')


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory):
    made: dict[str, object] = {}

    def make(case: str, model_type: str = "llama"):
        key = f"{model_type}-{case}"
        if key in made:
            return made[key]
        import torch
        import transformers

        from tests.tiny import tiny_tokenizer

        hidden, heads, kv, hd, inter, tied = FUSED_CASES[case]
        tok = tiny_tokenizer(200)
        cls = "Qwen2" if model_type == "qwen2" else "Llama"
        cfg = getattr(transformers, f"{cls}Config")(
            vocab_size=200, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
            intermediate_size=inter, num_hidden_layers=2, max_position_embeddings=256,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            initializer_range=0.1, tie_word_embeddings=tied)
        torch.manual_seed(0)
        model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
        if model_type == "qwen2":  # non-zero q/k/v biases, so the check covers them
            with torch.no_grad():
                for layer in model.model.layers:
                    for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        p.bias.normal_(0, 0.1)
        path = tmp_path_factory.mktemp(f"hf-fused-{key}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        made[key] = path
        return path

    return make


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_optimize_fuses_and_matches_pytorch(case, fused_dir, tmp_path):
    out = tmp_path / "opt"
    res = export_onnx(fused_dir(case), out, optimize=True, threads=1, prompts=PROMPTS)
    rep = res.report
    assert rep["optimized"] is True and rep["format"] == "onnx"
    par = rep["validation"]["parity"]
    assert par["passed"] and par["max_abs_diff"] < 1e-4 and par["left_padded_row"]
    assert rep["validation"]["generate"]["all_equal"], "greedy generate through ORTModelForCausalLM"
    before, after = rep["optimize"]["before"], rep["optimize"]["after"]
    assert after["stored"]["fused"]["RotaryEmbedding"] == 2 * 2, "q and k of each of the 2 layers"
    assert after["stored"]["fused"]["SkipSimplifiedLayerNormalization"] >= 2
    assert after["ort_optimized"]["nodes"] < before["ort_optimized"]["nodes"]
    hidden, heads, _, hd, _, _ = FUSED_CASES[case]
    assert rep["optimize"]["num_heads"] == heads and rep["optimize"]["hidden_size"] == heads * hd
    assert json.loads((out / "export_report.json").read_text())["optimize"]["after"] == after


def test_optimize_then_int8(fused_dir, tmp_path):
    import onnx

    res = export_onnx(fused_dir("pruned-gqa-tied"), tmp_path / "o8", optimize=True, int8=True, threads=1,
                      prompts=PROMPTS)
    assert res.report["validation"]["int8"]["passed"] and res.report["validation"]["parity"]["passed"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o8" / "model.onnx")).graph.node}
    assert "RotaryEmbedding" in ops and ({"MatMulInteger", "DynamicQuantizeMatMul"} & ops)


@needs_genai
@pytest.mark.parametrize("case,model_type", [(c, "llama") for c in FUSED_CASES] + [("pruned-gqa-tied", "qwen2")])
def test_genai_export_matches_pytorch(case, model_type, fused_dir, tmp_path):
    from exporters.onnx.genai import export_onnx_genai

    out = tmp_path / "genai"
    res = export_onnx_genai(fused_dir(case, model_type), out, threads=1, prompts=PROMPTS)
    rep = res.report
    assert res.format == "onnx-genai" and rep["precision"] == "fp32" and res.validated
    par = rep["validation"]["parity"]
    assert par["passed"] and par["max_abs_diff"] < 1e-4 and par["decode_steps"] == 4 and par["batch"] == 2
    gen = rep["validation"]["generate"]
    assert gen["all_equal"] and gen["runtime"].startswith("onnxruntime_genai")
    fused = rep["graph"]["ort_optimized"]["fused"]
    assert fused["GroupQueryAttention"] == 2 and fused["SkipSimplifiedLayerNormalization"] >= 2
    assert "position_ids" not in rep["inputs"]
    for f in ("model.onnx", "genai_config.json", "config.json", "tokenizer.json", "export_report.json"):
        assert (out / f).is_file(), f
    assert not any(p.name.startswith(".") for p in out.iterdir()), "build scratch removed"
    hidden, heads, kv, hd, _, _ = FUSED_CASES[case]
    gcfg = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    assert (gcfg["head_size"], gcfg["num_attention_heads"], gcfg["num_key_value_heads"]) == (hd, heads, kv)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == hidden


@needs_genai
def test_genai_int4_within_tolerance(fused_dir, tmp_path):
    from exporters.onnx.genai import export_onnx_genai

    out = tmp_path / "int4"
    res = export_onnx_genai(fused_dir("pruned-gqa-tied"), out, precision="int4", threads=1, prompts=PROMPTS)
    rep = res.report
    i4 = rep["validation"]["int4"]
    assert i4["passed"] and i4["rel_nll_increase"] <= 0.10 and i4["top1_agreement"] >= 0.7
    assert i4["top1_agreement_positions"] >= 20, "the agreement gate is not vacuous"
    assert rep["validation"]["parity"]["passed"], "the fp32 build of the same route is checked exactly"
    assert rep["int4_settings"]["bits"] == 4 and rep["int4_settings"]["block_size"] == 32
    assert rep["graph"]["stored"]["fused"]["MatMulNBits"] == rep["int4_settings"]["matmulnbits_nodes"] > 0
    assert rep["tolerance"]["int4_max_rel_nll_increase"] == 0.10


@needs_genai
def test_genai_int4_outside_tolerance_raises(fused_dir, tmp_path):
    from exporters.onnx.genai import export_onnx_genai

    out = tmp_path / "int4"
    with pytest.raises(ValidationError, match="int4 graph is outside its tolerance"):
        export_onnx_genai(fused_dir("dense-gqa"), out, precision="int4", threads=1, prompts=PROMPTS,
                          int4_min_top1_agreement=1.01)
    assert not out.exists(), "a failed validation leaves no output"


def test_genai_refusals(fused_dir, tiny_llama_dir, tmp_path):
    from transformers import AutoConfig

    from compressor.modeling.perlayer import per_layer_config
    from exporters.onnx.genai import check_genai_model, export_onnx_genai

    cfg = AutoConfig.from_pretrained(fused_dir("dense-gqa"))
    with pytest.raises(UnsupportedArchitectureError, match="per-layer widths"):
        check_genai_model(per_layer_config(cfg, [4, 2], [2, 2], [96, 48]))
    with pytest.raises(UnsupportedArchitectureError, match="head_dim 8.*multiple of 16"):
        check_genai_model(AutoConfig.from_pretrained(tiny_llama_dir("pruned-gqa")))
    with pytest.raises(ConfigError, match="precision 'int3' is not valid; use one of fp32, int4"):
        export_onnx_genai(fused_dir("dense-gqa"), tmp_path / "x", precision="int3")


@needs_genai
def test_bench_genai_beside_optimum(fused_dir, tmp_path):
    from exporters.onnx.genai import export_onnx_genai

    src = fused_dir("pruned-gqa-tied")
    export_onnx_genai(src, tmp_path / "g", validate=False)
    export_onnx(src, tmp_path / "o", validate=False)
    rep = bench(tmp_path / "g", tmp_path / "o", threads=1, runs=2, warmup=1, prompt_lengths=(8,),
                decode_batches=(1, 2), context=8, write=False, measure_memory=False)
    assert (rep.model.format, rep.model.precision) == ("onnx-genai", "fp32")
    assert (rep.baseline.format, rep.baseline.precision) == ("onnx", "fp32")
    assert rep.ratios["flops.decode_b1"] == pytest.approx(1.0) and rep.ratios["params"] == pytest.approx(1.0)
    assert rep.ratios["bytes.decode_b2"] > 0 and "latency_over_bytes.decode_b1" in rep.ratios
    assert "onnx-genai, fp32" in rep.table() and "decode_b1 tokens/s" in rep.table()


@needs_genai
def test_cli_export_genai(fused_dir, tmp_path):
    from compressor.cli import main

    src = str(fused_dir("pruned-mha"))
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx-genai", "--out", str(tmp_path / "g"),
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "GroupQueryAttention 2" in r.output and "fp32 parity" in r.output and "onnxruntime_genai" in r.output


def test_cli_fused_option_errors(fused_dir, tmp_path):
    from compressor.cli import main

    src = str(fused_dir("pruned-mha"))
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx", "--int4", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "--quantize int4 only applies to --format onnx-genai" in r.output
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx-genai", "--optimize", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--optimize only applies to --format onnx" in r.output
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx-genai", "--int8", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--quantize int4" in r.output
