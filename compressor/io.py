"""Atomic output folders and JSON helpers.

Everything the toolkit writes goes to a temporary sibling folder first and is renamed into place
only when complete, so an interrupted run never leaves a half-written model at the output path.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, OutputExistsError


def check_output_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Validate an output folder path before any work starts.

    Raises:
        ConfigError: ``out`` exists and is a file, sits under a file, or its parent is not writable.
        OutputExistsError: ``out`` is a non-empty folder and ``force`` is False.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output path {str(path)!r} is an existing file; give a folder path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder {str(path)!r} exists and is not empty; pass --force (force=True) to replace it"
        )
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:  # the nearest existing ancestor is created from
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"output path {str(path)!r} is inside {str(parent)!r}, which is a file, not a folder; "
                          f"give a folder path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"output folder's parent {str(parent)!r} is not writable")
    return path


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out`` in one rename.

    On any exception the temporary folder is removed and ``out`` is left untouched.

    Example:
        >>> with atomic_output_dir("pruned", force=True) as tmp:   # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    path = check_output_dir(out, force)
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (NaN/inf become ``null``)."""
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
