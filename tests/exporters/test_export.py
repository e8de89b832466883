"""ONNX and safetensors export on tiny random LLaMA models (dense / head-pruned, MHA / GQA), and of per-layer-width
folders (the ``per_layer_folders`` fixture of tests/conftest.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compressor.core.errors import (
    ConfigError,
    DependencyMissingError,
    ModelLoadError,
    OutputExistsError,
    UnsupportedArchitectureError,
    ValidationError,
)
from compressor.modeling.perlayer import REMOTE_CODE_FILES
from exporters import ExportResult, export_onnx, export_safetensors
from tests.conftest import EXPORT_CASES
from tests.tiny import PER_LAYER_IDS, logits_of

PROMPTS = ("w1 w2 w3 w4", "w10 w20 w30", "w5")  # words of the tiny tokenizer's vocabulary


def _export(src, out, **kw):
    kw.setdefault("threads", 1)
    kw.setdefault("prompts", PROMPTS)
    return export_onnx(src, out, **kw)


def _pt(src):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").eval()


def _has_optimum() -> bool:
    try:
        import optimum.onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or not importable beside this transformers
        return False
    return True


def _ort_run(folder, ids, mask=None):
    """One forward of the folder's model.onnx in plain onnxruntime with an empty KV cache: (logits, present)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray(ids, np.int64)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)
    feed = {"input_ids": ids, "attention_mask": mask}
    for i in sess.get_inputs():
        if i.name == "position_ids":
            feed[i.name] = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
        elif i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
    out = sess.run(None, feed)
    return out[0], out[1:]


def _ort_greedy(folder, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """Greedy generation in plain onnxruntime with the graph's own KV cache (fed back step by step)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past_key_values.")}
    outs = [o.name for o in sess.get_outputs()]
    seq, new = list(prompt), list(prompt)
    for _ in range(max_new_tokens):
        n_past = len(seq) - len(new)
        feed = {"input_ids": np.asarray([new], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64), **past}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(n_past, len(seq), dtype=np.int64)[None]
        res = dict(zip(outs, sess.run(None, feed)))
        past = {k: res[k.replace("past_key_values.", "present.")] for k in past}
        nxt = int(res["logits"][0, -1].argmax())
        seq.append(nxt)
        new = [nxt]
        if nxt == eos:
            break
    return seq


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_onnx_export_parity_and_ort_generate(case, tiny_llama_dir, tmp_path):
    src = tiny_llama_dir(case)
    src_cfg = (src / "config.json").read_text()
    out = tmp_path / "onnx"
    res = _export(src, out)
    assert isinstance(res, ExportResult) and res.path == out and res.validated
    for f in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "export_report.json"):
        assert (out / f).is_file(), f
    assert (src / "config.json").read_text() == src_cfg, "the HF model's config must never change"

    rep = json.loads((out / "export_report.json").read_text())
    par = rep["validation"]["parity"]
    assert par["passed"] and par["max_abs_diff"] < 1e-4
    assert {"prefill.logits", "decode.logits", "prefill.present.key", "decode.present.value"} <= set(par["per_output"])
    assert rep["tolerance"]["fp32_atol"] == 1e-4 and isinstance(rep["opset"], int)
    assert rep["files"]["model.onnx"] == (out / "model.onnx").stat().st_size > 0
    assert rep["validation"]["generate"]["all_equal"]
    assert rep["exporter"] == "torch" and rep["opset"] == 17 and rep["torch_export"]["position_ids"] is True
    assert rep["validation"]["generate"]["runner"] == ("optimum" if _has_optimum() else "onnxruntime")
    assert rep["versions"]["torch"] and rep["versions"]["transformers"]
    assert rep["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert rep["inputs"][3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert rep["outputs"] == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]

    hidden, heads, _, hd, _ = EXPORT_CASES[case]
    cfg = json.loads((out / "config.json").read_text())
    if hidden // heads != hd:  # head-pruned: folder config adjusted for ORTModelForCausalLM
        assert cfg["hidden_size"] == heads * hd and cfg["lorapress_export"]["model_hidden_size"] == hidden
        assert rep["ort_config_adjustment"]["hidden_size"] == {"model": hidden, "onnx_config": heads * hd}
    else:
        assert cfg["hidden_size"] == hidden and "lorapress_export" not in cfg
        assert rep["ort_config_adjustment"] is None

    # Independent check in plain onnxruntime: logits and KV cache of a prefill, and greedy generation with the
    # graph's own KV cache.
    pt = _pt(src)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 150]])
    with torch.no_grad():
        ref = pt(input_ids=ids, use_cache=True)
        logits, present = _ort_run(out, ids.numpy())
        assert np.abs(ref.logits.numpy() - logits).max() < 1e-4
        assert np.abs(ref.past_key_values.layers[1].values.numpy() - present[3]).max() < 1e-4
        for p in PROMPTS:
            x = torch.tensor([[int(w[1:]) + 3 for w in p.split()]])
            kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": 10, "do_sample": False, "pad_token_id": 2}
            assert pt.generate(x, **kw)[0].tolist() == _ort_greedy(out, x[0].tolist(), 10, eos=2)


@pytest.mark.parametrize("exporter", ["torch", "optimum"])
def test_folder_loads_in_stock_optimum(exporter, tiny_llama_dir, tmp_path):
    """Where optimum is installed (the floor-stack CI job): a folder from either exporter loads in stock optimum's
    ORTModelForCausalLM (head-pruned config adjusted), matches PyTorch's logits and greedy generate, and the
    export's own generate check ran through it."""
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForCausalLM

    src = tiny_llama_dir("pruned-gqa")
    out = tmp_path / "onnx"
    rep = _export(src, out, exporter=exporter).report
    assert rep["exporter"] == exporter and rep["validation"]["generate"]["runner"] == "optimum"
    pt = _pt(src)
    ort = ORTModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 150]])
    with torch.no_grad():
        a = pt(input_ids=ids).logits
        b = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert (a - b).abs().max().item() < 1e-4
        for p in PROMPTS:
            x = torch.tensor([[int(w[1:]) + 3 for w in p.split()]])
            kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": 10, "do_sample": False, "pad_token_id": 2}
            assert pt.generate(x, **kw).tolist() == ort.generate(x, **kw).tolist()


