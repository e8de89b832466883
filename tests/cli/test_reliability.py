"""Reliability under real conditions (issue #16), through the commands: one run per output, a killed run's
previous output restored, disk faults, corrupt state, untrusted model folders (docs/guarantees.md).

Every prune here is a 6-step run of the tiny llama-gqa model; the uninterrupted reference run is shared. The lock
and the atomic writes themselves: tests/core/test_lock.py and test_io.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compressor.cli import main
from compressor.core.errors import OutputLockedError
from compressor.core.lock import lock_path
from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def _prune_args(w: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", str(w / "model"), "--ratio", "0.5", "--steps", str(STEPS), "--prune-every", "2", "--save-every",
            "2", "--seq-len", "32", "--data", str(w / "calib.txt"), "--eval-data", "none", "--out", str(out),
            "--quiet", *extra]


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def _clean_error(r, code: int) -> str:
    assert r.exit_code == code, f"exit code {r.exit_code} != {code}:\n{r.output}\n{r.exception!r}"
    assert "Error: " in r.output and "Traceback" not in r.output, r.output
    return r.output


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-5, k


def _ckpt_step(ckpt: Path) -> int | None:
    try:
        return json.loads((ckpt / "last" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def _snapshot(p: Path):
    return sorted((str(f.relative_to(p)), f.read_bytes()) for f in p.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """Tiny model folder, calibration text, the uninterrupted reference run ``ref`` and a checkpoint of an
    interrupted run (step 6, its final save failed) in ``ckpt-src``."""
    w = tmp_path_factory.mktemp("reliability")
    tiny_model("llama-gqa").save_pretrained(w / "model")
    tiny_tokenizer().save_pretrained(w / "model")
    (w / "calib.txt").write_text(tiny_text(3000))
    r = _invoke(_prune_args(w, w / "ref"))
    assert r.exit_code == 0, r.output
    return w


def _interrupted_checkpoint(w: Path, out: Path, monkeypatch) -> Path:
    """A checkpoint of step 6 at ``OUT.ckpt`` (the run's final save fails with a plain OSError)."""
    import compressor.modeling.save

    def fails(*a, **k):
        raise OSError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(compressor.modeling.save, "save_model_folder", fails)
        r = _invoke(_prune_args(w, out))
    assert r.exit_code == 1, r.output
    ckpt = Path(str(out) + ".ckpt")
    assert _ckpt_step(ckpt) == STEPS
    return ckpt


# ---------------------------------------------------------------------------------------------- one run per output
def test_second_run_on_a_held_output_fails_at_once_naming_the_holder(w, tmp_path, holder):
    out = tmp_path / "out"
    h = holder(out)
    info = json.loads(lock_path(out).read_text())
    assert info["pid"] == h.p.pid and info["host"] and info["started"]

    t0 = time.monotonic()
    msg = _clean_error(_invoke(_prune_args(w, out)), 2)
    assert time.monotonic() - t0 < 20, "fails at once, before loading the model"
    assert "being written by another run" in msg and f"pid {h.p.pid}" in msg and info["started"] in msg, msg
    assert str(lock_path(out)) in msg
    assert not out.exists() and not Path(str(out) + ".ckpt").exists()

    # --resume while the first run is alive: refused the same way (a valid checkpoint is there)
    import compressor.job.checkpoint as ck

    ck.save_checkpoint(Path(str(out) + ".ckpt"), {"step": 2, "run_id": "x", "w": torch.ones(2)})
    msg = _clean_error(_invoke(_prune_args(w, out, "--resume")), 2)
    assert f"pid {h.p.pid}" in msg
    assert _ckpt_step(Path(str(out) + ".ckpt")) == 2, "the live run's checkpoint is untouched"

    msg = _clean_error(_invoke(["export", str(w / "model"), "--format", "safetensors", "--out", str(out)]), 2)
    assert f"pid {h.p.pid}" in msg

    h.kill()  # kill -9 releases the lock: the file left behind is no obstacle
    assert lock_path(out).exists()
    r = _invoke(_prune_args(w, out, "--force"))
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists(), "the lock file is removed when the run ends"
    _assert_same_weights(w / "ref", out)


def test_api_takes_the_lock_too(w, tmp_path, holder):
    from compressor import PruneConfig
    from compressor.job import prune_job

    out = tmp_path / "api"
    cfg = PruneConfig(ratio=0.5, steps=STEPS, prune_every=2, save_every=2, seq_len=32)
    h = holder(out)
    with pytest.raises(OutputLockedError, match=f"pid {h.p.pid}"):
        prune_job(str(w / "model"), out, cfg, data=str(w / "calib.txt"), eval_data="none")
    h.kill()

    ckpt = tmp_path / "api.ckpt"  # a job whose checkpoint folder a live run holds (prune() in memory takes no lock)
    h = holder(ckpt)
    with pytest.raises(OutputLockedError, match=f"pid {h.p.pid}"):
        prune_job(str(w / "model"), tmp_path / "api2", cfg, data=str(w / "calib.txt"), eval_data="none",
                  checkpoint_dir=ckpt)
    assert not ckpt.exists() and not (tmp_path / "api2").exists()


def test_resume_on_a_live_run_without_a_checkpoint_names_the_run(w, tmp_path, holder):
    """A second `--resume` on the output of a live run that has not checkpointed yet: refused as held by that run,
    not as "no checkpoint" (the lock is taken before anything reads the earlier run's files)."""
    out = tmp_path / "live"
    h = holder(out)
    msg = _clean_error(_invoke(_prune_args(w, out, "--resume")), 2)
    assert f"pid {h.p.pid}" in msg and "no checkpoint" not in msg, msg
    h.kill()
    msg = _clean_error(_invoke(_prune_args(w, out, "--resume")), 1)  # nobody holds it: the checkpoint policy speaks
    assert "no checkpoint" in msg, msg


# ---------------------------------------------------------------------------------------------- a killed run's output
def _folder(p: Path, text: str) -> Path:
    p.mkdir(parents=True)
    (p / "f.txt").write_text(text)
    return p


def test_killed_between_the_two_renames_restores_the_previous_version(w, tmp_path, caplog):
    """A real process killed (SIGKILL) right after moving the old output aside: the next run restores it."""
    out = _folder(tmp_path / "out", "previous")
    script = f"""
import os, signal
from pathlib import Path
import compressor.core.io as io
real = os.replace
def replace(a, b):
    real(a, b)
    if ".old-" in str(b):
        os.kill(os.getpid(), signal.SIGKILL)
io.os.replace = replace
with io.atomic_output_dir({str(out)!r}, force=True) as tmp:
    (Path(tmp) / "f.txt").write_text("new")
"""
    p = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".out.old-*"))) == 1 and list(tmp_path.glob(".out.tmp-*"))

    r = _invoke(["export", str(w / "model"), "--format", "safetensors", "--out", str(out)])
    msg = _clean_error(r, 2)  # the restored version is not replaced without --force
    assert "not empty" in msg and "--force" in msg, msg
    assert any(f"restored {str(out)!r} from '.out.old-" in r.message for r in caplog.records), caplog.text
    assert (out / "f.txt").read_text() == "previous"
    assert not list(tmp_path.glob(".out.*")), "temporaries and the lock file are gone"


