"""compressor.modeling.perlayer and remote_code: per-layer widths (issue #12) on tiny models: masked == merged ==
reloaded (our loader, and the folder's remote code in a Python where this project cannot be imported),
transformers' refusal without trust_remote_code, config validation, uniform masks staying stock, and the per-layer
folder of uniform widths written where transformers refuses a stock config (a head count that does not divide
hidden_size). The exporters' side of per-layer folders: tests/exporters/test_export.py and test_gguf.py; the
folders themselves: the ``per_layer_folders`` fixture of tests/conftest.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from compressor.algorithm.groups import discover_groups
from compressor.algorithm.masking import MaskState
from compressor.algorithm.merge import merge_and_slice
from compressor.core.errors import ConfigError, UnsupportedArchitectureError
from compressor.modeling.perlayer import REMOTE_CODE_FILES, per_layer_config
from compressor.modeling.save import save_model_folder
from tests.tiny import (
    PER_LAYER_CASES,
    PER_LAYER_IDS,
    logits_of,
    tiny_bpe_tokenizer,
    tiny_model,
    tiny_text,
    tiny_tokenizer,
)

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


@pytest.fixture(scope="module")
def isolated(per_layer_folders, tmp_path_factory):
    """What a Python without this project sees when loading the folders (one subprocess for all)."""
    work = tmp_path_factory.mktemp("iso")
    script = work / "load.py"
    script.write_text(ISOLATED)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-I", str(script), json.dumps(PER_LAYER_IDS),
                        *(str(f[0]) for f in per_layer_folders.values())],
                       cwd=work, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.split("RESULT=", 1)[1])


@pytest.mark.parametrize("case", PER_LAYER_CASES)
def test_masked_equals_merged_equals_reloaded(case, per_layer_folders):
    from compressor.modeling.loading import load_model

    path, masked, merged_logits, merged = per_layer_folders[case]
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
    assert torch.equal(logits_of(model.eval()), merged_logits)


@pytest.mark.parametrize("case", PER_LAYER_CASES)
def test_remote_code_loads_without_this_project(case, per_layer_folders, isolated):
    path, _, merged_logits, _ = per_layer_folders[case]
    r = isolated[str(path)]
    assert isolated["leaked"] == []
    assert r["module"].startswith("transformers_modules.") and r["module"].endswith(".modeling_lorapress")
    assert torch.allclose(torch.tensor(r["logits"]), merged_logits, atol=1e-6)


def test_without_trust_remote_code_transformers_refuses(per_layer_folders, isolated):
    path = per_layer_folders["llama-gqa"][0]
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


def test_uniform_lists_folder_works_downstream(tmp_path):
    """The layout the merge writes when the installed transformers refuses the stock config of uniform widths
    (test_uniform_head_count_that_does_not_divide_hidden below: a llama head count that does not divide
    hidden_size): a per-layer folder with uniform lists. This project's loader, the safetensors export (remote code
    kept), perplexity and the GGUF export (stock llama.cpp 'llama': the widths are uniform; parity in llama.cpp)
    take it; built by hand where the stock config would do, so every transformers version runs it."""
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
    ref = logits_of(merged)
    src = tmp_path / "src"
    save_model_folder(merged, tiny_bpe_tokenizer(320), src)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["model_type"] == "lorapress_llama" and cfg["per_layer_num_attention_heads"] == [3, 3]
    assert cfg["per_layer_intermediate_size"] == [40, 40] and cfg["num_attention_heads"] == 3
    model, _, _ = load_model(src)
    assert type(model).__module__ == "compressor.modeling.remote_code.modeling_lorapress"
    assert torch.equal(logits_of(model.eval()), ref)
    st = export_safetensors(src, tmp_path / "s")
    assert st.report["remote_code"] == list(REMOTE_CODE_FILES)
    assert torch.equal(logits_of(load_model(tmp_path / "s")[0].eval()), ref)
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(400))
    ppl = evaluate(src, "wikitext2", texts={"wikitext2": text}, seq_len=32, max_windows=2).results["wikitext2"]["ppl"]
    assert 1.0 < ppl < float("inf")
    pytest.importorskip("xllamacpp", reason='xllamacpp not installed (pip install "lorapress[gguf]")')
    g = export_gguf(src, tmp_path / "g", gguf_type="f32")
    assert g.report["gguf"]["architecture"] == "llama"
    lp = g.report["validation"]["logprobs"]
    assert lp["passed"] and lp["max_abs_diff"] < 1e-4 and lp["argmax_agreement"] == 1.0


def _ids(vocab=96, n=2, t=12, seed=1):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _refuses_heads_not_dividing_hidden() -> bool:
    """Whether the installed transformers refuses a LlamaConfig whose head count does not divide hidden_size even
    with an explicit head_dim (transformers >= 5.16)."""
    from transformers import LlamaConfig

    try:
        LlamaConfig(hidden_size=32, num_attention_heads=3, num_key_value_heads=3, head_dim=8)
    except Exception:  # noqa: BLE001 - huggingface_hub's StrictDataclassClassValidationError
        return True
    return False


def test_uniform_head_count_that_does_not_divide_hidden(tmp_path, caplog):
    """3 of 4 heads with hidden 32 (head_dim 8). transformers >= 5.16 refuses that stock LlamaConfig, so the run
    says before it starts that it will write the per-layer remote-code folder (uniform lists), does so, and the
    report records transformers' reason; older transformers keep a stock folder. Either way masked == merged ==
    reloaded (with transformers' own loader and with this project's, which runs no code from the folder)."""
    import json
    import logging

    from transformers import AutoModelForCausalLM

    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop
    from compressor.algorithm.summary import build_report
    from compressor.modeling.loading import load_model
    from compressor.modeling.save import save_model_folder
    from tests.tiny import tiny_tokenizer

    refuses = _refuses_heads_not_dividing_hidden()
    model = tiny_model("llama-mha", hidden_size=32, head_dim=8)
    cfg = PruneConfig(ratio=0.3, head_policy="balanced", steps=4, prune_every=1, seq_len=16, batch_size=2,
                      eval_windows=0, lr=1e-3)
    blocks = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="compressor"):
        loop = PruneLoop(model, cfg, blocks)
    notes = [r.getMessage() for r in caplog.records if "remote-code folder" in r.getMessage()]
    assert loop.widths.final.num_heads == 3 and (loop.stock_config_refused is not None) == refuses
    assert len(notes) == int(refuses)
    if refuses:
        assert "3 attention heads and hidden_size 32" in notes[0] and "divides 32 keeps a stock folder" in notes[0]
    while not loop.done:
        loop.step()
    ids = _ids()
    with torch.no_grad():
        masked = loop.masked_model(input_ids=ids).logits
    merged = loop.finish()
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
    torch.testing.assert_close(ref, masked, rtol=1e-4, atol=1e-5)
    assert (merged.config.num_attention_heads, merged.config.head_dim) == (3, 8)
    report = build_report(loop, merged, model_id="tiny", params_before=1, ppl_before=None, ppl_after=None,
                          wall_time_s=0.0, peak_rss_mb=0.0, ranks_agree=None)
    out = save_model_folder(merged, tiny_tokenizer(), tmp_path / "out", report=report)
    saved = json.loads((out / "config.json").read_text())
    on_disk = json.loads((out / "compression_report.json").read_text())
    if refuses:
        assert type(merged).__name__ == "LorapressLlamaForCausalLM" and saved["model_type"] == "lorapress_llama"
        assert saved["per_layer_num_attention_heads"] == [3, 3] and saved["per_layer_intermediate_size"] == [32, 32]
        assert (out / "configuration_lorapress.py").is_file() and (out / "modeling_lorapress.py").is_file()
        reason = on_disk["stock_config_refused"]
        assert reason == report["stock_config_refused"]
        assert "hidden size (32) is not a multiple of the number of attention heads (3)" in reason
        assert report["widths_after"]["num_attention_heads"] == 3 and "per_layer" not in report["widths_after"]
        reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, attn_implementation="eager")
        assert type(reloaded).__name__ == "LorapressLlamaForCausalLM"
    else:
        assert type(merged) is type(model) and saved["model_type"] == "llama"
        assert "stock_config_refused" not in on_disk and not (out / "modeling_lorapress.py").exists()
        reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    ours, _, _ = load_model(str(out))  # this project's loader: the in-package class, no code from the folder
    assert type(ours).__name__ == type(merged).__name__
    with torch.no_grad():
        for m in (reloaded, ours):
            torch.testing.assert_close(m(input_ids=ids).logits, ref, rtol=0, atol=0)


def test_head_count_without_a_per_layer_fallback_is_refused_before_any_work(tmp_path):
    """Gemma2 has no per-layer class: where transformers refuses its pruned head count (>= 5.16: 3 heads, hidden
    32), prune() refuses before reading the calibration data, with the message that says what to do."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from compressor.algorithm.api import prune
    from compressor.algorithm.config import PruneConfig
    from compressor.core.errors import CalibrationError

    cfg = Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
                       max_position_embeddings=128, attn_implementation="eager")
    model = Gemma2ForCausalLM(cfg).eval()
    run = PruneConfig(ratio=0.3, head_policy="balanced", steps=2, prune_every=1, seq_len=16, eval_windows=0)
    missing = tmp_path / "no-such-calibration.txt"
    if _refuses_heads_not_dividing_hidden():
        with pytest.raises(ConfigError, match="3.*would not load with stock transformers.*keep every attention head"):
            prune(model, run, str(missing))
    else:  # the stock config holds 3 heads: the run goes on to read the (missing) calibration file
        with pytest.raises(CalibrationError):
            prune(model, run, str(missing))