def test_optimum_exporter_without_optimum_names_the_install(tiny_llama_dir, tmp_path, monkeypatch):
    """--exporter optimum where optimum cannot be imported: a clear error before any work, naming the pip line,
    the transformers cap and the default exporter that needs none."""
    import sys

    from compressor.cli import main

    monkeypatch.setitem(sys.modules, "optimum", None)  # `import optimum...` now raises ImportError
    monkeypatch.setitem(sys.modules, "optimum.exporters", None)
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)
    out = tmp_path / "o"
    with pytest.raises(DependencyMissingError) as ei:
        export_onnx(tiny_llama_dir("dense-mha"), out, exporter="optimum")
    msg = str(ei.value)
    assert 'pip install "lorapress[optimum]"' in msg and "transformers < 4.58" in msg
    assert "--exporter torch" in msg and "needs no optimum" in msg
    assert not out.exists()
    r = CliRunner().invoke(main, ["export", str(tiny_llama_dir("dense-mha")), "--exporter", "optimum",
                                  "--out", str(out)])
    assert r.exit_code != 0 and 'pip install "lorapress[optimum]"' in r.output and not out.exists()
    with pytest.raises(ConfigError, match="exporter 'tf' is not valid"):
        export_onnx(tiny_llama_dir("dense-mha"), out, exporter="tf")
    r = CliRunner().invoke(main, ["export", str(tiny_llama_dir("dense-mha")), "--format", "safetensors",
                                  "--exporter", "optimum", "--out", str(out)])
    assert r.exit_code == 2 and "--exporter only applies to --format onnx" in r.output


