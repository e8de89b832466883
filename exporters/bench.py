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
head-pruned exports whose config.json carries an adjusted one, see :mod:`exporters.onnx`). Embedding lookup, norms, RoPE, softmax and
activations (O(h) per layer) are left out. Parameter count is from the same config: embedding, the
linear layers above, norms and biases (lm_head not counted twice when tied).

Example:
    >>> from exporters import bench                                         # doctest: +SKIP
    >>> rep = bench("pruned_onnx", baseline_dir="dense_onnx", runs=20)      # doctest: +SKIP
    >>> print(rep.table())                                                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compressor.errors import ConfigError, DependencyMissingError, ModelLoadError
from compressor.io import write_json

#: Name of the JSON report.
BENCH_REPORT_FILE = "bench_report.json"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class ModelBench:
    """Measurements of one exported folder.

    Attributes:
        path: the folder; ``onnx_file`` the graph inside it.
        file_bytes: size of the graph on disk (``*.onnx`` plus external data), bytes; ``folder_bytes`` all files.
        params: parameter count from the config (see module docstring).
        flops_per_token: forward FLOPs per token at ``context`` positions; ``flops`` has the parts.
        latency: case name (``prefill_128``, ``decode_b8``...) -> ``{"median_ms", "p90_ms", "mean_ms",
            "min_ms", "runs", "tokens_per_s", "flops_per_token"}``; the case's FLOPs per token use the mean
            attention context of its new tokens (``past + (new + 1) / 2``).
        peak_rss_mb / peak_rss_delta_mb: see module docstring (None if the memory probe was skipped).
        load_seconds: session creation time; ``providers``: the session's execution providers.
        quantized: True/False from the folder's ``export_report.json`` (``int8``), None without a report.
        notes: problems that did not stop the benchmark (e.g. a failed memory probe).
    """

    path: str
    onnx_file: str
    config: dict[str, Any]
    file_bytes: int
    folder_bytes: int
    params: int
    flops_per_token: float
    flops: dict[str, float]
    quantized: bool | None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    peak_rss_delta_mb: float | None = None
    load_seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchReport:
    """Result of :func:`bench`.

    Attributes:
        model: the measured folder; ``baseline`` the baseline (or None).
        ratios: with a baseline, model/baseline for every latency median (``latency.<case>``), the case's FLOPs
            (``flops.<case>``) and latency over FLOP ratio (``latency_over_flops.<case>``), ``flops_per_token``,
            ``params``, ``file_bytes`` and ``peak_rss_mb``; else None.
        settings: provider, threads, runs, warmup, prompt lengths, decode batches, context, machine.
        json_path: where ``bench_report.json`` was written (None if not written).
    """

    model: ModelBench
    baseline: ModelBench | None
    ratios: dict[str, float] | None
    settings: dict[str, Any]
    json_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "model": asdict(self.model),
                "baseline": asdict(self.baseline) if self.baseline else None, "ratios": self.ratios}

    def table(self) -> str:
        """A plain-text table: one row per metric, columns model / baseline / ratio."""
        rows: list[tuple[str, str, str, str]] = []
        m, b = self.model, self.baseline

        def fmt(v, unit=""):
            if v is None:
                return "-"
            if isinstance(v, float):
                return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
            return f"{v:,}{unit}"

        def add(label, a, bb, key=None, unit=""):
            r = self.ratios.get(key) if (self.ratios and key) else None
            rows.append((label, fmt(a, unit), fmt(bb, unit) if b else "", f"{r:.3f}" if r is not None else ""))

        for case in m.latency:
            ml = m.latency[case]
            bl = b.latency.get(case) if b else None
            add(f"{case} median", ml["median_ms"], bl["median_ms"] if bl else None, f"latency.{case}", " ms")
            add(f"{case} p90", ml["p90_ms"], bl["p90_ms"] if bl else None, f"latency_p90.{case}", " ms")
            if b and self.ratios and self.ratios.get(f"flops.{case}"):
                rows.append((f"{case} FLOP ratio", "", "", f"{self.ratios[f'flops.{case}']:.3f}"))
                rows.append((f"{case} latency/FLOP ratio", "", "", f"{self.ratios[f'latency_over_flops.{case}']:.3f}"))
        add("params", m.params, b.params if b else None, "params")
        add("GFLOPs/token", m.flops_per_token / 1e9, b.flops_per_token / 1e9 if b else None, "flops_per_token")
        add("file size", m.file_bytes / 2**20, b.file_bytes / 2**20 if b else None, "file_bytes", " MiB")
        add("peak RSS", m.peak_rss_mb, b.peak_rss_mb if b else None, "peak_rss_mb", " MiB")
        head = ("metric", "model", "baseline" if b else "", "model/baseline" if b else "")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in [head] + rows]
        lines.insert(1, "-" * len(lines[0]))
        s = self.settings
        intro = [f"model:    {m.path}" + (" (int8)" if m.quantized else "")]
        if b:
            intro.append(f"baseline: {b.path}" + (" (int8)" if b.quantized else ""))
        intro.append(f"{s['provider']}, {s['threads']} threads, {s['runs']} runs after {s['warmup']} warm-up, "
                     f"decode context {s['context']}; GFLOPs/token at T={s['context']}, per-case FLOP ratios at each case's context")
        return "\n".join(intro + [""] + lines)


