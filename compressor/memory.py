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
