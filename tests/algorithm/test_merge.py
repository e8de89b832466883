"""compressor.algorithm.merge: masked == sliced == merged logits, the merged folder reloads identically in stock
transformers, and the layer-wise merge frees each replaced projection as it goes."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.criteria import get_criterion
from compressor.algorithm.groups import decoder_layers, discover_groups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import merge_and_slice
from compressor.algorithm.schedule import achieved_ratio, solve_widths
from compressor.algorithm.scoring import model_scores
from tests.tiny import CASES, peft_random_lora, tiny_model

CASE_NAMES = list(CASES)


def _ids(vocab=96, n=2, t=12, seed=1):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_masked_equals_sliced_equals_merged(case, ratio):
    model = tiny_model(case)
    groups = discover_groups(model)
    pm = peft_random_lora(model)
    ids = _ids()
    # the masked peft model scores with the magnitude criterion and masks the lowest groups
    crit = get_criterion("magnitude")
    scores = model_scores(pm, groups, crit)
    w = solve_widths(groups.layers[0], groups.hidden_size, ratio)
    masks = MaskState.full(groups).install(pm, groups)
    mask_lowest(masks, scores, groups, w.heads_per_kv, w.intermediate_size)
    with torch.no_grad():
        masked_logits = pm(input_ids=ids).logits
        pm.base_model.disable_adapter_layers()
        base_masked = pm(input_ids=ids).logits
        pm.base_model.enable_adapter_layers()
    assert not torch.allclose(masked_logits, base_masked, atol=1e-4), "LoRA must matter for the parity check"
    merged = merge_and_slice(pm, groups, masks)
    assert type(merged).__name__ == type(model).__name__
    assert not any("lora" in n for n, _ in merged.named_parameters())
    cfg = merged.config
    assert cfg.num_attention_heads == w.num_heads and cfg.intermediate_size == w.intermediate_size
    assert cfg.num_key_value_heads == w.num_kv_heads
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, masked_logits, rtol=1e-4, atol=1e-5)
    got = achieved_ratio(groups.layers[0], groups.hidden_size, w)
    assert abs(got - ratio) < 0.2


@pytest.mark.parametrize("case", CASE_NAMES)
def test_save_and_stock_reload_identical(case, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(case)
    groups = discover_groups(model)
    masks = MaskState.full(groups)
    for lm in masks.layers:
        lm.heads[1] = False if not groups.layers[0].gqa else lm.heads[1]
        lm.channels[3] = False
    if groups.layers[0].gqa:
        per = groups.layers[0].heads_per_kv
        for lm in masks.layers:
            for g in range(groups.layers[0].num_kv_heads):
                lm.heads[g * per] = False
    merged = merge_and_slice(model, groups, masks)
    merged.save_pretrained(tmp_path)
    re = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path)  # default (sdpa) attention
    ids = _ids()
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        torch.testing.assert_close(re(input_ids=ids).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(stock(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)


def test_merge_frees_each_replaced_projection():
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.merge import merge_and_slice
    from tests.tiny import masked_lora

    pm, masks = masked_lora("llama-mha")
    groups = discover_groups(pm, verify=False)
    old = [layer.self_attn.o_proj.base_layer.weight for layer in decoder_layers(pm)]
    merged = merge_and_slice(pm, groups, masks)
    assert all(w.numel() == 0 for w in old)  # freed as the merge went, not all at the end
    assert discover_groups(merged).num_layers == groups.num_layers


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_base_merge_equals_dequantize_then_merge(tmp_path, bits):
    """A LoRA model on an 8-bit (LLM.int8) or 4-bit (NF4) base merges to exactly what merging the dequantized base
    gives: the same weights bit for bit, and a plain float model."""
    pytest.importorskip("bitsandbytes")
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.masking import MaskState, mask_lowest
    from compressor.algorithm.merge import merge_and_slice
    from compressor.modeling.adapters import base_weight
    from compressor.modeling.loading import load_model
    from compressor.modeling.save import save_model_folder
    from tests.tiny import peft_random_lora, random_scores, tiny_model, tiny_tokenizer

    save_model_folder(tiny_model("llama-gqa"), tiny_tokenizer(), tmp_path / "src")
    quant, _, _ = load_model(str(tmp_path / "src"), base_bits=bits)
    dense, _, _ = load_model(str(tmp_path / "src"))
    with torch.no_grad():  # the float reference holds the dequantized W0
        mods = dict(dense.named_modules())
        for name, mq in quant.named_modules():
            if type(mq).__name__ in ("Linear8bitLt", "Linear4bit"):
                mods[name].weight.copy_(base_weight(mq))
    groups = discover_groups(dense)
    pq, pd = peft_random_lora(quant, seed=1), peft_random_lora(dense, seed=1)
    merged = {}
    for key, pm in (("quant", pq), ("dense", pd)):
        masks = MaskState.full(groups).install(pm, groups)
        lg0 = groups.layers[0]
        mask_lowest(masks, random_scores(groups), groups, max(1, lg0.heads_per_kv - 1), lg0.intermediate_size // 2)
        merged[key] = merge_and_slice(pm, groups, masks, dtype=torch.float32)
    a, b = merged["quant"].state_dict(), merged["dense"].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "quantized-base merge == dequantize-then-merge"
    assert all(type(m).__name__ not in ("Linear8bitLt", "Linear4bit") for m in merged["quant"].modules())
    assert not hasattr(merged["quant"].config, "quantization_config")