def test_generate_check_without_optimum_runs_in_onnxruntime(tiny_llama_dir, tmp_path, monkeypatch):
    """Without optimum the greedy-generation check runs in plain onnxruntime over model.onnx and still compares
    with PyTorch: a model that computes something else than the graph fails it."""
    import sys

    from exporters.onnx.validation import validate_generate
    from tests.tiny import tiny_tokenizer

    monkeypatch.setitem(sys.modules, "optimum", None)  # `import optimum...` now raises ImportError
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)
    src = tiny_llama_dir("pruned-mha")
    rep = _export(src, tmp_path / "o").report
    gen = rep["validation"]["generate"]
    assert gen["runner"] == "onnxruntime" and gen["all_equal"] and gen["passed"] and "optimum_unavailable" in gen
    assert all(len(r["pt"]) == 8 and r["pt"] == r["ort"] for r in gen["results"])
    model = _pt(src)
    model.generation_config.repetition_penalty = 50.0  # a generation_config.json's processors: set aside for both
    model.generation_config.no_repeat_ngram_size = 1
    again = validate_generate(model, tmp_path / "o", tiny_tokenizer(200), prompts=PROMPTS, runner="onnxruntime")
    assert again["all_equal"] and [r["pt"] for r in again["results"]] == [r["pt"] for r in gen["results"]]
    assert model.generation_config.repetition_penalty == 50.0, "the model's generation config is restored"
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # PyTorch's greedy token is now the graph's least likely one
    with pytest.raises(ValidationError, match="greedy generation through ONNX Runtime differs from PyTorch"):
        validate_generate(model, tmp_path / "o", tiny_tokenizer(200), prompts=PROMPTS, runner="onnxruntime")
    with pytest.raises(DependencyMissingError, match="optimum"):
        validate_generate(model, tmp_path / "o", tiny_tokenizer(200), prompts=PROMPTS, runner="optimum")


def test_torch_export_is_quiet(tiny_llama_dir, tmp_path):
    """The tracer's notes on transformers' cache / mask code and torch's notes on its TorchScript exporter are
    silenced inside the export (the parity and generation checks verify what they warn about)."""
    import warnings

    from torch.jit import TracerWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _export(tiny_llama_dir("dense-gqa"), tmp_path / "o", validate=False)
    noisy = [f"{w.category.__name__}: {w.message}" for w in seen
             if issubclass(w.category, TracerWarning) or "TorchScript" in str(w.message)
             or "aten::index" in str(w.message) or "feature will be removed" in str(w.message)]
    assert noisy == []


