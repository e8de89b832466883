"""Per-layer widths (issue #12) on tiny models: masked == merged == reloaded (our loader, and the folder's remote
code in a Python where this project cannot be imported), transformers' refusal without trust_remote_code,
config validation, the prune job / CLI, ONNX parity (plain onnxruntime; stock optimum where installed), and GGUF
``deci`` parity in llama.cpp."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from compressor.algorithm.groups import discover_groups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import merge_and_slice
from compressor.core.errors import ConfigError, UnsupportedArchitectureError
from compressor.modeling.perlayer import REMOTE_CODE_FILES, per_layer_config
from compressor.modeling.save import save_model_folder
from tests.tiny import (
    lora_with_random_b,
    random_scores,
    tiny_bpe_tokenizer,
    tiny_job_inputs,
    tiny_model,
    tiny_text,
    tiny_tokenizer,
)

#: tests/tiny.py cases; llama-mha gets different KV heads per layer (MHA: KV heads = heads)
CASES = ("llama-gqa", "llama-mha", "qwen2-gqa", "mistral-mqa")
IDS = [[5, 9, 17, 3, 44, 2, 8, 60, 12, 1], [7, 7, 30, 31, 32, 90, 4, 4, 11, 0]]

#: run in a subprocess with ``-I`` (no PYTHONPATH, no cwd on sys.path) and an import blocker for this project
#: (it is installed editable in the venv): loads each folder with transformers alone and prints JSON
ISOLATED = r'''
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("compressor", "exporters", "calibration", "tests"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForCausalLM
out = {}
for folder in sys.argv[2:]:
    r = {}
    for trust in (False, None):
        try:
            AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust)
            r["refusal_" + str(trust)] = None
        except ValueError as exc:
            r["refusal_" + str(trust)] = str(exc)
    m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
    with torch.no_grad():
        r["logits"] = m(torch.tensor(json.loads(sys.argv[1]))).logits.tolist()
    r["module"] = type(m).__module__
    out[folder] = r
out["leaked"] = sorted(k for k in sys.modules if k.split(".")[0] in ("compressor", "exporters", "calibration"))
print("\nRESULT=" + json.dumps(out))
'''


def _non_uniform(case: str, vocab: int = 96, lora: bool = True, **config):
    """``(masked model, merged model)``: 3 layers; layer 0 dense, layers 1-2 with one query head per KV group
    fewer and 8 / 16 MLP channels; LoRA B non-zero."""
    m = tiny_model(case, layers=3, vocab=vocab, **config)
    groups = discover_groups(m)
    pm = lora_with_random_b(m) if lora else m
    masks = MaskState.full(groups).install(pm, groups)
    lg0 = groups.layers[0]
    per = lg0.heads_per_kv if lg0.gqa else lg0.num_heads
    mask_lowest(masks, random_scores(groups), groups, [per, per - 1, per - 1], [lg0.intermediate_size, 8, 16])
    return pm, masks, groups


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """case -> (saved per-layer folder, masked-model logits, merged-model logits)."""
    out = {}
    for case in CASES:
        pm, masks, groups = _non_uniform(case)
        masked = _logits(pm)
        merged = merge_and_slice(pm, groups, masks).eval()
        path = tmp_path_factory.mktemp(f"pl-{case}")
        save_model_folder(merged, tiny_tokenizer(), path, force=True)
        out[case] = (path, masked, _logits(merged), merged)
    return out


@pytest.fixture(scope="module")
def isolated(folders, tmp_path_factory):
    """What a Python without this project sees when loading the folders (one subprocess for all)."""
    work = tmp_path_factory.mktemp("iso")
    script = work / "load.py"
    script.write_text(ISOLATED)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-I", str(script), json.dumps(IDS), *(str(f[0]) for f in folders.values())],
                       cwd=work, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.split("RESULT=", 1)[1])


@pytest.mark.parametrize("case", CASES)
def test_masked_equals_merged_equals_reloaded(case, folders):
    from compressor.modeling.loading import load_model

    path, masked, merged_logits, merged = folders[case]
    assert torch.allclose(masked, merged_logits, atol=1e-5), (masked - merged_logits).abs().max()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == f"lorapress_{case.split('-')[0]}"
    assert cfg["per_layer_intermediate_size"] == [merged.config.per_layer_intermediate_size[0], 8, 16]
    heads = cfg["per_layer_num_attention_heads"]
    assert heads[0] > heads[1] == heads[2] and cfg["num_attention_heads"] == heads[0]
    kv = cfg["per_layer_num_key_value_heads"]
    assert kv == (heads if case == "llama-mha" else [kv[0]] * 3)
    assert set(cfg["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert all((path / f).is_file() for f in REMOTE_CODE_FILES)
    model, _, _ = load_model(path)  # our loader: in-package classes, no code from the folder, no flag
    assert type(model).__module__ == "compressor.modeling.remote_code.modeling_lorapress"
    assert torch.equal(_logits(model.eval()), merged_logits)


@pytest.mark.parametrize("case", CASES)
def test_remote_code_loads_without_this_project(case, folders, isolated):
    path, _, merged_logits, _ = folders[case]
    r = isolated[str(path)]
    assert isolated["leaked"] == []
    assert r["module"].startswith("transformers_modules.") and r["module"].endswith(".modeling_lorapress")
    assert torch.allclose(torch.tensor(r["logits"]), merged_logits, atol=1e-6)


def test_without_trust_remote_code_transformers_refuses(folders, isolated):
    path = folders["llama-gqa"][0]
    r = isolated[str(path)]
    for key in ("refusal_False", "refusal_None"):  # explicit False, and the default (no TTY: no prompt)
        assert r[key] and "custom code" in r[key] and "trust_remote_code=True" in r[key], key


def test_remote_code_imports_only_torch_and_transformers():
    import ast

    from compressor.modeling.perlayer import _REMOTE_DIR

    for name in REMOTE_CODE_FILES:
        tree = ast.parse((_REMOTE_DIR / name).read_text())
        mods = {n.module.split(".")[0] if n.level == 0 else "." for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert mods <= {"__future__", "typing", "torch", "transformers", "."}, (name, mods)


def test_per_layer_keys_agree_with_sizes():
    from compressor.modeling.remote_code.configuration_lorapress import (
        PER_LAYER_HEADS,
        PER_LAYER_INTERMEDIATE,
        PER_LAYER_KV_HEADS,
    )
    from compressor.modeling.sizes import PER_LAYER_KEYS

    assert PER_LAYER_KEYS == (PER_LAYER_HEADS, PER_LAYER_KV_HEADS, PER_LAYER_INTERMEDIATE)


def test_uniform_masks_stay_stock(tmp_path):
    from tests.tiny import masked_lora

    pm, masks = masked_lora("llama-gqa")
    merged = merge_and_slice(pm, discover_groups(tiny_model("llama-gqa")), masks)
    assert type(merged).__name__ == "LlamaForCausalLM"
    save_model_folder(merged, tiny_tokenizer(), tmp_path / "u")
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg and not any("per_layer" in k for k in cfg)
    assert not any((tmp_path / "u" / f).exists() for f in REMOTE_CODE_FILES)


def test_per_layer_config_errors_name_the_value():
    base = tiny_model("llama-gqa", layers=3).config
    with pytest.raises(ValueError, match=r"list of 3 widths .*\[8, 8\]"):
        per_layer_config(base, [6, 6, 6], [2, 2, 2], [8, 8])
    with pytest.raises(ValueError, match=r"integers >= 1.*\[8, 0, 8\]"):
        per_layer_config(base, [6, 6, 6], [2, 2, 2], [8, 0, 8])
    with pytest.raises(ValueError, match="layer 1 has 5 attention heads, not a multiple of its 2 KV heads"):
        per_layer_config(base, [6, 5, 6], [2, 2, 2], [8, 8, 8])
    gpt2 = type("Cfg", (), {"model_type": "gpt2"})()
    with pytest.raises(UnsupportedArchitectureError, match="model_type 'gpt2'.*llama, mistral, qwen2"):
        per_layer_config(gpt2, [1], [1], [1])


def test_check_writable_refuses_only_architectures_without_a_per_layer_class():
    from compressor.algorithm.api import check_writable
    from compressor.algorithm.config import PruneConfig

    check_writable(PruneConfig(ratio=0.5, widths="adaptive"), "qwen2")
    check_writable(PruneConfig(ratio=0.5), "gemma3")  # uniform: any architecture
    with pytest.raises(ConfigError, match="llama, mistral, qwen2 only, not 'gemma3'"):
        check_writable(PruneConfig(ratio=0.5, skip_layers="0"), "gemma3")
    with pytest.raises(ConfigError, match="model_type 'lorapress_llama'.*pruning it again is not supported"):
        check_writable(PruneConfig(ratio=0.5), "lorapress_llama")


def test_prune_loop_with_skip_layers_and_adaptive_widths_finishes(tmp_path):
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop

    cfg = PruneConfig(ratio=0.3, steps=6, prune_every=2, seq_len=32, batch_size=2, eval_windows=0, lr=1e-3,
                      skip_layers="0", widths="adaptive", channel_multiple=4, min_channels=0.25,
                      criterion="activation")
    loop = PruneLoop(tiny_model("llama-gqa", layers=4), cfg, as_blocks([tiny_text(3000)], tiny_tokenizer(), cfg))
    while not loop.done:
        loop.step()
    loop.masked_model.eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    masked = _logits(loop.masked_model, ids)
    merged = loop.finish()
    assert torch.allclose(masked, _logits(merged, ids), atol=1e-5)
    heads = merged.config.per_layer_num_attention_heads
    assert heads[0] == 6 and len(set(heads[1:])) == 1 and heads[1] < 6
    assert merged.config.per_layer_intermediate_size == [int(m.channels.sum()) for m in loop.masks.layers]


def test_cli_prune_adaptive_writes_a_loadable_folder(tmp_path):
    from compressor.cli import main
    from compressor.modeling.loading import load_model

    src, data = tiny_job_inputs(tmp_path, "qwen2-gqa", layers=3)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["prune", str(src), "--out", str(out), "--data", str(data), "--eval-data", "none",
                                  "--ratio", "0.4", "--widths", "adaptive", "--skip-layers", "0", "--steps", "4",
                                  "--prune-every", "2", "--seq-len", "32", "--batch-size", "2",
                                  "--channel-multiple", "4", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rep = json.loads((out / "compression_report.json").read_text())
    w = rep["widths_after"]
    assert w["per_layer"] is True and len(w["num_attention_heads"]) == 3 and len(w["intermediate_size"]) == 3
    assert w["intermediate_size"][0] == 48 and w["num_attention_heads"][0] == 4 and w["num_attention_heads"][1] == 2
    assert all((out / f).is_file() for f in REMOTE_CODE_FILES) and (out / "pruning_plan.safetensors").is_file()
    model, tok, _ = load_model(out)
    assert model.config.model_type == "lorapress_qwen2"
    assert list(model.config.per_layer_intermediate_size) == w["intermediate_size"]
    assert torch.isfinite(_logits(model.eval())).all()


def test_safetensors_export_keeps_the_remote_code(folders, tmp_path):
    from compressor.modeling.loading import load_model
    from exporters import export_safetensors

    path, _, merged_logits, _ = folders["qwen2-gqa"]
    res = export_safetensors(path, tmp_path / "s")
    assert res.report["remote_code"] == list(REMOTE_CODE_FILES)
    assert all((tmp_path / "s" / f).is_file() for f in REMOTE_CODE_FILES)
    model, _, _ = load_model(tmp_path / "s")
    assert torch.equal(_logits(model.eval()), merged_logits)


# ---- ONNX ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def per_layer_onnx(folders, tmp_path_factory):
    """The llama-gqa per-layer folder exported to ONNX (torch exporter, validated): ``(folder, report)``."""
    from exporters import export_onnx

    out = tmp_path_factory.mktemp("pl-onnx") / "o"
    res = export_onnx(folders["llama-gqa"][0], out, threads=1, prompts=("w1 w2 w3 w4", "w5"))
    return out, res.report


def test_onnx_export_of_per_layer_model_parity(folders, per_layer_onnx):
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
    merged = folders["llama-gqa"][3]
    dims = {tuple(i.dims) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    want = {tuple(layer.mlp.down_proj.weight.shape[::-1]) for layer in merged.model.layers}  # MatMul: transposed
    assert len(want) == 3 and want <= dims, "each layer's own MLP width is in the graph"
    sess = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray(IDS, np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "position_ids": np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
    got = sess.run(["logits"], feed)[0]
    assert np.abs(got - folders["llama-gqa"][2].numpy()).max() < 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg
    assert cfg["lorapress_export"]["per_layer"]["per_layer_intermediate_size"] == [40, 8, 16]
    assert not any((out / f).exists() for f in REMOTE_CODE_FILES)
    from exporters.bench_inputs import count_params, flops_per_token, model_dims

    dims = model_dims(cfg)  # the bench counts every layer's real widths, not the scalars
    assert count_params(dims) == sum(p.numel() for p in merged.parameters())
    linear = sum(m.weight.numel() for m in merged.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(dims, 10)["linear"] == 2 * linear


def test_onnx_export_of_per_layer_model_parity_and_stock_optimum(folders, per_layer_onnx):
    """Where optimum is installed (floor-stack job): the torch exporter's per-layer folder loads in stock optimum's
    ORTModelForCausalLM (which sizes its KV cache from the widest layer's config), and the export's generate check
    ran through it."""
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForCausalLM

    out, rep = per_layer_onnx
    assert rep["validation"]["generate"]["runner"] == "optimum" and rep["validation"]["generate"]["passed"]
    ort = ORTModelForCausalLM.from_pretrained(out, use_cache=True)
    ids = torch.tensor(IDS)
    got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(got, folders["llama-gqa"][2], atol=1e-4)


def test_cli_onnx_export_of_per_layer_model(folders, tmp_path):
    """The command (not only the API) exports a per-layer folder and says what its config holds."""
    from compressor.cli import main

    r = CliRunner().invoke(main, ["export", str(folders["llama-gqa"][0]), "--format", "onnx", "--out",
                                  str(tmp_path / "o"), "--threads", "1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "per-layer widths" in r.output and (tmp_path / "o" / "model.onnx").is_file()


def test_onnx_refuses_different_kv_heads_per_layer(folders, tmp_path):
    from exporters import export_onnx

    with pytest.raises(UnsupportedArchitectureError, match=r"per_layer_num_key_value_heads=\[4, 3, 3\]"):
        export_onnx(folders["llama-mha"][0], tmp_path / "o", threads=1)
    assert not (tmp_path / "o").exists()


# ---- GGUF deci -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["llama-gqa", "llama-mha", "qwen2-gqa"])
def test_gguf_deci_parity_in_llamacpp(case, tmp_path):
    pytest.importorskip("xllamacpp", reason='xllamacpp not installed (pip install "lorapress[gguf]")')
    from gguf import GGUFReader

    from exporters import export_gguf

    pm, masks, groups = _non_uniform(case, vocab=320, lora=False, initializer_range=0.1, bos_token_id=1,
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
    from exporters.bench_inputs import count_params
    from exporters.gguf_bench import gguf_dims

    dims, _ = gguf_dims(tmp_path / "g" / "model.gguf")
    assert count_params(dims) == sum(p.numel() for p in merged.parameters())


def test_uniform_lists_folder_works_downstream(tmp_path):
    """The layout the merge writes when the installed transformers refuses the stock config of uniform widths
    (tests/test_prune_core.py: a llama head count that does not divide hidden_size): a per-layer folder with uniform
    lists. This project's loader, the safetensors export (remote code kept), perplexity and the GGUF export (stock
    llama.cpp 'llama': the widths are uniform; parity in llama.cpp) take it; built by hand where the stock config
    would do, so every transformers version runs it."""
    from compressor.evaluation import evaluate
    from compressor.modeling.loading import load_model
    from compressor.modeling.perlayer import to_per_layer
    from exporters import export_gguf, export_safetensors

    m = tiny_model("llama-mha", vocab=320, hidden_size=32, head_dim=8, initializer_range=0.1, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0)
    groups = discover_groups(m)
    masks = MaskState.full(groups)
    for lm in masks.layers:
        lm.heads[1] = False
        lm.channels[:8] = False
    merged = merge_and_slice(m, groups, masks).eval()  # 3 heads, hidden 32: per-layer on transformers >= 5.16
    if type(merged).__name__ == "LlamaForCausalLM":
        merged = to_per_layer(merged, [3, 3], [3, 3], [40, 40])
    ref = _logits(merged)
    src = tmp_path / "src"
    save_model_folder(merged, tiny_bpe_tokenizer(320), src)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["model_type"] == "lorapress_llama" and cfg["per_layer_num_attention_heads"] == [3, 3]
    assert cfg["per_layer_intermediate_size"] == [40, 40] and cfg["num_attention_heads"] == 3
    model, _, _ = load_model(src)
    assert type(model).__module__ == "compressor.modeling.remote_code.modeling_lorapress"
    assert torch.equal(_logits(model.eval()), ref)
    st = export_safetensors(src, tmp_path / "s")
    assert st.report["remote_code"] == list(REMOTE_CODE_FILES)
    assert torch.equal(_logits(load_model(tmp_path / "s")[0].eval()), ref)
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(400))
    ppl = evaluate(src, "wikitext2", texts={"wikitext2": text}, seq_len=32, max_windows=2).results["wikitext2"]["ppl"]
    assert 1.0 < ppl < float("inf")
    pytest.importorskip("xllamacpp", reason='xllamacpp not installed (pip install "lorapress[gguf]")')
    g = export_gguf(src, tmp_path / "g", gguf_type="f32")
    assert g.report["gguf"]["architecture"] == "llama"
    lp = g.report["validation"]["logprobs"]
    assert lp["passed"] and lp["max_abs_diff"] < 1e-4 and lp["argmax_agreement"] == 1.0
