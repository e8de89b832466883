"""compressor.core.memory: the per-phase memory trace (``memory_phases`` in compression_report.json; the prune
job's phases: tests/job/test_prune_job.py)."""
from __future__ import annotations

import pytest

from compressor.core.memory import MemoryTrace, current_rss_mb, reset_peak_rss

needs_proc = pytest.mark.skipif(current_rss_mb() is None or not reset_peak_rss(), reason="needs Linux /proc")


@needs_proc
def test_trace_names_the_phase_that_peaks():
    import mmap

    trace = MemoryTrace()
    with trace.phase("small"):
        pass
    with trace.phase("big"):
        # 64 MiB of fresh pages, each touched. Not a numpy array: after hundreds of tests the allocator can serve
        # one from freed memory that is still resident, and the RSS would not grow (seen in a full-suite run)
        n = 64 * 2**20
        buf = mmap.mmap(-1, n)
        for i in range(0, n, mmap.PAGESIZE):
            buf[i] = 1
        buf.close()
    with trace.phase("after"):
        pass
    small, big, after = trace.as_list()
    assert [p["phase"] for p in (small, big, after)] == ["small", "big", "after"]
    assert big["peak_above_start_mb"] >= 50 and small["peak_above_start_mb"] < 20
    assert after["peak_mb"] < big["peak_mb"], "each phase starts from a reset peak"
    # (not compared with peak_rss_mb(): in a long test process the peak before the trace existed can be higher)
    assert trace.overall_peak_mb >= big["peak_mb"] - 0.05  # phases are rounded to 0.1 MiB
    assert all(p["seconds"] >= 0 and "peak_is_process_peak" not in p for p in trace.as_list())