# --------------------------------------------------------------------------- folder and config


def find_onnx_file(folder: str | os.PathLike, file_name: str | None = None) -> Path:
    """The graph to benchmark in ``folder``: ``file_name``, else ``model.onnx``, else the only ``*.onnx``.

    Raises:
        ModelLoadError: not a folder, a Hugging Face (PyTorch) folder, no or several ``*.onnx`` files.
    """
    p = Path(folder)
    if not p.is_dir():
        raise ModelLoadError(f"{str(p)!r} is not a folder; give a folder written by `compress export --format onnx`")
    if file_name:
        f = p / file_name
        if not f.is_file():
            raise ModelLoadError(f"{str(f)!r} does not exist")
        return f
    onnx_files = sorted(p.glob("*.onnx"))
    if not onnx_files:
        if (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin"))):
            raise ModelLoadError(
                f"{str(p)!r} is a Hugging Face (PyTorch) model folder, not an ONNX export; export it first with "
                f"`compress export {p} --format onnx --out {p.name}_onnx` (benchmarks/onnx_latency.py does both)"
            )
        raise ModelLoadError(f"{str(p)!r} has no *.onnx file; give a folder written by `compress export --format onnx`")
    if (p / "model.onnx").is_file():
        return p / "model.onnx"
    if len(onnx_files) > 1:
        raise ModelLoadError(f"{str(p)!r} has several ONNX files ({', '.join(f.name for f in onnx_files)}); "
                             f"keep one or name it with file_name")
    return onnx_files[0]


def _read_config(folder: Path) -> dict[str, Any]:
    from compressor.models import check_architecture

    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no config.json (needed for parameter and FLOP counts)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(path)!r}: {exc}") from exc
    check_architecture(SimpleNamespace(model_type=cfg.get("model_type"), architectures=cfg.get("architectures")),
                       str(folder))
    return cfg


def model_dims(cfg: dict[str, Any]) -> dict[str, Any]:
    """Sizes used for counting, from an exported ``config.json`` dict (real hidden size, see exporters.onnx)."""
    from .onnx import true_hidden_size

    h = true_hidden_size(cfg)
    heads = int(cfg["num_attention_heads"])
    return {
        "model_type": cfg.get("model_type"),
        "layers": int(cfg["num_hidden_layers"]), "hidden": h, "heads": heads,
        "kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "head_dim": int(cfg.get("head_dim") or h // heads),
        "intermediate": int(cfg["intermediate_size"]), "vocab": int(cfg["vocab_size"]),
        "tied": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        "mlp_bias": bool(cfg.get("mlp_bias", False)),
    }