def test_large_graph_weights_become_one_data_file(tiny_llama_dir, tmp_path):
    """A graph over 2 GiB, which torch's TorchScript exporter writes with one external file per tensor, ends up as
    model.onnx + model.onnx_data (optimum's layout) computing the same (simulated on a tiny graph)."""
    import onnx

    from exporters.onnx.torch_export import _move_graph

    _export(tiny_llama_dir("dense-gqa"), tmp_path / "o", validate=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proto = onnx.load(str(tmp_path / "o" / "model.onnx"))
    onnx.save_model(proto, str(scratch / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(scratch.iterdir())) > 10, "one file per tensor, as the exporter writes them"
    dest = tmp_path / "dest"
    dest.mkdir()
    _move_graph(scratch, dest / "model.onnx")
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "model.onnx_data"]
    ids = np.array([[5, 17, 42, 99, 7]])
    assert np.array_equal(_ort_run(dest, ids)[0], _ort_run(tmp_path / "o", ids)[0])


def test_int8_export_within_tolerance(tiny_llama_dir, tmp_path):
    import onnx

    src = tiny_llama_dir("pruned-gqa")
    res = _export(src, tmp_path / "int8", int8=True)
    rep = res.report
    i8 = rep["validation"]["int8"]
    assert i8["passed"] and i8["rel_nll_increase"] <= 0.05 and i8["top1_agreement"] >= 0.8
    assert i8["top1_agreement_positions"] >= 20, "the agreement gate is not vacuous"
    assert rep["validation"]["parity"]["passed"], "the intermediate fp32 graph is checked exactly"
    assert rep["tolerance"]["int8_max_rel_nll_increase"] == 0.05
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert rep["files"]["model.onnx"] < rep["fp32_onnx_bytes"]
    assert [f for f in res.files if f.endswith(".onnx")] == ["model.onnx"]
    assert len(_ort_greedy(tmp_path / "int8", [4, 5, 6], 4)) == 7, "the int8 graph runs with its KV cache"
    if _has_optimum():
        from optimum.onnxruntime import ORTModelForCausalLM

        ort = ORTModelForCausalLM.from_pretrained(tmp_path / "int8")
        out = ort.generate(torch.tensor([[4, 5, 6]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                           max_new_tokens=4, do_sample=False, pad_token_id=2)
        assert out.shape[1] >= 4


def test_int8_outside_tolerance_raises(tiny_llama_dir, tmp_path):
    out = tmp_path / "int8"
    with pytest.raises(ValidationError, match="relative NLL increase"):
        _export(tiny_llama_dir("dense-gqa"), out, int8=True, int8_min_top1_agreement=1.01)
    assert not out.exists(), "a failed validation leaves no output"


def test_parity_failure_lists_each_output(tiny_llama_dir, tmp_path):
    out = tmp_path / "o"
    (out).mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValidationError) as ei:
        _export(tiny_llama_dir("pruned-mha"), out, atol=1e-12, rtol=0.0, noise_factor=0, force=True)
    msg = str(ei.value)
    for name in ("prefill.logits", "decode.logits", "prefill.present.key", "decode.present.value"):
        assert name in msg
    assert (out / "keep.txt").read_text() == "old", "the old output stays in place when validation fails"


def test_no_validate_and_force(tiny_llama_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    res = _export(tiny_llama_dir("dense-mha"), out, validate=False, force=True, opset=17)
    assert res.report["validation"] == {"enabled": False} and not res.validated
    assert res.report["opset"] == 17
    assert not (out / "stale.txt").exists() and (out / "model.onnx").is_file()


def test_safetensors_export_drops_gguf_tokenizer_model(tiny_llama_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    # Mimic a GGUF-sourced folder: the slow-tokenizer vocab file is the .gguf itself.
    src = tmp_path / "src"
    shutil.copytree(tiny_llama_dir("pruned-gqa"), src)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "LlamaTokenizerFast"
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    (src / "tokenizer.model").write_bytes(b"GGUF" + bytes(4096))

    out = tmp_path / "hf"
    res = export_safetensors(src, out)
    assert res.format == "safetensors" and (out / "model.safetensors").is_file()
    assert not (out / "tokenizer.model").exists()
    # transformers 4.57's LlamaTokenizerFast copies its vocab file (the GGUF) on save and the export removes it;
    # transformers 5's does not write it at all: the report says whether a copy was removed
    plain = tmp_path / "plain"
    AutoTokenizer.from_pretrained(src).save_pretrained(plain)
    assert res.report["tokenizer"]["removed_gguf_tokenizer_model"] is (plain / "tokenizer.model").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w1 w2")["input_ids"] == AutoTokenizer.from_pretrained(src)("w1 w2")["input_ids"]
    ids = torch.tensor([[4, 9, 33]])
    with torch.no_grad():
        assert torch.equal(_pt(src)(ids).logits, _pt(out)(ids).logits)

    onnx_out = tmp_path / "onnx"  # the ONNX export of such a folder drops it as well
    _export(src, onnx_out, validate=False)
    assert not (onnx_out / "tokenizer.model").exists() and (onnx_out / "tokenizer.json").is_file()


@pytest.mark.parametrize("fn", [export_onnx, export_safetensors])
def test_bad_inputs(fn, tiny_llama_dir, tmp_path):
    src = tiny_llama_dir("dense-mha")
    not_model = tmp_path / "notes"
    not_model.mkdir()
    (not_model / "README.md").write_text("hello")
    with pytest.raises(ModelLoadError, match="config.json"):
        fn(not_model, tmp_path / "o1")

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32)).save_pretrained(gpt2)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        fn(gpt2, tmp_path / "o2")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        fn(src, busy)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="file"):
        fn(src, a_file)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bad_options(tiny_llama_dir, tmp_path):
    src = tiny_llama_dir("dense-mha")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(src, tmp_path / "o", opset=3)
    with pytest.raises(ConfigError, match="atol"):
        export_onnx(src, tmp_path / "o", atol=0)
    with pytest.raises(ConfigError, match="opset 21 is above 20.*--exporter optimum"):
        export_onnx(src, tmp_path / "o", opset=21)
    assert not (tmp_path / "o").exists()


def test_cli_export(tiny_llama_dir, tmp_path):
    from compressor.cli import main

    src = str(tiny_llama_dir("pruned-gqa"))
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx", "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "fp32 parity" in r.output and "hidden_size 64 -> 32" in r.output and "torch exporter" in r.output
    assert json.loads((out / "export_report.json").read_text())["exporter"] == "torch"
    assert "greedy generate via " + ("optimum's ORTModelForCausalLM" if _has_optimum() else "ONNX Runtime") in r.output
    r = CliRunner().invoke(main, ["export", src, "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(main, ["export", src, "--format", "safetensors", "--int8", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "--quantize int8" in r.output and "--int8 is deprecated" in r.output
    r = CliRunner().invoke(main, ["export", src, "--format", "gguf", "--quantize", "int8", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "--quantize int8 does not apply to --format gguf" in r.output
    r = CliRunner().invoke(main, ["export", src, "--format", "onnx", "--quantize", "int8", "--int8", "--out",
                                  str(tmp_path / "o")])
    assert r.exit_code == 2 and "give only --quantize" in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "Error:" in r.output


def test_report_is_valid_json_with_sizes(tiny_llama_dir, tmp_path):
    res = _export(tiny_llama_dir("dense-gqa"), tmp_path / "o", validate=False)
    rep = json.loads((tmp_path / "o" / "export_report.json").read_text())
    assert rep["total_bytes"] == sum(rep["files"].values()) > 0
    assert rep["model"]["num_key_value_heads"] == 2 and rep["task"] == "text-generation-with-past"
    assert np.isfinite(rep["seconds"]) and res.report["opset"] == rep["opset"]


def test_fp64_noise_floor_fallback(tiny_llama_dir, tmp_path):
    """The float64 fallback accepts fp32 rounding noise but not a real mismatch."""
    from exporters.onnx.export import validate_parity

    src = tiny_llama_dir("pruned-gqa")
    _export(src, tmp_path / "o", validate=False)
    onnx_path = tmp_path / "o" / "model.onnx"
    model = _pt(src)
    res = validate_parity(model, onnx_path, atol=1e-12, rtol=0.0, noise_factor=1e6, threads=1)
    assert res["passed"] and res["judged_by"] == "fp64_noise_floor"
    for v in res["per_output"].values():
        assert v["max_abs_diff"] > 1e-12 and np.isfinite(v["max_abs_diff_vs_fp64"])
        assert 0 < v["pt_fp32_error_vs_fp64"] < 1e-5
    with torch.no_grad():  # a different model with the same shapes: a genuine mismatch
        model.model.layers[1].mlp.down_proj.weight.add_(1e-2)
    with pytest.raises(ValidationError, match="float64") as ei:
        validate_parity(model, onnx_path, threads=1)
    assert "decode.logits" in str(ei.value)


def test_export_loaded_model(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    src = tiny_llama_dir("pruned-mha")
    model, tok = _pt(src), AutoTokenizer.from_pretrained(src)
    res = _export(model, tmp_path / "o", tokenizer=tok)
    assert res.report["validation"]["parity"]["passed"] and (tmp_path / "o" / "tokenizer.json").is_file()
    assert model.config.hidden_size == 64, "the in-memory model's config is not touched"
    with pytest.raises(ConfigError, match="float32"):
        export_onnx(model.to(torch.bfloat16), tmp_path / "o2")


def test_sliding_window_model_exports(tmp_path):
    """Mistral with a window shorter than the check sequence: PyTorch's cache keeps only the window."""
    from transformers import MistralConfig, MistralForCausalLM

    from tests.tiny import tiny_tokenizer

    cfg = MistralConfig(vocab_size=200, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=8, max_position_embeddings=128,
                        tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).eval()
    res = _export(model, tmp_path / "o", tokenizer=tiny_tokenizer(200))
    par = res.report["validation"]["parity"]
    assert par["passed"] and par["prompt_len"] + par["decode_steps"] <= 7
    x = torch.tensor([[5, 6, 7]])
    for n in (4, 14):  # within the window, and well past it (the graph's mask applies the window)
        kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": n, "do_sample": False, "pad_token_id": 2,
              "eos_token_id": None}
        assert model.generate(x, **kw)[0].tolist() == _ort_greedy(tmp_path / "o", [5, 6, 7], n)
    ids = torch.randint(3, 200, (1, 13), generator=torch.Generator().manual_seed(0))  # a prefill longer than 8
    with torch.no_grad():
        assert np.abs(model(input_ids=ids).logits.numpy() - _ort_run(tmp_path / "o", ids.numpy())[0]).max() < 1e-4
    if _has_optimum():
        from optimum.onnxruntime import ORTModelForCausalLM

        ort = ORTModelForCausalLM.from_pretrained(tmp_path / "o")
        kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": 4, "do_sample": False, "pad_token_id": 2}
        assert model.generate(x, **kw).tolist() == ort.generate(x, **kw).tolist()


def test_safetensors_export_keeps_the_remote_code(per_layer_folders, tmp_path):
    from compressor.modeling.loading import load_model
    from exporters import export_safetensors

    path, _, merged_logits, _ = per_layer_folders["qwen2-gqa"]
    res = export_safetensors(path, tmp_path / "s")
    assert res.report["remote_code"] == list(REMOTE_CODE_FILES)
    assert all((tmp_path / "s" / f).is_file() for f in REMOTE_CODE_FILES)
    model, _, _ = load_model(tmp_path / "s")
    assert torch.equal(logits_of(model.eval()), merged_logits)


@pytest.fixture(scope="module")
def per_layer_onnx(per_layer_folders, tmp_path_factory):
    """The llama-gqa per-layer folder exported to ONNX (torch exporter, validated): ``(folder, report)``."""
    from exporters import export_onnx

    out = tmp_path_factory.mktemp("pl-onnx") / "o"
    res = export_onnx(per_layer_folders["llama-gqa"][0], out, threads=1, prompts=("w1 w2 w3 w4", "w5"))
    return out, res.report


def test_onnx_export_of_per_layer_model_parity(per_layer_folders, per_layer_onnx):
    """The torch exporter traces the per-layer class itself: the graph holds every layer's real shapes, matches
    PyTorch in plain onnxruntime, and config.json is the stock one with the real widths beside it."""
    import numpy as np
    import onnx
    import onnxruntime

    out, rep = per_layer_onnx
    v = rep["validation"]
    assert rep["exporter"] == "torch"
    assert v["parity"]["passed"] and v["parity"]["max_abs_diff"] < 1e-4 and v["generate"]["passed"]
    assert v["generate"]["all_equal"]
    merged = per_layer_folders["llama-gqa"][3]
    dims = {tuple(i.dims) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    want = {tuple(layer.mlp.down_proj.weight.shape[::-1]) for layer in merged.model.layers}  # MatMul: transposed
    assert len(want) == 3 and want <= dims, "each layer's own MLP width is in the graph"
    sess = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray(PER_LAYER_IDS, np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "position_ids": np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
    got = sess.run(["logits"], feed)[0]
    assert np.abs(got - per_layer_folders["llama-gqa"][2].numpy()).max() < 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg
    assert cfg["lorapress_export"]["per_layer"]["per_layer_intermediate_size"] == [40, 8, 16]
    assert not any((out / f).exists() for f in REMOTE_CODE_FILES)
    from exporters.measure.inputs import count_params, flops_per_token, model_dims

    dims = model_dims(cfg)  # the bench counts every layer's real widths, not the scalars
    assert count_params(dims) == sum(p.numel() for p in merged.parameters())
    linear = sum(m.weight.numel() for m in merged.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(dims, 10)["linear"] == 2 * linear


def test_onnx_export_of_per_layer_model_parity_and_stock_optimum(per_layer_folders, per_layer_onnx):
    """Where optimum is installed (floor-stack job): the torch exporter's per-layer folder loads in stock optimum's
    ORTModelForCausalLM (which sizes its KV cache from the widest layer's config), and the export's generate check
    ran through it."""
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForCausalLM

    out, rep = per_layer_onnx
    assert rep["validation"]["generate"]["runner"] == "optimum" and rep["validation"]["generate"]["passed"]
    ort = ORTModelForCausalLM.from_pretrained(out, use_cache=True)
    ids = torch.tensor(PER_LAYER_IDS)
    got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(got, per_layer_folders["llama-gqa"][2], atol=1e-4)


def test_cli_onnx_export_of_per_layer_model(per_layer_folders, tmp_path):
    """The command (not only the API) exports a per-layer folder and says what its config holds."""
    from compressor.cli import main

    r = CliRunner().invoke(main, ["export", str(per_layer_folders["llama-gqa"][0]), "--format", "onnx", "--out",
                                  str(tmp_path / "o"), "--threads", "1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "per-layer widths" in r.output and (tmp_path / "o" / "model.onnx").is_file()


def test_onnx_refuses_different_kv_heads_per_layer(per_layer_folders, tmp_path):
    from exporters import export_onnx

    with pytest.raises(UnsupportedArchitectureError, match=r"per_layer_num_key_value_heads=\[4, 3, 3\]"):
        export_onnx(per_layer_folders["llama-mha"][0], tmp_path / "o", threads=1)
    assert not (tmp_path / "o").exists()
