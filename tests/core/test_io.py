"""compressor.core.io: atomic writes under disk faults (a full disk, an I/O error on the final rename) leave the
previous version in place and nothing else behind."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from compressor.core.errors import DiskWriteError
from compressor.core.io import atomic_output_dir, atomic_write_text


def _folder(p: Path, text: str) -> Path:
    p.mkdir(parents=True)
    (p / "f.txt").write_text(text)
    return p


def test_disk_full_while_writing_a_report_keeps_the_previous_one(tmp_path, monkeypatch):
    import compressor.core.io as io

    path = tmp_path / "report.json"
    path.write_text('{"old": true}')
    real = io.os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode="r": Full(real(fd, mode)))
    with pytest.raises(DiskWriteError) as ei:
        atomic_write_text(path, "x" * 5000, what="report")
    monkeypatch.undo()
    assert str(path) in str(ei.value) and "about 4.9 KiB" in str(ei.value) and ei.value.errno == errno.ENOSPC
    assert path.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_io_error_on_the_final_rename_puts_the_previous_version_back(tmp_path, monkeypatch):
    import compressor.core.io as io

    out = _folder(tmp_path / "out", "previous")
    real = os.replace

    def replace(a, b):
        if ".tmp-" in str(a):
            raise OSError(errno.EIO, "Input/output error", str(a))
        return real(a, b)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(DiskWriteError, match="Input/output error.*is unchanged - check the disk") as ei:
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "f.txt").write_text("new")
    assert ei.value.errno == errno.EIO
    assert (out / "f.txt").read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out"]
