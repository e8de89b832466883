"""compressor.modeling.save: a saved folder both transformers 4.57 and 5 load (the tokenizer class, the legacy
rope keys transformers 4 reads)."""
from __future__ import annotations

import pytest


def test_a_saved_tokenizer_names_a_class_transformers_4_and_5_both_load(tmp_path):
    import json

    from transformers import AutoTokenizer

    from compressor.modeling.save import save_tokenizer
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    rep = save_tokenizer(tok, tmp_path)
    assert rep["reload_ok"]
    cls = json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert cls != "TokenizersBackend"  # transformers 4.57 has no such class
    assert AutoTokenizer.from_pretrained(tmp_path)("w1 w2").input_ids == tok("w1 w2").input_ids


@pytest.mark.parametrize("params, legacy", [
    ({"rope_type": "default", "rope_theta": 100000.0}, {"rope_theta": 100000.0, "rope_scaling": None}),
    ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0},
     {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}}),
    ({"full_attention": {"rope_type": "default", "rope_theta": 1e6},
      "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
     {"rope_theta": 1e6, "rope_scaling": None, "rope_local_base_freq": 1e4}),
])
def test_legacy_rope_keys_from_rope_parameters(params, legacy):
    from compressor.modeling.save import legacy_rope_keys

    assert legacy_rope_keys({"rope_parameters": params}) == legacy
    assert legacy_rope_keys({"rope_parameters": params, "rope_theta": 1.0}) == {}  # already there: untouched


def test_a_saved_folder_carries_the_rope_theta_transformers_4_reads(tmp_path):
    """transformers 5 writes only rope_parameters; 4.x would fall back to rope_theta 10000 without the legacy key.
    The folder must also reload identically on the stack that wrote it."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from compressor.modeling.save import save_model_folder
    from tests.tiny import tiny_model, tiny_tokenizer

    model = tiny_model(rope_theta=12345.0)  # both stacks accept the legacy keyword
    save_model_folder(model, tiny_tokenizer(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["rope_theta"] == 12345.0
    ids = torch.tensor([[1, 5, 9, 13]])
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
