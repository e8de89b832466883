"""llama.cpp latency of a GGUF export (``compress bench GGUF_DIR``), optionally side by side with a baseline.

Same report as the ONNX benchmark (:class:`exporters.measure.report.BenchReport`), measured through llama.cpp's
server in-process (:class:`exporters.gguf.llamacpp.LlamaCpp`, one slot, CPU, ``threads`` threads, f16 KV cache as
llama.cpp runs by default) and timed by the server itself (``timings`` of each completion):

* **prefill_N**: ``prompt_ms`` of a batch-1 prompt of ``N`` random token ids (prompt cache off);
* **decode_b1**: ``predicted_ms / predicted_n`` of ``decode_tokens`` greedy tokens after a prompt of
  ``context`` ids, i.e. the mean one-token decode step on a KV cache of ``context`` .. ``context +
  decode_tokens`` positions (the ONNX benchmark times one step at exactly ``context``).

Decode at batch size > 1 is not measured (one server slot; the ONNX benchmark feeds a batched cache, llama.cpp's
server would run separate sequences): requested batch sizes > 1 are listed in ``notes``. Peak RSS is not
measured for GGUF. Sizes for the parameter and FLOP counts come from the GGUF metadata
(:func:`gguf_dims`). With a baseline both files are loaded and timed alternately, as in the ONNX benchmark.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError, ModelLoadError
from compressor.core.io import write_json
from compressor.modeling.flops import FLOPS_FORMULA
from exporters.gguf.llamacpp import LlamaCpp, import_llamacpp
from exporters.measure.inputs import count_params, flops_per_token
from exporters.measure.report import BENCH_REPORT_FILE, BenchReport, ModelBench, check_report_free, compare


def find_gguf_file(path: str | os.PathLike) -> Path | None:
    """The ``.gguf`` file of ``path`` (a ``.gguf`` file, or a folder with ``model.gguf`` or exactly one
    ``*.gguf``), else None."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir():
        if (p / "model.gguf").is_file():
            return p / "model.gguf"
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
    return None


