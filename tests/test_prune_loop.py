"""The progressive LoRAPrune loop, the CLI and its outputs, on tiny random models."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compressor.algorithm.api import prune
from compressor.algorithm.config import PruneConfig
from compressor.cli import main
from tests.tiny import tiny_model, tiny_text, tiny_tokenizer


def _cfg(**kw):
    base = dict(ratio=0.5, steps=12, prune_every=2, seq_len=32, batch_size=2, eval_windows=2, eval_seq_len=64, lr=1e-3)
    base.update(kw)
    return PruneConfig(**base)


@pytest.mark.parametrize("case", ["llama-mha", "llama-gqa", "qwen2-gqa", "mistral-mqa"])
@pytest.mark.parametrize("criterion", ["lora", "taylor", "magnitude", "random"])
def test_prune_runs_and_reaches_ratio(case, criterion):
    m = tiny_model(case)
    tok = tiny_tokenizer()
    text = tiny_text(3000)
    res = prune(m, _cfg(criterion=criterion), [text], tokenizer=tok, eval_text=text)
    r = res.report
    assert r["ratio_asked"] == 0.5 and abs(r["ratio_achieved"] - 0.5) < 0.2
    assert r["params_total_after"] < r["params_total_before"]
    assert r["history"][-1]["sparsity"] == pytest.approx(r["ratio_achieved"], abs=1e-6)
    sp = [h["sparsity"] for h in r["history"]]
    assert sp == sorted(sp) and sp[0] < sp[-1], "progressive schedule: sparsity rises monotonically"
    assert r["perplexity_before"]["ppl"] > 0 and r["perplexity_after"]["ppl"] > 0
    assert not any("lora" in n for n, _ in res.model.named_parameters())
    assert res.model.config.num_attention_heads == r["widths_after"]["num_attention_heads"]


def test_lora_criterion_leaves_base_without_grad():
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.loop import wrap_lora
    from compressor.algorithm.scoring import model_scores

    m = tiny_model("llama-gqa")
    groups = discover_groups(m)
    pm = wrap_lora(m, _cfg())
    ids = torch.randint(0, 96, (2, 16))
    pm(input_ids=ids, labels=ids).loss.backward()
    base = [p for n, p in pm.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in base), "W0 must never get a gradient"
    scores = model_scores(pm, groups, get_criterion("lora"))
    assert all(torch.isfinite(s.heads).all() and s.channels.abs().sum() > 0 for s in scores)
    pm_t = wrap_lora(tiny_model("llama-gqa"), _cfg(criterion="taylor"))
    assert any(p.requires_grad for n, p in pm_t.named_parameters() if "base_layer.weight" in n)


def test_prune_is_deterministic():
    text = tiny_text(2000)
    a = prune(tiny_model("llama-gqa"), _cfg(steps=6), [text], tokenizer=tiny_tokenizer())
    b = prune(tiny_model("llama-gqa"), _cfg(steps=6), [text], tokenizer=tiny_tokenizer())
    assert a.report["kept"] == b.report["kept"]
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("criterion", ["lora", "taylor"])
def test_gradient_checkpointing_gives_the_same_result(criterion):
    text = tiny_text(2000)
    a = prune(tiny_model("llama-gqa"), _cfg(steps=6, criterion=criterion), [text], tokenizer=tiny_tokenizer())
    m = tiny_model("llama-gqa")
    b = prune(m, _cfg(steps=6, criterion=criterion, gradient_checkpointing=True), [text], tokenizer=tiny_tokenizer())
    assert a.report["kept"] == b.report["kept"]
    assert [h["loss"] for h in a.report["history"]] == pytest.approx([h["loss"] for h in b.report["history"]], rel=1e-5)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    on = getattr(b.model, "is_activation_checkpointing", None)  # transformers 5's name; 4.x: is_gradient_checkpointing
    assert not (b.model.is_gradient_checkpointing if on is None else on), "the returned model is an ordinary one"


def test_distill_teacher_is_the_dense_model():
    from compressor.algorithm.api import distill_loss
    from tests.tiny import masked_lora

    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        dense = tiny_model("llama-gqa")(input_ids=ids).logits
    pm, masks = masked_lora("llama-gqa")
    with torch.no_grad():
        student = pm(input_ids=ids).logits
        with pm.disable_adapter(), masks.bypassed():
            teacher = pm(input_ids=ids).logits
        again = pm(input_ids=ids).logits
    torch.testing.assert_close(teacher, dense)  # LoRA off, masks off: the original model
    torch.testing.assert_close(again, student)  # both come back on after the block
    assert (student - dense).abs().max() > 1e-3
    assert distill_loss(dense, dense).abs() < 1e-6 and distill_loss(student, dense) > 0


def test_prune_with_distillation_logs_both_losses():
    text = tiny_text(2000)
    res = prune(tiny_model("llama-gqa"), _cfg(steps=4, distill=0.5), [text], tokenizer=tiny_tokenizer())
    h = res.report["history"]
    assert all("lm_loss" in r and r["loss"] != r["lm_loss"] for r in h)
    assert res.report["config"]["distill"] == 0.5


def test_separate_mode_prunes_once():
    res = prune(tiny_model("llama-mha"), _cfg(joint=False), [tiny_text(2000)], tokenizer=tiny_tokenizer())
    ev = res.report["schedule"]["events"]
    assert len(ev) == 1 and ev[0]["step"] == 2 and res.report["mode"] == "separate"


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "tiny"
    m = tiny_model("llama-gqa")
    m.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    (tmp_path / "calib.txt").write_text(tiny_text(3000))
    return d


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_prune_writes_stock_model(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    r = _run(["prune", str(model_dir), "--ratio", "0.5", "--data", str(tmp_path / "calib.txt"), "--out", str(out),
              "--steps", "6", "--prune-every", "2", "--seq-len", "32", "--eval-data", str(tmp_path / "calib.txt"),
              "--eval-windows", "2", "--eval-seq-len", "64", "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert rep["perplexity_after"]["ppl"] > 0 and rep["ratio_achieved"] > 0.3
    assert (out / "pruning_plan.safetensors").is_file() and (out / "model.safetensors").is_file()
    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.num_attention_heads == rep["widths_after"]["num_attention_heads"]
    ids = torch.tensor([[1, 5, 6, 7]])
    assert m.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 7)
    assert not list(tmp_path.glob(".out.tmp-*")), "no temporary folder left behind"
    assert not (tmp_path / "out.ckpt").exists(), "checkpoints are removed after success"
    # refuses to overwrite without --force
    r2 = _run(["prune", str(model_dir), "--ratio", "0.5", "--data", str(tmp_path / "calib.txt"), "--out", str(out),
               "--steps", "6", "--prune-every", "2", "--seq-len", "32", "--quiet"])
    assert r2.exit_code == 2 and "--force" in r2.output
    # re-prune at another ratio from the saved plan
    out3 = tmp_path / "out3"
    r3 = _run(["prune", str(model_dir), "--ratio", "0.3", "--data", str(tmp_path / "calib.txt"), "--out", str(out3),
               "--steps", "4", "--prune-every", "2", "--seq-len", "32", "--from-plan", str(out), "--eval-data", "none",
               "--quiet"])
    assert r3.exit_code == 0, r3.output
    rep3 = json.loads((out3 / "compression_report.json").read_text())
    assert rep3["mode"] == "from-plan" and rep3["plan_source"] == str(out) and rep3["schedule"]["events"] == []


def test_cli_yaml_config(model_dir, tmp_path):
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text("ratio: 0.4\nsteps: 4\nprune_every: 2\nseq_len: 32\neval_windows: 0\n")
    out = tmp_path / "o"
    r = _run(["prune", str(model_dir), "--config", str(cfgf), "--steps", "6", "--data", str(tmp_path / "calib.txt"),
              "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert rep["config"]["ratio"] == 0.4 and rep["config"]["steps"] == 6  # CLI wins over the file


def test_prune_with_8bit_base_merges_to_plain_float(tmp_path):
    """LoRAPrune-8bit: W0 in bitsandbytes int8 (CPU), scores from LoRA only, merge dequantizes."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from compressor.modeling.loading import load_model

    src = tmp_path / "src"
    tiny_model("llama-gqa").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    m8, tok, _ = load_model(str(src), base_bits=8)
    assert type(m8.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    text = tiny_text(2000)
    res = prune(m8, _cfg(steps=6, base_bits=8, criterion="lora", compensate=False), [text], tokenizer=tok, eval_text=text)
    assert type(res.model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert res.model.dtype == torch.float32 and not hasattr(res.model.config, "quantization_config")
    assert res.report["perplexity_after"]["ppl"] > 0
    res.model.save_pretrained(tmp_path / "out")
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=ids).logits, res.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_taylor_refuses_8bit_base():
    from compressor.core.errors import ConfigError

    with pytest.raises(ConfigError, match="taylor"):
        prune(tiny_model("llama-mha"), _cfg(criterion="taylor", base_bits=8, compensate=False), torch.randint(0, 96, (4, 32)))


def test_default_compensation_refuses_8bit_base_naming_the_fix():
    from compressor.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--no-compensate"):
        _cfg(base_bits=8)
