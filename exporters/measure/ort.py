"""ONNX Runtime latency benchmark of an exported decoder graph, optionally side by side with a baseline.

What is measured (each on its own ``onnxruntime.InferenceSession`` loop, not through optimum):

* **prefill**: one forward pass of a batch-1 prompt of each length in ``prompt_lengths`` (default 128 and
  512) with an empty KV cache;
* **decode**: one cached decode step (one new token per sequence) at batch size ``decode_batches``
  (default 1 and 8) on top of a KV cache of ``context`` (default 128) positions. The same cache is fed
  every run so every run measures the same step.

Each case runs ``warmup`` untimed passes, then ``runs`` timed passes (default 20); the report gives the
median, p90, mean and min in milliseconds, and tokens/s from the median. With a baseline, both sessions
are loaded in the same process and timed alternately (order A B, B A, A B, ...) so drifts in machine
load affect both alike; the report gives the ratio model/baseline of each median.

Sessions: ``graph_optimization_level = ORT_ENABLE_ALL``, ``intra_op_num_threads = threads`` (default
``os.cpu_count()``), one inter-op thread, intra-op spin-waiting off (see ``spinning`` in :func:`bench`).
Feeds: ``input_ids`` (random ids), ``attention_mask`` (ones), ``position_ids`` if the graph has it, and
``past_key_values.*`` shaped from the graph's own inputs (KV heads, head_dim), so head-pruned and GQA graphs
are fed correctly. CUDA timings include the host/device copies of the numpy feeds.

Memory: the peak resident set size (RSS) of a separate process that only loads the graph and runs the
largest prefill and decode case once (``peak_rss_mb``), and the part of it added by the session
(``peak_rss_delta_mb``: peak minus the RSS before the session was created). Measuring in a child
process keeps the two models (and this process's history) apart.

FLOPs per token (forward, from the exported ``config.json``; multiply-add = 2 FLOPs)::

    linear    = 2 * [ L * (h*H*d + 2*h*K*d + H*d*h + 3*h*I) + V*h ]     q, k, v, o, gate/up/down, lm_head
    attention = 4 * L * H * d * T                                         QK^T and AV against T positions
    flops_per_token = linear + attention

with ``L`` layers, ``h`` hidden size, ``H`` query heads, ``K`` KV heads, ``d`` head_dim, ``I``
intermediate size, ``V`` vocabulary and ``T = context`` (``h`` is the model's real hidden size, also for
head-pruned exports whose config.json carries an adjusted one, see :mod:`exporters.onnx.ort_config`). Embedding
lookup, norms, RoPE, softmax and activations (O(h) per layer) are left out. Parameter count is from the same
config: embedding, the linear layers above, norms and biases (lm_head not counted twice when tied). Both
formulas live in :mod:`compressor.modeling.flops`, which counts a layer's projections with the pruning schedule's
:func:`compressor.algorithm.schedule.layer_params`.

Split by concern: :mod:`exporters.measure.inputs` (folder, config, counts, feeds), :mod:`exporters.measure.memory`
(the child-process memory probe), :mod:`exporters.measure.report` (the result classes and the table); this
module times the cases and re-exports their public names.

Example:
    >>> from exporters import bench                                         # doctest: +SKIP
    >>> rep = bench("pruned_onnx", baseline_dir="dense_onnx", runs=20)      # doctest: +SKIP
    >>> print(rep.table())                                                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError
from compressor.core.io import write_json
from compressor.core.ort import PROVIDERS, import_ort, ort_session, providers_for
from compressor.modeling.flops import FLOPS_FORMULA
from exporters.measure.inputs import (
    count_params,
    find_onnx_file,
    flops_per_token,
    make_feed,
    model_dims,
    read_config,
)
from exporters.measure.memory import measure_peak_rss
from exporters.measure.report import BENCH_REPORT_FILE, BenchReport, ModelBench, check_report_free, compare

__all__ = ["BENCH_REPORT_FILE", "PROVIDERS", "BenchReport", "ModelBench", "bench", "count_params", "find_onnx_file",
           "flops_per_token", "kv_bytes_per_sequence", "make_feed", "measure_peak_rss", "model_dims"]


def _stats(times: Sequence[float], tokens: int) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(times) * 1e3
    med = float(np.median(a))
    return {"median_ms": med, "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "runs": int(a.size), "tokens_per_s": tokens / (med / 1e3) if med > 0 else None}


@dataclass
class _Loaded:
    info: ModelBench
    session: Any
    dims: dict[str, Any]


def _load(folder, provider, threads, context, file_name=None, spinning=False) -> _Loaded:
    folder = Path(folder)
    onnx_path = find_onnx_file(folder, file_name)
    cfg = read_config(folder)
    dims = model_dims(cfg)
    t0 = time.perf_counter()
    sess = ort_session(onnx_path, provider=provider, threads=threads, spinning=spinning, what="benchmarking")
    load = time.perf_counter() - t0
    graph_bytes = sum(p.stat().st_size for p in folder.iterdir()
                      if p.is_file() and p.name.startswith(onnx_path.name))
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    fl = flops_per_token(dims, context)
    fmt, precision = _export_kind(onnx_path)
    info = ModelBench(path=str(folder), onnx_file=onnx_path.name, config=dims, file_bytes=graph_bytes,
                      folder_bytes=folder_bytes, params=count_params(dims), flops_per_token=fl["total"], flops=fl,
                      quantized=None if precision is None else precision != "fp32", load_seconds=load,
                      providers=list(sess.get_providers()), format=fmt, precision=precision)
    return _Loaded(info, sess, dims)


def _export_kind(onnx_path: Path) -> tuple[str | None, str | None]:
    """``(format, precision)`` from the folder's export report: format ``onnx``, ``onnx-optimized`` (``--optimize``)
    or ``onnx-genai``; precision ``fp32``, ``int8`` or ``int4``. ``(None, None)`` without a readable report."""
    report = onnx_path.parent / "export_report.json"
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        return None, None
    fmt = str(rep.get("format") or "onnx")
    if fmt == "onnx" and rep.get("optimized"):
        fmt = "onnx-optimized"
    precision = rep.get("precision") or ("int8" if rep.get("int8") else "fp32")
    return fmt, str(precision)


def kv_bytes_per_sequence(dims: dict[str, Any], context: int, dtype_bytes: int = 4) -> int:
    """Bytes of KV cache one sequence reads per decode step at ``context`` cached positions (keys and values of
    every layer, fp32 by default)."""
    return int(2 * dims["layers"] * dims["kv_heads"] * dims["head_dim"] * context * dtype_bytes)


def bench(model_dir: str | os.PathLike, baseline_dir: str | os.PathLike | None = None, *, provider: str = "cpu",
          threads: int | None = None, runs: int = 20, warmup: int = 3, prompt_lengths: Sequence[int] = (128, 512),
          decode_batches: Sequence[int] = (1, 8), context: int = 128, out: str | os.PathLike | None = None,
          write: bool = True, measure_memory: bool = True, file_name: str | None = None,
          spinning: bool = False, force: bool = False) -> BenchReport:
    """Benchmark an exported ONNX folder with ONNX Runtime, optionally against a baseline folder.

    Args:
        model_dir: folder written by :func:`exporters.export_onnx` (``model.onnx`` + ``config.json``). A Hugging
            Face (PyTorch) folder is refused with a :class:`ModelLoadError` that says how to export it
            (``benchmarks/onnx_latency.py`` exports and benchmarks in one go).
        baseline_dir: a second exported folder, measured in the same run, alternating with ``model_dir``.
        provider: ``"cpu"`` (default) or ``"cuda"`` (needs onnxruntime-gpu and CUDA).
        threads: ONNX Runtime intra-op threads (default ``os.cpu_count()``).
        runs: timed runs per case (default 20); warmup: untimed runs per case first (default 3).
        prompt_lengths: prefill prompt lengths in tokens, batch 1 (default 128, 512).
        decode_batches: batch sizes of the one-token decode step (default 1, 8).
        context: KV-cache positions before the decode step, also the ``T`` of the FLOP count (default 128).
        out: folder for ``bench_report.json`` (created if needed); default ``model_dir`` itself.
        write: write ``bench_report.json`` (default True).
        force: replace an existing ``bench_report.json`` there (default False: refused before any timing).
        measure_memory: run the peak-RSS probe in a child process per model (default True).
        file_name: graph file inside the folders (default ``model.onnx`` or the only ``*.onnx``).
        spinning: let idle ORT intra-op threads spin-wait (ORT's default; default here False). With spinning,
            the threads of the session just timed keep spinning while the other one runs: on a 2-core
            machine the alternated decode step measured up to 1.7x slower than alone; without it the paired
            figures match single-model runs. Also applies to single-model runs so both kinds compare.

    Returns:
        :class:`BenchReport` (``.table()`` for the terminal table, ``.to_dict()`` as written to JSON).

    Raises:
        ModelLoadError, UnsupportedArchitectureError, ConfigError, DependencyMissingError;
        OutputExistsError: ``bench_report.json`` exists where it would be written and ``force`` is False.

    Example:
        >>> rep = bench("pruned_onnx", "dense_onnx", runs=5, prompt_lengths=(128,))   # doctest: +SKIP
        >>> rep.ratios["latency.decode_b1"]                                             # doctest: +SKIP
        0.61
    """
    if threads is None:
        threads = os.cpu_count() or 1
    for name, val, lo in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0), ("context", context, 0)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {val!r}")
    prompt_lengths = [int(x) for x in prompt_lengths]
    decode_batches = [int(x) for x in decode_batches]
    if any(x < 1 for x in prompt_lengths + decode_batches) or not (prompt_lengths or decode_batches):
        raise ConfigError(f"prompt lengths and decode batch sizes must be >= 1 (got {prompt_lengths}, {decode_batches})")
    if provider not in PROVIDERS:
        raise ConfigError(f"provider {provider!r} is not valid; use one of {', '.join(PROVIDERS)}")
    # Check folders before importing / starting anything heavy.
    find_onnx_file(model_dir, file_name)
    if baseline_dir is not None:
        find_onnx_file(baseline_dir, file_name)
    if write and out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {str(out)!r} is an existing file; give a folder")  # before minutes of timing
    if write:
        check_report_free(Path(out) if out is not None else Path(model_dir), force)
    ort = import_ort("benchmarking")
    providers_for(ort, provider)  # a missing CUDA provider fails before any session is loaded

    loaded = [_load(model_dir, provider, threads, context, file_name, spinning)]
    if baseline_dir is not None:
        loaded.append(_load(baseline_dir, provider, threads, context, file_name, spinning))

    # case name -> (batch, new tokens, past positions)
    cases = {f"prefill_{n}": (1, n, 0) for n in prompt_lengths}
    cases.update({f"decode_b{b}": (b, 1, context) for b in decode_batches})
    t_start = time.perf_counter()
    for name, (batch, new, past) in cases.items():
        feeds = [make_feed(lm.session, lm.dims, batch=batch, new_tokens=new, past=past) for lm in loaded]
        for _ in range(warmup):
            for lm, feed in zip(loaded, feeds):
                lm.session.run(None, feed)
        times: list[list[float]] = [[] for _ in loaded]
        for i in range(runs):
            order = range(len(loaded)) if i % 2 == 0 else reversed(range(len(loaded)))
            for j in order:
                t0 = time.perf_counter()
                loaded[j].session.run(None, feeds[j])
                times[j].append(time.perf_counter() - t0)
        for lm, t in zip(loaded, times):
            lm.info.latency[name] = _stats(t, batch * new)
            # FLOPs of this case per token: mean attention context of its new tokens (prefill: (n+1)/2)
            lm.info.latency[name]["flops_per_token"] = flops_per_token(lm.dims, past + (new + 1) / 2)["total"]
            if new == 1:  # decode is memory-bound: weights once per step (shared by the batch) + each sequence's KV
                lm.info.latency[name]["bytes_per_token"] = (lm.info.file_bytes / batch
                                                            + kv_bytes_per_sequence(lm.dims, past))
        del feeds
    timing_seconds = time.perf_counter() - t_start

    if measure_memory:
        probe_cases = []
        if prompt_lengths:
            probe_cases.append((1, max(prompt_lengths), 0))
        if decode_batches:
            probe_cases.append((max(decode_batches), 1, context))
        for lm in loaded:
            res = measure_peak_rss(Path(lm.info.path) / lm.info.onnx_file, provider, threads, lm.dims, probe_cases)
            lm.info.peak_rss_mb = res.get("peak_rss_mb")
            lm.info.peak_rss_delta_mb = res.get("peak_rss_delta_mb")
            if "error" in res:
                lm.info.notes.append(f"memory probe failed: {res['error']}")

    model, baseline = loaded[0].info, (loaded[1].info if len(loaded) > 1 else None)
    ratios = compare(model, baseline) if baseline else None
    settings = {
        "provider": provider, "threads": threads, "runs": runs, "warmup": warmup,
        "prompt_lengths": prompt_lengths, "decode_batches": decode_batches, "context": context,
        "alternating": baseline is not None, "timing_seconds": timing_seconds,
        "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_spinning": spinning,
        "onnxruntime": ort.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "flops_formula": FLOPS_FORMULA,
    }
    report = BenchReport(model=model, baseline=baseline, ratios=ratios, settings=settings)
    if write:
        dest = Path(out) if out is not None else Path(model_dir)
        if dest.exists() and not dest.is_dir():
            raise ConfigError(f"--out {str(dest)!r} is an existing file; give a folder")
        try:
            dest.mkdir(parents=True, exist_ok=True)
            write_json(dest / BENCH_REPORT_FILE, report.to_dict())
        except PermissionError as exc:
            raise ConfigError(f"cannot write {BENCH_REPORT_FILE} into {str(dest)!r} ({exc}); pass another --out") from exc
        report.json_path = dest / BENCH_REPORT_FILE
    return report