# ---------------------------------------------------------------------------------------------- disk faults
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint_and_resumes(w, tmp_path, monkeypatch):
    import safetensors.torch as st

    import compressor.job.checkpoint as ck

    out = tmp_path / "D"
    ckpt = Path(str(out) + ".ckpt")
    real_save_file = st.save_file
    n = {"calls": 0}

    def save_file(tensors, filename, metadata=None):  # the 2nd checkpoint (step 4) hits a full disk mid-file
        if Path(filename).name.startswith("tensors-"):
            n["calls"] += 1
            if n["calls"] == 2:
                data = st.save(tensors, metadata=metadata)
                Path(filename).write_bytes(data[: len(data) // 3])
                raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)
    msg = _clean_error(_invoke(_prune_args(w, out)), 1)
    monkeypatch.undo()
    assert "No space left on device" in msg and "checkpoint of step 4" in msg and str(ckpt) in msg, msg
    assert "needs about" in msg and "free on that disk" in msg and "previous checkpoint (step 2) is intact" in msg
    assert "--resume" in msg
    assert len([ln for ln in msg.strip().splitlines() if ln.strip()]) == 1, msg
    assert ck.load_checkpoint(ckpt)["step"] == 2, "nothing lost: the previous checkpoint loads"
    assert len(list((ckpt / "last").glob("tensors-*"))) == 1, "the partial file is removed"
    assert not out.exists()

    r = _invoke(_prune_args(w, out, "--resume"))
    assert r.exit_code == 0, r.output
    _assert_same_weights(w / "ref", out)


def test_disk_full_while_writing_the_output_keeps_the_old_output_and_the_checkpoint(w, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    out = tmp_path / "O"
    shutil.copytree(w / "ref", out)  # a previous finished output, replaced with --force
    (out / "marker.txt").write_text("previous output")
    before = _snapshot(out)

    def full(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(mu, "safe_save_file", full)
    msg = _clean_error(_invoke(_prune_args(w, out, "--force")), 1)
    monkeypatch.undo()
    assert "No space left on device" in msg and f"output folder {str(out)!r}" in msg and "is unchanged" in msg, msg
    assert "needs about" in msg and "KiB" in msg and f"checkpoint of step {STEPS} is kept" in msg
    assert _snapshot(out) == before, "the previous output is intact"
    assert not list(tmp_path.glob(".O.tmp-*")) and not list(tmp_path.glob(".O.lock"))

    r = _invoke(_prune_args(w, out, "--resume", "--force"))
    assert r.exit_code == 0, r.output
    _assert_same_weights(w / "ref", out)
    assert not (out / "marker.txt").exists()


def test_disk_full_while_exporting_keeps_the_old_export(w, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    out = tmp_path / "E"
    r = _invoke(["export", str(w / "model"), "--format", "safetensors", "--out", str(out)])
    assert r.exit_code == 0, r.output
    before = _snapshot(out)

    def full(tensors, filename, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(mu, "safe_save_file", full)
    msg = _clean_error(_invoke(["export", str(w / "model"), "--format", "safetensors", "--out", str(out), "--force"]), 1)
    assert "No space left on device" in msg and str(out) in msg and "is unchanged" in msg and "free on that disk" in msg
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------------------- corrupt state
def _no_model_load(monkeypatch):
    import compressor.modeling.loading

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the bad state was detected")

    monkeypatch.setattr(compressor.modeling.loading, "load_model", boom)


def _rewrite_tensors(ckpt: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    doc = json.loads((ckpt / "last" / "state.json").read_text())
    f = ckpt / "last" / doc["tensors"]
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f))


def _trunc_tensors(ckpt: Path) -> None:
    doc = json.loads((ckpt / "last" / "state.json").read_text())
    f = ckpt / "last" / doc["tensors"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _edit_state(ckpt: Path, **changes) -> None:
    doc = json.loads((ckpt / "last" / "state.json").read_text())
    doc.update(changes)
    (ckpt / "last" / "state.json").write_text(json.dumps(doc))


def _lora_key(ckpt: Path) -> str:
    doc = json.loads((ckpt / "last" / "state.json").read_text())
    return next(k for k in json.dumps(doc["state"]).split('"') if k.startswith("s.lora.") and "lora_A" in k)


CORRUPTIONS = {
    # id: (edit, needles, model loaded before it is found)
    "state-json-truncated": (lambda c: (c / "last" / "state.json").write_text((c / "last" / "state.json").read_text()[:200]),
                             ["state.json", "not readable JSON"], False),
    "state-json-not-object": (lambda c: (c / "last" / "state.json").write_text("[1, 2]"), ["state.json", "holds a list"],
                              False),
    "step-edited-to-text": (lambda c: _edit_state(c, step="ten"), ["state.json", "step 'ten'", "integer >= 0"], False),
    "tensor-file-path-edited": (lambda c: _edit_state(c, tensors="../../model/model.safetensors"),
                                ["names the tensor file", "file name inside"], False),
    "tensor-file-missing": (lambda c: _edit_state(c, tensors="tensors-gone.safetensors"),
                            ["'tensors-gone.safetensors'", "missing"], False),
    "tensors-truncated": (_trunc_tensors, ["tensors-", "corrupt", "truncated"], False),
    "tensor-removed": (lambda c: _rewrite_tensors(c, lambda t: t.pop(_lora_key(c))), ["lack 1 tensor", "lora_A"], False),
    "tensor-shape-edited": (lambda c: _rewrite_tensors(c, lambda t: t.__setitem__(_lora_key(c), torch.zeros(3, 3))),
                            ["does not fit this run's model", "size"], True),
    "step-edited-to-another-number": (lambda c: _edit_state(c, step=2), ["inconsistent", "step 2", "6 history"], True),
}


@pytest.fixture(scope="module")
def ckpt_src(w, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        return _interrupted_checkpoint(w, tmp_path_factory.mktemp("src") / "S", mp)
    finally:
        mp.undo()


@pytest.mark.parametrize("case", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_corrupt_checkpoint_is_a_clear_error_and_force_starts_over(w, ckpt_src, tmp_path, monkeypatch, case):
    edit, needles, loaded = CORRUPTIONS[case]
    out = tmp_path / "C"
    ckpt = Path(str(out) + ".ckpt")
    shutil.copytree(ckpt_src, ckpt)
    if case == "step-edited-to-another-number":  # keep the state's own step consistent with the header's edit
        doc = json.loads((ckpt / "last" / "state.json").read_text())
        doc["state"]["__dict__"] = [[k, 2 if k == "step" else v] for k, v in doc["state"]["__dict__"]]
        (ckpt / "last" / "state.json").write_text(json.dumps(doc))
    edit(ckpt)
    with monkeypatch.context() as m:
        if not loaded:
            _no_model_load(m)
        msg = _clean_error(_invoke(_prune_args(w, out, "--resume")), 1)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in:\n{msg}"
    assert str(ckpt) in msg and "--force" in msg
    assert not out.exists()
    if case == "tensors-truncated":  # one start-over is enough to show --force works after any of them
        r = _invoke(_prune_args(w, out, "--force"))
        assert r.exit_code == 0, r.output
        _assert_same_weights(w / "ref", out)


def _write_plan(folder: Path, layers: int, heads: int, channels: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    t = {}
    for i in range(layers):
        t[f"layer{i}.heads"] = torch.rand(heads, dtype=torch.float64)
        t[f"layer{i}.channels"] = torch.rand(channels, dtype=torch.float64)
        t[f"layer{i}.kept_heads"] = torch.ones(heads, dtype=torch.bool)
        t[f"layer{i}.kept_channels"] = torch.ones(channels, dtype=torch.bool)
    save_file(t, str(folder / "pruning_plan.safetensors"), metadata={"num_layers": str(layers)})


def test_plan_from_another_model_is_refused_before_work(w, tmp_path, monkeypatch):
    _write_plan(tmp_path / "other", 2, 4, 48)  # llama-mha sizes; the model is llama-gqa (6 heads, 40 channels)
    _no_model_load(monkeypatch)
    msg = _clean_error(_invoke(_prune_args(w, tmp_path / "out", "--from-plan", str(tmp_path / "other"))), 2)
    assert "pruning_plan.safetensors" in msg and "2 layers x 4 heads x 48 MLP channels" in msg and "2 x 6 x 40" in msg

    plan = tmp_path / "other" / "pruning_plan.safetensors"
    plan.write_bytes(plan.read_bytes()[:100])
    msg = _clean_error(_invoke(_prune_args(w, tmp_path / "out", "--from-plan", str(tmp_path / "other"))), 2)
    assert str(plan) in msg and "corrupt" in msg
    assert not (tmp_path / "out").exists()


def test_model_folder_with_wrong_or_missing_tensors(w, tmp_path):
    from safetensors.torch import load_file, save_file

    wrong = tmp_path / "wrong"
    shutil.copytree(w / "model", wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (wrong / "config.json").write_text(json.dumps(cfg))
    msg = _clean_error(_invoke(_prune_args(w, tmp_path / "o1")[:1] + [str(wrong)] + _prune_args(w, tmp_path / "o1")[2:]), 2)
    hidden = cfg["hidden_size"]
    assert "'model.safetensors'" in msg and f"[40, {hidden}]" in msg and f"[64, {hidden}]" in msg and "mlp" in msg, msg

    missing = tmp_path / "missing"
    shutil.copytree(w / "model", missing)
    t = load_file(str(missing / "model.safetensors"))
    t.pop("model.layers.1.mlp.up_proj.weight")
    save_file(t, str(missing / "model.safetensors"), metadata={"format": "pt"})
    msg = _clean_error(_invoke(["export", str(missing), "--format", "safetensors", "--out", str(tmp_path / "o2")]), 2)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "model.safetensors" in msg and "incomplete" in msg, msg
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ---------------------------------------------------------------------------------------------- untrusted folders
@pytest.fixture
def remote_code_folder(w, tmp_path) -> Path:
    """A llama folder whose config.json maps AutoModelForCausalLM to its own mod.py, which leaves a marker."""
    f = tmp_path / "remote"
    shutil.copytree(w / "model", f)
    cfg = json.loads((f / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "mod.MyLlama"}
    (f / "config.json").write_text(json.dumps(cfg))
    (f / "mod.py").write_text(f"open({str(tmp_path / 'EXECUTED')!r}, 'w').write('yes')\n"
                              "from transformers import LlamaForCausalLM as MyLlama\n")
    return f


@pytest.mark.parametrize("cmd", ["prune", "export", "eval"])
def test_folder_with_auto_map_is_refused_without_the_flag(w, tmp_path, remote_code_folder, cmd):
    argv = {"prune": _prune_args(w, tmp_path / "o")[:1] + [str(remote_code_folder)] + _prune_args(w, tmp_path / "o")[2:],
            "export": ["export", str(remote_code_folder), "--format", "safetensors", "--out", str(tmp_path / "o")],
            "eval": ["eval", str(remote_code_folder), "--out", str(tmp_path / "o.json")]}[cmd]
    msg = _clean_error(_invoke(argv), 2)
    assert "config.json has an auto_map" in msg and "mod.MyLlama" in msg and "--trust-remote-code" in msg, msg
    assert "delete auto_map" in msg and "'llama'" in msg
    assert not (tmp_path / "EXECUTED").exists() and not (tmp_path / "o").exists()


def test_tokenizer_auto_map_is_refused_too(w, tmp_path):
    from compressor.core.errors import ModelLoadError
    from compressor.modeling.loading import resolve_model

    f = tmp_path / "tok"
    shutil.copytree(w / "model", f)
    tc = json.loads((f / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["tok.MyTok", None]}
    (f / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ModelLoadError, match="tokenizer_config.json has an auto_map.*--trust-remote-code"):
        resolve_model(f)
    assert resolve_model(f, trust_remote_code=True).kind == "folder"


def test_trust_remote_code_flag_reaches_transformers(w, remote_code_folder, monkeypatch):
    """With the flag the folder is accepted and transformers is told to trust it; without it, told not to."""
    import transformers

    from compressor.modeling.loading import load_model

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.append(k.get("trust_remote_code"))
        k["trust_remote_code"] = False  # load the stock class: the test checks the plumbing, not the code
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(remote_code_folder, trust_remote_code=True)
    load_model(w / "model")
    assert seen == [True, False]


def test_pickle_stays_refused_by_default_in_eval(w, tmp_path):
    f = tmp_path / "pkl"
    shutil.copytree(w / "model", f)
    (f / "model.safetensors").unlink()
    torch.save(tiny_model("llama-gqa").state_dict(), f / "pytorch_model.bin")
    msg = _clean_error(_invoke(["eval", str(f), "--out", str(tmp_path / "e.json")]), 2)
    assert "pickle" in msg and "--allow-pickle" in msg
