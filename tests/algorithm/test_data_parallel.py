"""`accelerate launch --num_processes 2` runs the same prune data-parallel: both ranks mask the same groups."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.tiny import tiny_model, tiny_text, tiny_tokenizer


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
                    reason="accelerate launcher not installed")
def test_two_process_data_parallel_masks_identical(tmp_path):
    src = tmp_path / "model"
    tiny_model("llama-gqa").save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    (tmp_path / "calib.txt").write_text(tiny_text(3000))
    out = tmp_path / "out"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(launcher):
        launcher = shutil.which("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "compressor.cli", "prune", str(src), "--ratio", "0.5", "--steps", "6",
           "--prune-every", "2", "--seq-len", "32", "--batch-size", "2", "--data", str(tmp_path / "calib.txt"),
           "--eval-data", "none", "--out", str(out), "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((out / "compression_report.json").read_text())
    assert rep["world_size"] == 2
    assert rep["masks_identical_across_ranks"] is True
    assert rep["ratio_achieved"] > 0.3
