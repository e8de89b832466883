"""Groups, criteria, masks, merge: parity properties on tiny random models."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.criteria import ProjectionTensors, available_criteria, get_criterion
from compressor.algorithm.groups import decoder_layers, discover_groups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import merge_and_slice
from compressor.algorithm.schedule import achieved_ratio, solve_widths
from compressor.algorithm.scoring import model_scores
from compressor.core.errors import ConfigError, GroupDiscoveryError
from tests.tiny import CASES, tiny_model

CASE_NAMES = list(CASES)


def _ids(vocab=96, n=2, t=12, seed=1):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _peft(model, seed=0):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])
    from compressor.core.quiet import quiet_peft_wrap

    with quiet_peft_wrap():
        pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B non-zero so merge parity means something
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


@pytest.mark.parametrize("case", CASE_NAMES)
def test_groups_match_config(case):
    m = tiny_model(case)
    g = discover_groups(m)
    _, heads, kv, hd, hidden, inter = CASES[case]
    assert g.num_layers == 2 and g.hidden_size == hidden
    for lg in g.layers:
        assert (lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) == (heads, kv, hd, inter)


def test_groups_error_names_layer():
    m = tiny_model("llama-mha")
    layer = decoder_layers(m)[1]
    layer.mlp.up_proj = torch.nn.Linear(32, 40, bias=False)
    with pytest.raises(GroupDiscoveryError, match="layer 1 up_proj"):
        discover_groups(m)


def test_lora_criterion_matches_reference():
    g = torch.Generator().manual_seed(0)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    gA, gB = torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    s = 2.0
    got = get_criterion("lora")(ProjectionTensors(W, lora_A=A, lora_B=B, grad_A=gA, grad_B=gB, scaling=s))
    # independent element-wise reference of Eq. 10
    ref = torch.zeros(6, 5)
    for i in range(6):
        for j in range(5):
            gest = sum(gB[i, k] * A[k, j] + B[i, k] * gA[k, j] - gB[i, k] * gA[k, j] for k in range(2))
            ref[i, j] = (gest * (W[i, j] + s * sum(B[i, k] * A[k, j] for k in range(2)))) ** 2
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_lora_criterion_never_needs_weight_grad():
    crit = get_criterion("lora")
    assert crit.needs_lora_grads and not crit.needs_weight_grad
    assert get_criterion("taylor").needs_weight_grad


def test_unknown_criterion_lists_valid():
    with pytest.raises(ConfigError, match="activation, lora, magnitude, random, residual, taylor"):
        get_criterion("nope")
    assert available_criteria() == ["activation", "lora", "magnitude", "random", "residual", "taylor"]


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_masked_equals_sliced_equals_merged(case, ratio):
    model = tiny_model(case)
    groups = discover_groups(model)
    pm = _peft(model)
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


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_ratio_out_of_range(ratio):
    g = discover_groups(tiny_model("llama-gqa"))
    with pytest.raises(ConfigError, match="open interval"):
        solve_widths(g.layers[0], g.hidden_size, ratio)


def test_ratio_leaving_no_heads():
    g = discover_groups(tiny_model("llama-gqa"))
    with pytest.raises(ConfigError, match="no attention heads"):
        solve_widths(g.layers[0], g.hidden_size, 0.99)


def test_widths_balanced_on_smollm_shapes():
    from compressor.algorithm.groups import LayerGroups

    lg = LayerGroups(0, 9, 3, 64, 1536)
    w = solve_widths(lg, 576, 0.5, head_policy="balanced")
    assert (w.num_heads, w.num_kv_heads) == (3, 3) and w.intermediate_size % 8 == 0
    assert abs(achieved_ratio(lg, 576, w) - 0.5) < 0.01
    w2 = solve_widths(lg, 576, 0.2, head_policy="balanced")
    assert abs(achieved_ratio(lg, 576, w2) - 0.2) < 0.01


def test_widths_mlp_first_keeps_heads_until_mlp_floor():
    from compressor.algorithm.groups import LayerGroups

    lg = LayerGroups(0, 9, 3, 64, 1536)
    w = solve_widths(lg, 576, 0.5)  # default policy
    assert (w.num_heads, w.num_kv_heads) == (9, 3) and w.intermediate_size == 512
    assert abs(achieved_ratio(lg, 576, w) - 0.5) < 0.01
    w6 = solve_widths(lg, 576, 0.6)  # the MLP alone cannot absorb 60 % above its floor: a third of the heads go
    assert w6.num_heads == 6 and w6.intermediate_size >= 0.25 * 1536
    assert abs(achieved_ratio(lg, 576, w6) - 0.6) < 0.01
    w7 = solve_widths(lg, 576, 0.7)  # floor unreachable: as few heads as allowed, the rest from the MLP
    assert w7.num_heads == 3 and abs(achieved_ratio(lg, 576, w7) - 0.7) < 0.01
