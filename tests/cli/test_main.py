"""The CLI stays cheap to start: `compress --help` must not import torch/transformers."""
from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_libraries():
    code = ("import sys, compressor.cli; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'optimum') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, f"heavy imports at CLI start-up: {p.stdout} {p.stderr[-500:]}"


def test_help_lists_all_commands():
    from click.testing import CliRunner

    from compressor.cli import main

    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("prune", "export", "bench", "eval"):
        assert cmd in r.output


def test_every_public_name_resolves():
    import compressor

    for name in compressor.__all__:
        assert getattr(compressor, name) is not None, name
    assert issubclass(compressor.ConfigError, compressor.CompressError)


def test_prune_help_fits_a_screen_with_the_essentials_first():
    """`compress prune --help`: at most 60 lines, the essentials in full, every other option named under its
    section; `--help-all` describes every option; no dates, timings or README pointers in any help text."""
    import re

    from click.testing import CliRunner

    from compressor.cli import main

    short = CliRunner().invoke(main, ["prune", "--help"])
    assert short.exit_code == 0, short.output
    lines = short.output.splitlines()
    assert len(lines) <= 60, len(lines)
    essentials = short.output.split("Essentials:")[1].split("(compress prune --help-all)")[0]
    for flag in ("--ratio FRACTION", "--out", "--data", "--steps", "--device", "--dtype", "--resume", "--config",
                 "--dry-run", "--quiet"):
        assert flag in essentials, flag
    assert "[required, here or in --config]" in " ".join(essentials.split())
    full = CliRunner().invoke(main, ["prune", "--help-all"])
    assert full.exit_code == 0
    cmd = main.get_command(None, "prune")
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden:
            assert p.opts[0] in short.output, p.opts[0]  # named in the short help
            assert p.opts[0] in full.output
    for text in (short.output, full.output):
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b|until 20\d\d|README| s a step", text), text


def test_eval_out_is_a_folder_or_a_json_file_and_takes_a_device(tmp_path):
    """``compress eval --out`` names a folder (``OUT/eval_report.json``, created) like every other command, or a
    ``.json`` file; ``--device`` chooses where the model runs, a bad one is refused before loading it."""
    import json

    from click.testing import CliRunner

    from compressor.cli import main
    from compressor.modeling.save import save_model_folder
    from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

    save_model_folder(tiny_model("llama-mha"), tiny_tokenizer(), tmp_path / "m")
    (tmp_path / "t.txt").write_text(tiny_text(2000))
    base = ["eval", str(tmp_path / "m"), "--wikitext2-file", str(tmp_path / "t.txt"), "--seq-len", "32"]
    r = CliRunner().invoke(main, base + ["--device", "cpu", "--out", str(tmp_path / "reports")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "reports" / "eval_report.json").read_text())["results"]["wikitext2"]["ppl"] > 0
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "one.json")])
    assert r.exit_code == 0 and (tmp_path / "one.json").is_file(), r.output
    r = CliRunner().invoke(main, base + ["--device", "tpu", "--out", str(tmp_path / "r2")])
    assert r.exit_code != 0 and "device 'tpu' is not valid" in r.output and not (tmp_path / "r2").exists()
