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
