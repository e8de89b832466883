"""Benchmark scripts refuse a bad ``--name`` before any work, with a message naming the value."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,extra", [("step_speed.py", []), ("quality_table.py", ["--row", "a=b.json"])])
@pytest.mark.parametrize("bad", ["../x", "sub\\x", ".hidden", ""])
def test_a_result_name_with_a_folder_or_leading_dot_is_refused(script, extra, bad):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra, "--name", bad],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert f"--name {bad!r}: give a plain file stem" in r.stderr
    assert "benchmarks/results/" in r.stderr