def count_params(dims: dict[str, Any]) -> int:
    """Parameter count of a llama/mistral/qwen2 decoder from :func:`model_dims` (see module docstring)."""
    L, h, H, K, d, I, V = (dims[k] for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"))
    per_layer = h * H * d + 2 * h * K * d + H * d * h + 3 * h * I + 2 * h
    if dims["attention_bias"]:
        per_layer += H * d + 2 * K * d
    if dims["mlp_bias"]:
        per_layer += 2 * I + h
    return V * h + L * per_layer + h + (0 if dims["tied"] else V * h)


def flops_per_token(dims: dict[str, Any], context: int) -> dict[str, float]:
    """Forward FLOPs per token at ``context`` cached positions: ``{"linear", "attention", "total"}``."""
    L, h, H, K, d, I, V = (dims[k] for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"))
    linear = 2.0 * (L * (h * H * d + 2 * h * K * d + H * d * h + 3 * h * I) + V * h)
    attention = 4.0 * L * H * d * context
    return {"linear": linear, "attention": attention, "total": linear + attention, "context": context}


# --------------------------------------------------------------------------- ONNX Runtime


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyMissingError(
            f"benchmarking needs onnxruntime, which cannot be imported ({exc}); pip install onnxruntime "
            f"(or onnxruntime-gpu for --provider cuda)"
        ) from exc
    return ort


def _providers(ort, provider: str) -> list[str]:
    if provider not in PROVIDERS:
        raise ConfigError(f"provider {provider!r} is not valid; use one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise DependencyMissingError(
            f"--provider {provider} needs {name}, which this onnxruntime {ort.__version__} lacks "
            f"(available: {', '.join(available)}); install onnxruntime-gpu and a matching CUDA/cuDNN"
            if provider == "cuda" else f"{name} is not available in this onnxruntime (available: {available})"
        )
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


def _make_session(ort, path: Path, provider: str, threads: int, spinning: bool = False):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:
        # Idle intra-op threads spin-wait by default; with two sessions timed alternately, one session's
        # spinning threads steal the cores of the other (measured on 2 cores: decode 3x slower).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = _providers(ort, provider)
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot load {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if provider == "cuda" and PROVIDERS["cuda"] not in sess.get_providers():
        raise DependencyMissingError(
            f"onnxruntime could not start CUDAExecutionProvider for {str(path)!r} (session providers: "
            f"{sess.get_providers()}); check that CUDA and cuDNN libraries matching onnxruntime-gpu are installed"
        )
    return sess


_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "float32"}


def make_feed(session, dims: dict[str, Any], *, batch: int, new_tokens: int, past: int, seed: int = 0):
    """Inputs for one forward pass: ``batch`` sequences of ``new_tokens`` tokens after ``past`` cached positions.

    KV-cache shapes (heads, head_dim) are read from the graph's ``past_key_values.*`` inputs; symbolic
    dimensions fall back to the config.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    feed: dict[str, Any] = {}
    for inp in session.get_inputs():
        name = inp.name
        if name == "input_ids":
            feed[name] = rng.integers(0, dims["vocab"], size=(batch, new_tokens), dtype=np.int64)
        elif name == "attention_mask":
            feed[name] = np.ones((batch, past + new_tokens), dtype=np.int64)
        elif name == "position_ids":
            feed[name] = np.tile(np.arange(past, past + new_tokens, dtype=np.int64), (batch, 1))
        elif name == "use_cache_branch":
            feed[name] = np.array([past > 0])
        elif name.startswith("past_key_values."):
            shape = list(inp.shape)
            heads = shape[1] if isinstance(shape[1], int) else dims["kv_heads"]
            hd = shape[3] if len(shape) > 3 and isinstance(shape[3], int) else dims["head_dim"]
            dt = _NP_TYPES.get(inp.type, "float32")
            feed[name] = (rng.standard_normal((batch, heads, past, hd)) * 0.5).astype(dt)
        else:
            raise ModelLoadError(f"the graph has an input {name!r} ({inp.type}, {inp.shape}) this benchmark cannot feed")
    return feed


def _stats(times: Sequence[float], tokens: int) -> dict[str, float]:
    import numpy as np

    a = np.asarray(times) * 1e3
    med = float(np.median(a))
    return {"median_ms": med, "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "runs": int(a.size), "tokens_per_s": tokens / (med / 1e3) if med > 0 else None}


def _peak_rss_mb() -> float:
    """Peak RSS of this process in MiB: ``VmHWM`` on Linux (reset by exec, unlike ``ru_maxrss``, which
    keeps the forking parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform != "darwin" else 1024  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / scale


def _memory_probe(path: str, provider: str, threads: int, dims: dict[str, Any], cases: list, conn) -> None:
    """Child-process body: load the graph, run each case once, send back RSS figures (MiB)."""
    try:
        before = _peak_rss_mb()
        ort = _import_ort()
        sess = _make_session(ort, Path(path), provider, threads)
        for batch, new, past in cases:
            sess.run(None, make_feed(sess, dims, batch=batch, new_tokens=new, past=past))
        peak = _peak_rss_mb()
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


# --------------------------------------------------------------------------- bench


@dataclass
class _Loaded:
    info: ModelBench
    session: Any
    dims: dict[str, Any]


def _load(ort, folder, provider, threads, context, file_name=None, spinning=False) -> _Loaded:
    folder = Path(folder)
    onnx_path = find_onnx_file(folder, file_name)
    cfg = _read_config(folder)
    dims = model_dims(cfg)
    t0 = time.perf_counter()
    sess = _make_session(ort, onnx_path, provider, threads, spinning)
    load = time.perf_counter() - t0
    graph_bytes = sum(p.stat().st_size for p in folder.iterdir()
                      if p.is_file() and p.name.startswith(onnx_path.name))
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    fl = flops_per_token(dims, context)
    quantized = _is_quantized(onnx_path)
    info = ModelBench(path=str(folder), onnx_file=onnx_path.name, config=dims, file_bytes=graph_bytes,
                      folder_bytes=folder_bytes, params=count_params(dims), flops_per_token=fl["total"], flops=fl,
                      quantized=quantized, load_seconds=load, providers=list(sess.get_providers()))
    return _Loaded(info, sess, dims)


def _is_quantized(onnx_path: Path) -> bool | None:
    """Whether the folder's export report says ``int8``; None when there is no readable report."""
    report = onnx_path.parent / "export_report.json"
    try:
        return bool(json.loads(report.read_text()).get("int8"))
    except (OSError, ValueError):
        return None


def bench(model_dir: str | os.PathLike, baseline_dir: str | os.PathLike | None = None, *, provider: str = "cpu",
          threads: int | None = None, runs: int = 20, warmup: int = 3, prompt_lengths: Sequence[int] = (128, 512),
          decode_batches: Sequence[int] = (1, 8), context: int = 128, out: str | os.PathLike | None = None,
          write: bool = True, measure_memory: bool = True, file_name: str | None = None,
          spinning: bool = False) -> BenchReport:
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
        measure_memory: run the peak-RSS probe in a child process per model (default True).
        file_name: graph file inside the folders (default ``model.onnx`` or the only ``*.onnx``).
        spinning: let idle ORT intra-op threads spin-wait (ORT's default; default here False). With spinning,
            the threads of the session just timed keep spinning while the other one runs: on a 2-core
            machine the alternated decode step measured up to 1.7x slower than alone; without it the paired
            figures match single-model runs. Also applies to single-model runs so both kinds compare.

    Returns:
        :class:`BenchReport` (``.table()`` for the terminal table, ``.to_dict()`` as written to JSON).

    Raises:
        ModelLoadError, UnsupportedArchitectureError, ConfigError, DependencyMissingError.

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
    ort = _import_ort()
    _providers(ort, provider)

    loaded = [_load(ort, model_dir, provider, threads, context, file_name, spinning)]
    if baseline_dir is not None:
        loaded.append(_load(ort, baseline_dir, provider, threads, context, file_name, spinning))

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
    ratios = _ratios(model, baseline) if baseline else None
    settings = {
        "provider": provider, "threads": threads, "runs": runs, "warmup": warmup,
        "prompt_lengths": prompt_lengths, "decode_batches": decode_batches, "context": context,
        "alternating": baseline is not None, "timing_seconds": timing_seconds,
        "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_spinning": spinning,
        "onnxruntime": ort.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "flops_formula": "2*(L*(h*H*d + 2*h*K*d + H*d*h + 3*h*I) + V*h) + 4*L*H*d*T, T=context",
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


def _ratios(m: ModelBench, b: ModelBench) -> dict[str, float]:
    def r(x, y):
        return (x / y) if (x is not None and y) else None

    out: dict[str, float] = {}
    for case, st in m.latency.items():
        if case not in b.latency:
            continue
        out[f"latency.{case}"] = r(st["median_ms"], b.latency[case]["median_ms"])
        out[f"latency_p90.{case}"] = r(st["p90_ms"], b.latency[case]["p90_ms"])
        fr = r(st.get("flops_per_token"), b.latency[case].get("flops_per_token"))
        if fr:
            out[f"flops.{case}"] = fr
            out[f"latency_over_flops.{case}"] = out[f"latency.{case}"] / fr if out[f"latency.{case}"] else None
    out["flops_per_token"] = r(m.flops_per_token, b.flops_per_token)
    out["params"] = r(m.params, b.params)
    out["file_bytes"] = r(m.file_bytes, b.file_bytes)
    out["peak_rss_mb"] = r(m.peak_rss_mb, b.peak_rss_mb)
    return out