def gguf_dims(path: Path) -> tuple[dict[str, Any], str]:
    """``(ModelSizes fields, weight type name)`` from a GGUF file's metadata and tensor list."""
    from gguf import GGUFReader, LlamaFileType

    try:
        r = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct errors on a bad file
        raise ModelLoadError(f"cannot read GGUF file {str(path)!r}: {exc}") from exc

    def field(key: str, default: Any = None) -> Any:
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch not in ("llama", "qwen2", "deci"):
        raise ModelLoadError(f"{str(path)!r} has GGUF architecture {arch!r}; the benchmark counts llama, qwen2 and "
                             f"deci (per-layer widths)")
    names = {t.name for t in r.tensors}
    layers = int(field(f"{arch}.block_count"))

    def per_layer(key: str, default: Any = None) -> list[int]:  # deci's widths are arrays, one entry a layer
        v = field(key, default)
        return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * layers

    heads_l = per_layer(f"{arch}.attention.head_count")
    kv_l = per_layer(f"{arch}.attention.head_count_kv", heads_l[0])
    ff_l = per_layer(f"{arch}.feed_forward_length")
    heads = max(heads_l)
    hidden = int(field(f"{arch}.embedding_length"))
    tokens = r.fields.get("tokenizer.ggml.tokens")
    dims = {
        "model_type": arch, "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": max(kv_l),
        "head_dim": int(field(f"{arch}.attention.key_length", hidden // heads)), "intermediate": max(ff_l),
        "vocab": int(field(f"{arch}.vocab_size", len(tokens.data) if tokens is not None else 0)),
        "tied": "output.weight" not in names, "attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": False,
        "layer_heads": heads_l, "layer_kv_heads": kv_l, "layer_intermediate": ff_l,
    }
    ft = field("general.file_type")
    try:
        kind = LlamaFileType(int(ft)).name if ft is not None else "unknown"
    except ValueError:
        kind = str(ft)
    return dims, kind


def _stats(times_ms: Sequence[float], tokens: int) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(times_ms, dtype=float)
    med = float(np.median(a))
    return {"median_ms": med, "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "runs": int(a.size), "tokens_per_s": tokens / (med / 1e3) if med > 0 else None}


def bench_gguf(model_path: str | os.PathLike, baseline_path: str | os.PathLike | None = None, *,
               threads: int | None = None, runs: int = 5, warmup: int = 1, prompt_lengths: Sequence[int] = (128, 512),
               decode_batches: Sequence[int] = (1,), context: int = 128, decode_tokens: int = 16,
               out: str | os.PathLike | None = None, write: bool = True, force: bool = False) -> BenchReport:
    """Benchmark a GGUF export in llama.cpp, optionally against a baseline GGUF.

    Args:
        model_path: a folder written by :func:`exporters.export_gguf` or a ``.gguf`` file.
        baseline_path: a second one, timed alternately.
        threads: llama.cpp CPU threads (default ``os.cpu_count()``).
        runs: timed runs per case (default 5); warmup: untimed runs per case first (default 1).
        prompt_lengths: prefill prompt lengths (default 128, 512).
        decode_batches: only 1 is measured (see module docstring); others are noted.
        context: prompt length before the decode tokens (default 128).
        decode_tokens: tokens generated per decode run (default 16).
        out: folder for ``bench_report.json`` (default: the model's folder); write: write it (default True).
        force: replace an existing ``bench_report.json`` there (default False: refused before any timing).

    Returns:
        :class:`BenchReport` (``provider`` ``"llama.cpp-cpu"``).

    Raises:
        ModelLoadError (no GGUF file), ConfigError, DependencyMissingError (no xllamacpp), OutputExistsError
        (``bench_report.json`` exists where it would be written and ``force`` is False).

    Example:
        >>> print(bench_gguf("pruned_gguf", "dense_gguf", runs=3).table())     # doctest: +SKIP
    """
    if threads is None:
        threads = os.cpu_count() or 1
    for name, val, lo in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0), ("context", context, 1),
                          ("decode_tokens", decode_tokens, 2)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {val!r}")
    prompt_lengths = [int(x) for x in prompt_lengths]
    if any(x < 1 for x in prompt_lengths):
        raise ConfigError(f"prompt lengths must be >= 1, got {prompt_lengths}")
    paths = []
    for p in [model_path] + ([baseline_path] if baseline_path is not None else []):
        f = find_gguf_file(p)
        if f is None:
            raise ModelLoadError(f"{str(p)!r} is not a .gguf file or a folder with one (model.gguf); export it with "
                                 f"`compress export MODEL --format gguf --out DIR`")
        paths.append(f)
    if write:
        check_report_free(Path(out) if out is not None else paths[0].parent, force)
    import_llamacpp("GGUF benchmarking")
    notes = [f"decode batch {b} not measured: llama.cpp is timed through one server slot (batch 1)"
             for b in decode_batches if int(b) != 1]
    n_ctx = max(prompt_lengths + [context + decode_tokens]) + 8
    loaded = []
    for f in paths:
        dims, kind = gguf_dims(f)
        t0 = time.perf_counter()
        lc = LlamaCpp(f, n_ctx=n_ctx, threads=threads, kv_f32=False)
        load = time.perf_counter() - t0
        fl = flops_per_token(dims, context)
        info = ModelBench(path=str(f.parent), onnx_file=f.name, config=dims, file_bytes=f.stat().st_size,
                          folder_bytes=sum(x.stat().st_size for x in f.parent.iterdir() if x.is_file()),
                          params=count_params(dims), flops_per_token=fl["total"], flops=fl,
                          quantized=kind not in ("ALL_F32", "MOSTLY_F16"), load_seconds=load,
                          providers=[f"llama.cpp ({kind})"], notes=list(notes))
        loaded.append((info, lc, dims))
    import numpy as np

    rng = np.random.default_rng(0)
    cases: dict[str, tuple[int, int]] = {f"prefill_{n}": (n, 1) for n in prompt_lengths}
    cases["decode_b1"] = (context, decode_tokens)
    t_start = time.perf_counter()
    try:
        for name, (n_prompt, n_new) in cases.items():
            ids = [rng.integers(0, d["vocab"], size=n_prompt).tolist() for _, _, d in loaded]
            for _ in range(warmup):
                for j, (_, lc, _) in enumerate(loaded):
                    lc.timed_completion(ids[j], n_new)
            times: list[list[float]] = [[] for _ in loaded]
            for i in range(runs):
                order = range(len(loaded)) if i % 2 == 0 else reversed(range(len(loaded)))
                for j in order:
                    t = loaded[j][1].timed_completion(ids[j], n_new)
                    if name.startswith("prefill"):
                        times[j].append(float(t["prompt_ms"]))
                    else:
                        times[j].append(float(t["predicted_ms"]) / max(1, int(t["predicted_n"])))
            for (info, _, d), ts in zip(loaded, times):
                prefill = name.startswith("prefill")
                info.latency[name] = _stats(ts, n_prompt if prefill else 1)
                # FLOPs per token at the mean attention context of the timed tokens
                mean_ctx = (n_prompt + 1) / 2 if prefill else context + (n_new + 1) / 2
                info.latency[name]["flops_per_token"] = flops_per_token(d, mean_ctx)["total"]
    finally:
        for _, lc, _ in loaded:
            lc.close()
    timing_seconds = time.perf_counter() - t_start
    model, baseline = loaded[0][0], (loaded[1][0] if len(loaded) > 1 else None)
    settings = {
        "provider": "llama.cpp-cpu", "threads": threads, "runs": runs, "warmup": warmup,
        "prompt_lengths": prompt_lengths, "decode_batches": [1], "context": context, "decode_tokens": decode_tokens,
        "alternating": baseline is not None, "timing_seconds": timing_seconds, "timing": "server timings",
        "kv_cache": "f16", "xllamacpp": _version("xllamacpp"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "flops_formula": FLOPS_FORMULA,
    }
    report = BenchReport(model=model, baseline=baseline, ratios=compare(model, baseline) if baseline else None,
                         settings=settings)
    if write:
        dest = Path(out) if out is not None else paths[0].parent
        if dest.exists() and not dest.is_dir():
            raise ConfigError(f"--out {str(dest)!r} is an existing file; give a folder")
        dest.mkdir(parents=True, exist_ok=True)
        write_json(dest / BENCH_REPORT_FILE, report.to_dict())
        report.json_path = dest / BENCH_REPORT_FILE
    return report


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
