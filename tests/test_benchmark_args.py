"""Benchmark scripts refuse a bad ``--name`` before any work, with a message naming the value; the default-budget
table reports a resumed run's step time."""
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


def test_default_budget_table_reports_a_resumed_runs_step_time():
    """A resumed run's wall_time_s covers its last process only; the table adds the steps' own time and flags it,
    also for reports written before they recorded resumed_from_step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import default_budget as db
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    hist = [{"step": i + 1, "time_s": 10.0} for i in range(4)]
    assert db._step_time({"history": hist}) == 40.0
    assert db._resumed_from({"history": hist, "wall_time_s": 45.0}) is None  # one process: steps < wall
    assert db._resumed_from({"history": hist, "wall_time_s": 25.0}) == -1  # an older report, resumed
    assert db._resumed_from({"history": hist, "wall_time_s": 25.0, "resumed_from_step": 2}) == 2
    assert db._resumed_from({"history": hist, "wall_time_s": 45.0, "resumed_from_step": None}) is None
