"""Resumable pruning: a real subprocess killed with SIGKILL or interrupted with SIGINT resumes to the same result.

Every run prunes the tiny llama-gqa model saved in a temporary folder; the uninterrupted reference run is
shared by the tests of this module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor.cli import main
from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

STEPS = 60  # long enough to be caught mid-run (checkpoint every 2 steps), short enough to keep the module fast
STOP_AT = 10  # stop the run once a checkpoint of at least this step exists
DEADLINE_S = 90


def _args(work: Path, out: str, *extra: str, steps: int = STEPS) -> list[str]:
    return ["prune", str(work / "model"), "--ratio", "0.5", "--steps", str(steps), "--prune-every", "2",
            "--save-every", "2", "--seq-len", "32", "--data", str(work / "calib.txt"), "--eval-data", "none",
            "--out", str(work / out), "--quiet", *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _run_cli(work: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compressor.cli", *_args(work, out, *extra)], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)


def _ckpt_step(ckpt: Path) -> int | None:
    """Step of the checkpoint in ``ckpt`` (state.json is replaced atomically, so it is always complete)."""
    try:
        return json.loads((ckpt / "last" / "state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _interrupt(work: Path, out: str, sig: int) -> tuple[int, int, str]:
    """Start a run, send ``sig`` once a checkpoint of step >= STOP_AT exists; return (returncode, step seen, stderr)."""
    err_path = work / f"{out}.stderr"
    with open(err_path, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "compressor.cli", *_args(work, out)], cwd=work, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=err)
        seen = None
        try:
            t_end = time.monotonic() + DEADLINE_S
            while p.poll() is None and time.monotonic() < t_end:
                s = _ckpt_step(work / f"{out}.ckpt")
                if s is not None and s >= STOP_AT:
                    seen = s
                    p.send_signal(sig)
                    break
                time.sleep(0.01)
            rc = p.wait(timeout=DEADLINE_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    stderr = err_path.read_text()
    assert seen is not None, f"the run ended (rc={p.returncode}) before a checkpoint of step {STOP_AT} appeared:\n{stderr}"
    return rc, seen, stderr


def _assert_same_result(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ra = json.loads((a / "compression_report.json").read_text())
    rb = json.loads((b / "compression_report.json").read_text())
    assert ra["kept"] == rb["kept"], "the resumed run kept other heads/channels"
    assert [h["step"] for h in rb["history"]] == list(range(1, STEPS + 1))
    assert [h["loss"] for h in ra["history"]] == pytest.approx([h["loss"] for h in rb["history"]], abs=1e-5)
    assert ra["schedule"]["events"] == rb["schedule"]["events"]
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-5, k


def _assert_no_partial_output(work: Path, out: str) -> None:
    o = work / out
    assert not o.exists() or (o.is_dir() and not any(o.iterdir())), f"half-written output {o}: {list(o.iterdir())}"
    assert not list(work.glob(f".{out}.tmp-*")), "temporary output folder left behind"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Tiny model folder + calibration text + the uninterrupted reference run (OUT_A)."""
    w = tmp_path_factory.mktemp("resume")
    tiny_model("llama-gqa").save_pretrained(w / "model")
    tiny_tokenizer().save_pretrained(w / "model")
    (w / "calib.txt").write_text(tiny_text(3000))
    r = _run_cli(w, "A")
    assert r.returncode == 0, r.stderr
    assert not (w / "A.ckpt").exists(), "the checkpoint is removed after success"
    return w


@pytest.mark.parametrize("name,sig,want_rc", [("B", signal.SIGKILL, -signal.SIGKILL), ("C", signal.SIGINT, 130)],
                         ids=["kill-9", "ctrl-c"])
def test_interrupt_mid_run_then_resume_matches_uninterrupted(work, name, sig, want_rc):
    """SIGKILL of a real subprocess (or Ctrl-C, which finishes the step and checkpoints, exit 130), then
    the same command plus --resume gives the same masks and weights as the uninterrupted run A."""
    rc, seen, stderr = _interrupt(work, name, sig)
    assert rc == want_rc, stderr
    if sig == signal.SIGINT:
        assert "--resume" in stderr and "Traceback" not in stderr
    step = _ckpt_step(work / f"{name}.ckpt")
    assert step is not None and seen <= step < STEPS, "interrupted mid-run with a checkpoint on disk"
    _assert_no_partial_output(work, name)

    r = _run_cli(work, name)  # the same command without --resume must not silently discard the checkpoint
    assert r.returncode == 2 and "--resume" in r.stderr and "--force" in r.stderr and f"step {step}" in r.stderr, r.stderr
    assert _ckpt_step(work / f"{name}.ckpt") == step

    r = _run_cli(work, name, "--resume")
    assert r.returncode == 0, r.stderr
    _assert_same_result(work / "A", work / name)
    # the report says it was resumed, and its step time covers both processes' steps
    ra = json.loads((work / "A" / "compression_report.json").read_text())
    rb = json.loads((work / name / "compression_report.json").read_text())
    assert ra["resumed_from_step"] is None and rb["resumed_from_step"] == step
    assert rb["step_time_total_s"] == pytest.approx(sum(h["time_s"] for h in rb["history"]), abs=0.02)
    assert not list(work.glob(f".{name}.tmp-*")) and not (work / f"{name}.ckpt").exists()


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_resume_without_checkpoint_names_the_folder(work, tmp_path):
    out = tmp_path / "never"
    r = _invoke(["prune", str(work / "model"), "--ratio", "0.5", "--data", str(work / "calib.txt"), "--out", str(out),
                 "--resume", "--quiet"])
    assert r.exit_code in (1, 2)
    assert r.output.startswith("Error: ") and str(out) + ".ckpt" in r.output and "--resume" in r.output
    assert "Traceback" not in r.output
    assert not out.exists() and not Path(str(out) + ".ckpt").exists()


