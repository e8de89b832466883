"""Atomic output folders and JSON helpers.

Everything the toolkit writes goes to a temporary sibling folder first and is renamed into place
only when complete, so an interrupted run never leaves a half-written model at the output path.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError, DiskWriteError, OutputExistsError

#: errors of a full or failing disk, turned into :class:`DiskWriteError` by the writers below
WRITE_FAULT_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EIO, errno.EFBIG})


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
def atomic_output_dir(out: str | os.PathLike, force: bool = False, *, expected_bytes: int | None = None,
                      what: str = "output folder", hint: str = "write --out to another disk") -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out`` in one rename.

    The output's lock (:func:`compressor.core.lock.output_lock`) is held meanwhile, and the temporaries of killed
    runs are cleaned up first. On any exception the temporary folder is removed and ``out`` is left
    untouched; a full or failing disk raises :class:`DiskWriteError` naming ``out``, the bytes needed
    (``expected_bytes``, else at least what was written) and the bytes free.

    Example:
        >>> with atomic_output_dir("pruned", force=True) as tmp:   # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    from compressor.core.lock import output_lock

    path = check_output_dir(out, force)
    with output_lock(path):
        check_output_dir(out, force)  # again: the recovery may have restored a previous version
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
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)  # put the previous version back (a kill here is undone by the next run)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            written = tree_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno not in WRITE_FAULT_ERRNOS:
                raise
            kept = f"{str(path)!r} is unchanged" if path.exists() else f"nothing was written at {str(path)!r}"
            raise write_fault(exc, what, path, max(expected_bytes or 0, written), kept=kept, hint=hint,
                              at_least=expected_bytes is None) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def tree_bytes(root: str | os.PathLike) -> int:
    """Total size of the files under ``root`` (0 if it is gone)."""
    total = 0
    for dirpath, _, files in os.walk(os.fspath(root)):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, f))
    return total


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the disk that holds ``path`` (or its nearest existing ancestor); None if unknown."""
    p = Path(os.path.abspath(os.fspath(path)))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def write_fault(exc: OSError, what: str, path: str | os.PathLike, needed: int | None, *, kept: str, hint: str,
                at_least: bool = False) -> DiskWriteError:
    """A :class:`DiskWriteError` for ``exc`` raised while writing ``what`` at ``path``: names the path, the
    bytes ``needed`` against the bytes free now, what was ``kept`` intact, and the fix (``hint``)."""
    free = free_bytes(path)
    cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
    need = ("at least " if at_least else "about ") + human_bytes(needed) if needed else "an unknown amount"
    short = ""
    if needed and free is not None and needed > free:
        short = f" ({human_bytes(needed - free)} more than is free)"
    action = "free disk space" if exc.errno != errno.EIO else "check the disk (I/O error)"
    return DiskWriteError(f"{cause} while writing the {what} {str(path)!r}: it needs {need}{short}, "
                          f"{human_bytes(free)} free on that disk; {kept} - {action} or {hint}", exc.errno, str(path))


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


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    A full or failing disk raises :class:`DiskWriteError` naming ``path`` and the bytes needed; ``path``
    keeps its previous content.
    """
    path = Path(path)
    data = text.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno not in WRITE_FAULT_ERRNOS:
            raise
        kept = "its previous content is unchanged" if path.exists() else "it was not written"
        raise write_fault(exc, what, path, len(data), kept=kept, hint="write it to another disk") from exc
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


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The tensor table of a ``.safetensors`` file (name -> ``{"dtype", "shape", "data_offsets"}``), read
    from its header without loading any data, after checking that the file holds all the bytes the header
    promises.

    Raises:
        ValueError: the file is too short, its header is not JSON, or its data is truncated (the message
            says which, with the sizes).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"the file has {size} bytes, fewer than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise ValueError(f"the header claims {n} bytes but the file has only {size} (truncated?)")
        try:
            table = json.loads(fh.read(n))
        except ValueError as exc:
            raise ValueError(f"the header is not valid JSON ({exc})") from None
    if not isinstance(table, dict):
        raise ValueError("the header is not a JSON object")
    table.pop("__metadata__", None)
    try:
        end = max((int(v["data_offsets"][1]) for v in table.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ValueError("the header has entries without valid data_offsets") from None
    if 8 + n + end > size:
        raise ValueError(f"the data is truncated: the header describes {8 + n + end} bytes, the file has {size}")
    return table
