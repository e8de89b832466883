"""Resident memory of this process (Linux ``/proc/self/status``, else ``getrusage``), in MiB."""
from __future__ import annotations

import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    ``VmHWM`` on Linux: it starts afresh at ``exec`` (and after :func:`reset_peak_rss`), unlike
    ``ru_maxrss``, which keeps the forking parent's peak. Elsewhere ``getrusage().ru_maxrss`` (KiB on Linux,
    bytes on macOS).
    """
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    import resource

    scale = 1024 if sys.platform == "darwin" else 1
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / scale


def current_rss_mb() -> float | None:
    """Current resident set size (``VmRSS``), MiB; None where ``/proc`` is not available."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the peak (``VmHWM``) to the current RSS (Linux ``/proc/self/clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryTrace:
    """Resident memory per phase of a job (load, calibration, perplexity, pruning loop, merge, save).

    Each :meth:`phase` resets the process's peak (``VmHWM``, :func:`reset_peak_rss`) at its start and records
    the RSS at its start and end and the peak within it, so the phase that sets the job's peak can be named.
    Resetting loses the process peak, so the trace keeps the running maximum itself: use
    :attr:`overall_peak_mb` (not :func:`peak_rss_mb`) for the job's peak once a trace is active. Where the
    peak cannot be reset (no ``/proc``), a phase's ``peak_mb`` is the process peak so far
    (``"peak_is_process_peak": true``).

    Example:
        >>> trace = MemoryTrace()
        >>> with trace.phase("load"):
        ...     pass
        >>> trace.as_list()[0]["phase"]
        'load'
    """

    def __init__(self) -> None:
        self.phases: list[dict] = []
        self._overall = peak_rss_mb()
        self._open: tuple | None = None

    @property
    def overall_peak_mb(self) -> float:
        """Peak RSS of the process since it started (MiB), across resets."""
        return max(self._overall, peak_rss_mb())

    def phase(self, name: str):
        """Context manager measuring the phase ``name`` (appended to :attr:`phases` when it ends, also on error)."""
        import contextlib
        import time

        @contextlib.contextmanager
        def _measure():
            self._overall = max(self._overall, peak_rss_mb())
            reset = reset_peak_rss()
            self._open = (name, current_rss_mb(), time.perf_counter(), reset)
            try:
                yield
            finally:
                self.phases.append(self._record())
                self._open = None

        return _measure()

    def _record(self) -> dict:
        """The record of the open phase, measured up to now."""
        import time

        assert self._open is not None
        name, start, t0, reset = self._open
        peak = peak_rss_mb()
        self._overall = max(self._overall, peak)
        end = current_rss_mb()
        rec = {"phase": name, "seconds": round(time.perf_counter() - t0, 2),
               "rss_start_mb": None if start is None else round(start, 1),
               "rss_end_mb": None if end is None else round(end, 1), "peak_mb": round(peak, 1),
               "peak_above_start_mb": None if start is None else round(peak - start, 1)}
        if not reset:
            rec["peak_is_process_peak"] = True
        return rec

    def so_far(self) -> list[dict]:
        """The finished phases and the open one measured up to now (for a report written inside its last phase)."""
        return self.as_list() + ([self._record()] if self._open is not None else [])

    def as_list(self) -> list[dict]:
        """The phases measured so far, in order (copies)."""
        return [dict(p) for p in self.phases]
