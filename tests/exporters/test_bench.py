"""ONNX Runtime benchmark on tiny exported models: report shape, ratios, counts and errors."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from compressor.core.errors import ConfigError, DependencyMissingError, ModelLoadError
from exporters import BenchReport, bench, export_onnx
from exporters.measure.ort import count_params, flops_per_token, model_dims
from tests.conftest import EXPORT_CASES

FAST = {"runs": 3, "warmup": 1, "prompt_lengths": (16, 32), "decode_batches": (1, 2), "context": 8, "threads": 1,
        "force": True}  # the module-wide folders get a report from each test


@pytest.fixture(scope="module")
def onnx_dirs(tiny_llama_dir, tmp_path_factory):
    """(pruned-gqa ONNX folder, dense-gqa ONNX folder), exported without validation."""
    root = tmp_path_factory.mktemp("bench")
    out = {}
    for case in ("pruned-gqa", "dense-gqa"):
        out[case] = root / case
        export_onnx(tiny_llama_dir(case), out[case], validate=False)
    return out["pruned-gqa"], out["dense-gqa"]


def test_bench_with_baseline(onnx_dirs, tmp_path):
    model, base = onnx_dirs
    rep = bench(model, base, out=tmp_path, **FAST)
    assert isinstance(rep, BenchReport) and rep.json_path == tmp_path / "bench_report.json"
    data = json.loads(rep.json_path.read_text())
    assert set(data) == {"settings", "model", "baseline", "ratios"}
    for m in (data["model"], data["baseline"]):
        assert set(m["latency"]) == {"prefill_16", "prefill_32", "decode_b1", "decode_b2"}
        for st in m["latency"].values():
            assert st["runs"] == 3 and 0 < st["min_ms"] <= st["median_ms"] <= st["p90_ms"]
        assert m["peak_rss_mb"] > 10 and m["file_bytes"] > 0 and m["params"] > 0
    r = rep.ratios
    for case in ("prefill_16", "prefill_32", "decode_b1", "decode_b2"):
        want = rep.model.latency[case]["median_ms"] / rep.baseline.latency[case]["median_ms"]
        assert r[f"latency.{case}"] == pytest.approx(want)
    assert r["flops_per_token"] == pytest.approx(rep.model.flops_per_token / rep.baseline.flops_per_token)
    assert r["flops_per_token"] < 1
    from exporters.measure.ort import flops_per_token

    ctx = data["settings"]["context"]
    for case, t in (("prefill_16", 8.5), ("prefill_32", 16.5), ("decode_b1", ctx + 1)):  # mean attention context
        fr = flops_per_token(rep.model.config, t)["total"] / flops_per_token(rep.baseline.config, t)["total"]
        assert r[f"flops.{case}"] == pytest.approx(fr) and r[f"latency_over_flops.{case}"] == pytest.approx(r[f"latency.{case}"] / fr)
    assert "decode_b1 latency/FLOP ratio" in rep.table()
    assert r["params"] < 1, "the head-pruned model has fewer parameters than the dense one"
    # decode latency is what is measured: one new token per sequence on a KV cache of `context` positions
    assert rep.model.latency["decode_b2"]["tokens_per_s"] == pytest.approx(2e3 / rep.model.latency["decode_b2"]["median_ms"])
    table = rep.table()
    assert "model/baseline" in table and "decode_b1 median" in table and "GFLOPs/token" in table
    assert data["settings"]["alternating"] is True and data["settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_bench_single_default_out(onnx_dirs):
    model, _ = onnx_dirs
    rep = bench(model, measure_memory=False, **FAST)
    assert rep.baseline is None and rep.ratios is None
    assert rep.json_path == model / "bench_report.json" and rep.json_path.is_file()
    assert rep.model.peak_rss_mb is None and "model/baseline" not in rep.table()


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_counts_match_model(case, tiny_llama_dir, tmp_path):
    """params from the config formula == torch's count; FLOPs = 2*linear params (+ attention term)."""
    from transformers import AutoModelForCausalLM

    src = tiny_llama_dir(case)
    export_onnx(src, tmp_path / "o", validate=False)
    dims = model_dims(json.loads((tmp_path / "o" / "config.json").read_text()))  # adjusted config for pruned
    model = AutoModelForCausalLM.from_pretrained(src)
    assert count_params(dims) == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, __import__("torch").nn.Linear))
    f = flops_per_token(dims, 100)
    assert f["linear"] == 2 * linear
    _, heads, _, hd, _ = EXPORT_CASES[case]
    assert f["attention"] == 4 * 2 * heads * hd * 100 and f["total"] == f["linear"] + f["attention"]


def test_counts_qwen2_bias_and_tied():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    assert count_params(model_dims(cfg.to_dict())) == sum(p.numel() for p in model.parameters())


def test_bench_errors(onnx_dirs, tiny_llama_dir, tmp_path):
    model, _ = onnx_dirs
    with pytest.raises(DependencyMissingError, match="CUDAExecutionProvider"):
        bench(model, provider="cuda", **FAST)
    with pytest.raises(ModelLoadError, match="compress export"):
        bench(tiny_llama_dir("dense-mha"), **FAST)
    with pytest.raises(ModelLoadError, match="not a folder"):
        bench(tmp_path / "missing", **FAST)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no \\*.onnx"):
        bench(empty, **FAST)
    with pytest.raises(ConfigError, match="runs"):
        bench(model, **dict(FAST, runs=0))
    with pytest.raises(ConfigError, match="provider"):
        bench(model, provider="tpu", **FAST)
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        bench(model, out=a_file, measure_memory=False, **FAST)


def test_bench_without_onnxruntime(onnx_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(DependencyMissingError, match="onnxruntime"):
        bench(onnx_dirs[0], **FAST)


def test_cli_bench(onnx_dirs, tmp_path):
    from compressor.cli import main

    model, base = onnx_dirs
    args = ["bench", str(model), "--baseline", str(base), "--runs", "2", "--warmup", "0", "--prompt-lengths", "8",
            "--decode-batches", "1", "--context", "4", "--threads", "1", "--no-memory", "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "prefill_8 median" in r.output and "model/baseline" in r.output
    assert (tmp_path / "bench_report.json").is_file()
    first = (tmp_path / "bench_report.json").read_text()
    r = CliRunner().invoke(main, args)  # a second run does not replace the report without --force
    assert r.exit_code == 2 and "bench_report.json" in r.output and "--force" in r.output, r.output
    assert (tmp_path / "bench_report.json").read_text() == first
    r = CliRunner().invoke(main, args + ["--force"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["bench", str(model), "--device", "cuda", "--runs", "1", "--force"])
    assert r.exit_code == 1 and "CUDAExecutionProvider" in r.output
    r = CliRunner().invoke(main, ["bench", str(model), "--provider", "cuda", "--runs", "1", "--force"])
    assert r.exit_code == 1 and "--provider is deprecated" in r.output and "--device cuda" in r.output
    r = CliRunner().invoke(main, ["bench", str(model), "--provider", "cuda", "--device", "cpu"])
    assert r.exit_code == 2 and "disagree" in r.output
    r = CliRunner().invoke(main, ["bench", str(model), "--prompt-lengths", "a,b"])
    assert r.exit_code == 2 and "--prompt-lengths" in r.output
