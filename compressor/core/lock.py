"""One run per output: an exclusive lock beside the output, and the clean-up of stale temporaries it allows.

:func:`output_lock` holds ``fcntl.flock`` on ``PARENT/.NAME.lock`` for the output ``PARENT/NAME`` (an output
folder, or a checkpoint folder ``NAME.ckpt``). The lock belongs to the open file, so the operating system
drops it when the process dies, ``kill -9`` included: a lock is never stale, whatever file is left behind.
The holder writes its pid, host, start time and command line into the file, and a second run that finds
the lock taken fails at once with :class:`~compressor.core.errors.OutputLockedError` naming them.

Only the lock holder may touch the output's temporaries (``.NAME.tmp-*`` being written, ``.NAME.old-*`` the
previous version being replaced, see :func:`compressor.core.io.atomic_output_dir`): no live run can own them, so
the first thing a new holder does is :func:`recover_temporaries`.

The lock is re-entrant within one process (``prune_job`` holds it for the whole run, the atomic writer it
calls takes it again), and data-parallel ranks other than rank 0 do not take it (rank 0 writes for all).

Example:
    >>> with output_lock("pruned"):                  # doctest: +SKIP
    ...     ...  # nobody else writes pruned/ or its temporaries meanwhile
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor.core.errors import OutputLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not serialised there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("compressor")

_held: dict[str, list[int]] = {}  # lock file -> [fd, depth]; the re-entrancy of one process
_guard = threading.Lock()
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of the output ``out``: ``.NAME.lock`` in the same folder."""
    p = Path(os.path.abspath(os.fspath(out)))
    return p.parent / f".{p.name}.lock"


def _secondary_rank() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def read_lock_info(out: str | os.PathLike) -> dict[str, Any] | None:
    """What the holder wrote into the lock of ``out`` (pid, host, started, command), or None."""
    try:
        return json.loads(lock_path(out).read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its details yet)"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
            + (f" ({info['command']})" if info.get("command") else ""))


def _busy(out: str | os.PathLike, fd: int) -> OutputLockedError:
    info = None
    for _ in range(20):  # the holder writes its details right after taking the lock
        try:
            info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "null")
        except (OSError, ValueError):
            info = None
        if info:
            break
        time.sleep(0.01)
    return OutputLockedError(
        f"{str(out)!r} is being written by another run: {_describe(info)}; wait for it to finish or stop it "
        f"(a killed run releases it at once), or choose another output (lock file {str(lock_path(out))!r})")


def _acquire(out: str | os.PathLike, path: Path, wait_s: float = 0.0) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # under a file, or not writable: nothing can be written there, and the path checks say so
        return None
    deadline = time.monotonic() + wait_s
    replaced = 0
    while replaced < 50:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() < deadline:  # a waiting caller polls: the holder may be done soon
                os.close(fd)
                time.sleep(0.1)
                continue
            exc = _busy(out, fd)
            os.close(fd)
            raise exc from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                log.warning("the file system of %r does not support locks (%s); runs on this output are not "
                            "serialised", str(path.parent), exc.strerror)
                return None
            raise
        try:  # the previous holder may have unlinked the file between our open and flock: lock the new one
            st, now = os.fstat(fd), os.stat(path)
            same = (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
                    "output": os.path.abspath(os.fspath(out))}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            return fd
        os.close(fd)
        replaced += 1
    raise OutputLockedError(f"could not take the lock {str(path)!r} of {str(out)!r}: it keeps being replaced")


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, *, recover: bool = True, wait_s: float = 0.0) -> Iterator[list[str]]:
    """Hold the exclusive lock of the output ``out`` for the ``with`` block.

    Args:
        out: the output (folder) path; the lock file is ``.NAME.lock`` beside it (its folder is created).
        recover: when the lock is newly taken, run :func:`recover_temporaries` first (default True).
        wait_s: seconds to wait for another process to release the lock before failing (default 0: fail at
            once). The asset cache waits, so that a second process uses the file the first one assembles.

    Yields:
        What the recovery did, one line each (also logged as warnings).

    Raises:
        OutputLockedError: another live process holds the lock (the message names it).
    """
    if fcntl is None or _secondary_rank():
        yield []
        return
    path = lock_path(out)
    key = str(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            fd = None
        else:
            fd = _acquire(out, path, wait_s)
            if fd is not None:
                _held[key] = [fd, 1]
    if fd is None and key not in _held:  # no lock support, or no folder to write in: carry on without
        yield recover_temporaries(out) if recover else []
        return
    try:
        yield recover_temporaries(out) if recover and fd is not None else []
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.unlink(path)  # while still holding it; see _acquire for the race this leaves harmless
                os.close(entry[0])


def holds_lock(out: str | os.PathLike) -> bool:
    """True if this process holds the lock of ``out``."""
    return str(lock_path(out)) in _held


def recover_temporaries(out: str | os.PathLike) -> list[str]:
    """Clean up after runs on ``out`` that were killed; call only while holding :func:`output_lock`.

    * ``.NAME.tmp-*`` (a folder being written, or written but not yet renamed): removed. Its run is gone,
      since the lock was free; a new run writes its own.
    * ``.NAME.old-*`` while ``NAME`` exists (the previous version, killed before it was deleted): removed.
    * one ``.NAME.old-*`` while ``NAME`` is absent (killed between the two renames that replace an output):
      renamed back to ``NAME``. The previous version is restored and the unconfirmed new one discarded, so
      the output is, as promised, either absent or a complete version, never lost.
    * several ``.NAME.old-*`` while ``NAME`` is absent (crashes of older releases): nothing is touched and
      :class:`~compressor.core.errors.OutputExistsError` says which folders there are and what to do.

    Returns:
        One line per action (each also logged at warning level on the ``compressor`` logger).
    """
    from compressor.core.errors import OutputExistsError

    path = Path(os.path.abspath(os.fspath(out)))
    parent = path.parent
    if not parent.is_dir():
        return []
    stem = glob.escape(f".{path.name}")
    tmps = sorted(p for p in parent.glob(f"{stem}.tmp-*") if p.is_dir())
    olds = sorted(p for p in parent.glob(f"{stem}.old-*") if p.is_dir())
    done: list[str] = []
    if olds and not path.exists():
        if len(olds) > 1:
            raise OutputExistsError(
                f"{str(path)!r} is missing and {len(olds)} earlier versions of it were left by killed runs: "
                f"{', '.join(repr(p.name) for p in olds)} in {str(parent)!r}; rename the one to keep to "
                f"{path.name!r} and delete the others, then run again")
        os.replace(olds[0], path)
        done.append(f"restored {str(path)!r} from {olds[0].name!r}: a run was killed while replacing it, so the "
                     f"previous version is back and its unfinished replacement is discarded")
        olds = []
    for p in olds + tmps:
        shutil.rmtree(p, ignore_errors=True)
        kind = "previous version" if ".old-" in p.name else "unfinished output"
        done.append(f"removed {str(p)!r}, the {kind} of a run that was killed")
    for line in done:
        log.warning("%s", line)
    return done


def locks_output(fn):
    """Decorator: run ``fn(model, out, ...)`` holding :func:`output_lock` of ``out`` (its second argument, or
    the keyword ``out``)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = kwargs["out"] if "out" in kwargs else args[1]
        with output_lock(out):
            return fn(*args, **kwargs)

    return wrapper
