"""Peak memory of an ONNX Runtime session, measured in a fresh child process."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.core.memory import peak_rss_mb
from compressor.core.ort import ort_session
from exporters.measure.inputs import make_feed


def _memory_probe(path: str, provider: str, threads: int, dims: dict[str, Any], cases: list, conn) -> None:
    """Child-process body: load the graph, run each case once, send back RSS figures (MiB)."""
    try:
        before = peak_rss_mb()
        sess = ort_session(Path(path), provider=provider, threads=threads, spinning=False, what="benchmarking")
        for batch, new, past in cases:
            sess.run(None, make_feed(sess, dims, batch=batch, new_tokens=new, past=past))
        peak = peak_rss_mb()
        conn.send({"peak_rss_mb": peak, "peak_rss_delta_mb": peak - before})
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported back to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def measure_peak_rss(path: Path, provider: str, threads: int, dims: dict[str, Any], cases: list,
                     timeout: float = 600) -> dict[str, Any]:
    """Run :func:`_memory_probe` in a fresh ``spawn`` process; returns its figures or ``{"error": ...}``."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_memory_probe, args=(str(path), provider, threads, dims, cases, child), daemon=True)
    proc.start()
    child.close()
    try:
        if parent.poll(timeout):
            return parent.recv()
        return {"error": f"memory probe gave no answer in {timeout:.0f} s"}
    except EOFError:
        return {"error": f"memory probe exited with code {proc.exitcode}"}
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