def test_resume_refuses_other_config_then_resumes_same(work, tmp_path, monkeypatch):
    """A failed final save (disk full) keeps the checkpoint; --resume with another ratio is refused
    (run id), with the same options it finishes."""
    import errno

    import compressor.modeling.save

    out = tmp_path / "D"
    base = ["prune", str(work / "model"), "--steps", "4", "--prune-every", "2", "--save-every", "2", "--seq-len", "32",
            "--data", str(work / "calib.txt"), "--eval-data", "none", "--out", str(out), "--quiet"]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compressor.modeling.save, "save_model_folder", full)
    r = _invoke(base + ["--ratio", "0.5"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "No space left" in r.output
    assert _ckpt_step(Path(str(out) + ".ckpt")) == 4, "the last good checkpoint is kept when saving fails"
    monkeypatch.undo()

    r = _invoke(base + ["--ratio", "0.3", "--resume"])
    assert r.exit_code == 1 and "Error: " in r.output and "run id" in r.output, r.output
    assert not out.exists()

    monkeypatch.chdir(work)  # the model path spelled another way is still the same run
    r = _invoke(["prune", "./model/"] + base[2:] + ["--ratio", "0.5", "--resume"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert rep["ratio_asked"] == 0.5 and [h["step"] for h in rep["history"]] == [1, 2, 3, 4]

    # --resume into a folder that already holds the finished model: refused, nothing touched
    r = _invoke(base + ["--ratio", "0.5", "--resume"])
    assert r.exit_code == 2 and "--force" in r.output


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies mid-way leaves the previous checkpoint readable."""
    import torch

    import compressor.job.checkpoint as ck

    ck.save_checkpoint(tmp_path, {"step": 2, "run_id": "r", "w": torch.ones(3)})
    import safetensors.torch

    def dies(tensors, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, {"step": 4, "run_id": "r", "w": torch.zeros(3)})
    monkeypatch.undo()
    st = ck.load_checkpoint(tmp_path)
    assert st["step"] == 2 and torch.equal(st["w"], torch.ones(3))
    ck.save_checkpoint(tmp_path, {"step": 6, "run_id": "r", "w": torch.full((3,), 6.0)})
    assert ck.load_checkpoint(tmp_path)["step"] == 6
    assert len(list((tmp_path / "last").glob("tensors-*.safetensors"))) == 1, "superseded tensor files are removed"


def test_non_finite_loss_stops_names_step_and_keeps_checkpoint(work, tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    real = modeling_llama.LlamaModel.forward
    calls = {"n": 0}

    def nan_from_third_step(self, *a, **k):  # the decoder, so both the stock and the chunked loss see it
        out = real(self, *a, **k)
        if self.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 3:
                out.last_hidden_state = out.last_hidden_state * float("nan")
        return out

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", nan_from_third_step)
    out = tmp_path / "E"
    r = _invoke(["prune", str(work / "model"), "--ratio", "0.5", "--steps", "6", "--prune-every", "2", "--save-every",
                 "2", "--seq-len", "32", "--data", str(work / "calib.txt"), "--eval-data", "none", "--out", str(out),
                 "--quiet"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output, r.output
    assert "nan" in r.output and "step 3" in r.output and str(out) + ".ckpt" in r.output
    assert _ckpt_step(Path(str(out) + ".ckpt")) == 2, "the last good checkpoint is kept"
    assert not out.exists() and not list(tmp_path.glob(".E.tmp-*"))


def test_force_discards_an_old_checkpoint(work, tmp_path):
    import compressor.job.checkpoint as ck

    out = tmp_path / "F"
    ck.save_checkpoint(Path(str(out) + ".ckpt"), {"step": 3, "run_id": "old", "w": torch.ones(2)})
    args = ["prune", str(work / "model"), "--steps", "4", "--prune-every", "2", "--seq-len", "32", "--ratio", "0.5",
            "--data", str(work / "calib.txt"), "--eval-data", "none", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "interrupted run (step 3)" in r.output and not out.exists()
    r = CliRunner().invoke(main, args + ["--force"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "compression_report.json").read_text())
    assert [h["step"] for h in rep["history"]] == [1, 2, 3, 4] and not Path(str(out) + ".ckpt").exists()
