"""compressor.modeling.loading: the frozen projections loaded straight in bfloat16 (the rest float32), the dtype
combinations refused, and --base-bits 8 without bitsandbytes naming the extra."""
from __future__ import annotations

import sys

import pytest
import torch

from compressor.core.errors import ConfigError, DependencyMissingError
from compressor.modeling.held import held_dtype, hold_projections
from compressor.modeling.loading import load_model
from tests.tiny import tiny_folder


@pytest.mark.parametrize("case", ["llama-mha", "qwen2-gqa"])
def test_load_holds_projections_in_bf16_and_the_rest_in_float32(tmp_path, case):
    """Loaded straight in the held dtypes (no float32 copy of the projections); under autocast the logits are
    bit-identical to the float32 model's, because autocast rounds a float32 projection to bfloat16 anyway."""
    ref, d = tiny_folder(tmp_path, case, tie_word_embeddings=True)
    held, _, _ = load_model(str(d), linear_dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in held.named_parameters()}
    assert all(v == torch.bfloat16 for n, v in dtypes.items() if "_proj." in n)
    assert all(v == torch.float32 for n, v in dtypes.items() if "_proj." not in n)
    assert held.lm_head.weight is held.model.embed_tokens.weight
    assert held_dtype(held) == torch.bfloat16 and held_dtype(ref) is None
    assert held.lorapress_source_dtype == "float32"
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ref(input_ids=x).logits, held(input_ids=x).logits)
    assert hold_projections(ref, torch.bfloat16) > 0  # the in-place route gives the same model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ref(input_ids=x).logits, held(input_ids=x).logits)


def test_linear_dtype_needs_a_float32_run(tmp_path):
    _, d = tiny_folder(tmp_path)
    with pytest.raises(ConfigError, match="linear_dtype 'bfloat16' with dtype 'bfloat16'"):
        load_model(str(d), dtype="bfloat16", linear_dtype="bfloat16")


def test_base_bits_without_bitsandbytes_names_the_quant_extra(monkeypatch, tmp_path):
    from compressor.modeling.loading import load_model
    from tests.tiny import tiny_model, tiny_tokenizer

    tiny_model().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(DependencyMissingError, match=r'--base-bits 8 .*pip install "lorapress\[quant\]"'):
        load_model(str(tmp_path), base_bits=8)
