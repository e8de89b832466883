"""compressor.core.lock: one run per output (re-entrant in one process, refused to a second one naming the
holder), stale temporaries of killed runs removed by the next holder, a live run's temporaries left alone."""
from __future__ import annotations

from pathlib import Path

import pytest

from compressor.core.errors import OutputExistsError, OutputLockedError
from compressor.core.io import atomic_output_dir
from compressor.core.lock import lock_path, output_lock, recover_temporaries


def _folder(p: Path, text: str) -> Path:
    p.mkdir(parents=True)
    (p / "f.txt").write_text(text)
    return p


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    out = tmp_path / "x"
    with output_lock(out):
        with output_lock(out), atomic_output_dir(out) as tmp:
            (tmp / "f").write_text("1")
        assert lock_path(out).exists()
    assert not lock_path(out).exists() and (out / "f").read_text() == "1"


def test_locks_output_finds_out_positional_or_keyword(tmp_path, holder):
    from compressor.core.lock import locks_output

    @locks_output
    def write(model, out, force=False):
        return out

    h = holder(tmp_path / "k")
    for call in (lambda: write("m", tmp_path / "k"), lambda: write(model="m", out=tmp_path / "k")):
        with pytest.raises(OutputLockedError, match=f"pid {h.p.pid}"):
            call()
    assert write("m", out=tmp_path / "free") == tmp_path / "free"


def test_stale_temporaries_are_removed_by_the_next_holder(tmp_path):
    out = _folder(tmp_path / "out", "current")
    tmp = _folder(tmp_path / ".out.tmp-dead1", "half-written")
    old = _folder(tmp_path / ".out.old-dead2", "previous")
    other = _folder(tmp_path / ".outer.tmp-x", "another output's")
    with output_lock(out) as done:
        pass
    assert not tmp.exists() and not old.exists() and other.exists()
    assert (out / "f.txt").read_text() == "current" and len(done) == 2


def test_several_previous_versions_are_left_for_the_user(tmp_path):
    _folder(tmp_path / ".out.old-a", "a")
    _folder(tmp_path / ".out.old-b", "b")
    with pytest.raises(OutputExistsError, match=r"'\.out\.old-a', '\.out\.old-b'.*rename the one to keep"):
        with output_lock(tmp_path / "out"):
            pass
    assert len(list(tmp_path.glob(".out.old-*"))) == 2


def test_a_live_runs_temporary_is_never_removed(tmp_path, holder):
    out = tmp_path / "out"
    live = tmp_path / ".out.tmp-live"
    h = holder(out, live)
    with pytest.raises(OutputLockedError):
        with output_lock(out):
            pass
    assert live.is_dir(), "the live run's temporary folder is untouched"
    h.kill()
    assert recover_temporaries(out) and not live.exists()  # its owner is gone now
