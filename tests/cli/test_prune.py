"""`compress prune`: a stock model folder with its plan and report, --force and --from-plan, a YAML config the
options override, every PruneConfig field as an option with its help, --dry-run, adaptive widths."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compressor.algorithm.config import PruneConfig
from compressor.cli import main
from compressor.modeling.perlayer import REMOTE_CODE_FILES
from tests.tiny import logits_of, tiny_folder, tiny_job_inputs, tiny_model, tiny_text, tiny_tokenizer


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


def test_every_config_field_is_a_cli_option_with_its_help():
    from click.testing import CliRunner

    from compressor.algorithm.config import cli_fields
    from compressor.cli import main

    out = CliRunner().invoke(main, ["prune", "--help-all"], terminal_width=200).output
    for f in cli_fields():
        assert "--" + f.name.replace("_", "-") in out, f.name
        assert f.metadata["help"].split()[0] in out


def test_cli_new_options_reach_the_config(tmp_path):
    import click

    from compressor.commands.prune import config_from_cli, prune_cmd

    ctx = prune_cmd.make_context("prune", ["--ratio", "0.4", "--out", str(tmp_path / "o"), "--schedule", "cubic",
                                           "--aggregate", "official", "--prune-start", "0.1", "--base-bits", "8",
                                           "--no-gradient-checkpointing", "--recipe", "paper"])
    opts = {k: v for k, v in ctx.params.items() if k in {f.name for f in __import__("dataclasses").fields(PruneConfig)}}
    cfg = config_from_cli(ctx, opts, separate=False, config_file=None, recipe="paper")
    assert (cfg.ratio, cfg.schedule, cfg.aggregate, cfg.prune_start, cfg.base_bits) == (0.4, "cubic", "official", 0.1, 8)
    assert cfg.gradient_checkpointing is False and cfg.save_every == 25 and cfg.criterion == "lora"
    assert isinstance(ctx, click.Context)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    from compressor.cli import main

    _, d = tiny_folder(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["prune", str(d), "--ratio", "0.5", "--out", str(out), "--dry-run",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "predicted memory on cpu" in r.output and "<- peak" in r.output and "--gradient-checkpointing" in r.output
    assert not out.exists()


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
    assert torch.isfinite(logits_of(model.eval())).all()


def test_compensation_statistics_show_progress_unless_quiet(tmp_path):
    """The statistics collection before the first mask update (an hour at a 1.5B model's width on 2 cores) says what
    it does and how far it is, in tenths; --quiet silences it."""
    src, data = tiny_job_inputs(tmp_path)
    base = ["prune", str(src), "--ratio", "0.5", "--steps", "4", "--prune-every", "2", "--batch-size", "2",
            "--seq-len", "32", "--eval-data", "none", "--data", str(data), "--device", "cpu"]

    def text(r) -> str:
        try:
            return r.output + r.stderr
        except ValueError:  # click < 8.2 mixes stderr into output
            return r.output

    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in text(r).splitlines() if ln.startswith("Compensation statistics:")]
    assert "sequences of 32 tokens through the model" in lines[0]
    n = int(lines[0].split(": ")[1].split()[0])
    assert lines[-1].startswith(f"Compensation statistics: {n}/{n} sequences")
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 0 and "Compensation statistics" not in text(r)
