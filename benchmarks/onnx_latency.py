"""ONNX Runtime latency of a pruned model against its dense baseline, side by side.

Each of MODEL and BASELINE may be an exported ONNX folder (used as is) or anything ``compress export``
accepts (HF folder, ``.gguf`` file, built-in name), which is first exported to ONNX (validated) into
``--export-dir`` (default: a temporary folder removed at the end). Both graphs are then timed in the same
run, alternately (see :func:`exporters.measure.ort`), and the figures are printed and written to
``benchmarks/results/onnx_latency_<name>_<UTC time>.json``.

Usage::

    python benchmarks/onnx_latency.py runs/pruned50 /tmp/sm_hf --runs 20 --threads 4
    python benchmarks/onnx_latency.py pruned_onnx/ dense_onnx/ --prompt-lengths 128 --decode-batches 1,8
    python benchmarks/onnx_latency.py runs/pruned50 smollm2-135m --int8 --export-dir /tmp/onnx_exports

Keep machine load steady while it runs (the figures are wall-clock latencies).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_json_result  # noqa: E402  (common also puts the repository on sys.path)

from compressor.core.errors import CompressError


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def ensure_onnx(spec: str, work: Path, label: str, *, int8: bool, force: bool, threads: int | None) -> tuple[Path, dict]:
    """Return an ONNX folder for ``spec``: itself if it already is one, else a fresh validated export."""
    from compressor.modeling.loading import is_onnx_folder

    if is_onnx_folder(spec):
        return Path(spec), {"exported": False}
    from exporters import export_onnx

    out = work / f"{label}_onnx{'_int8' if int8 else ''}"
    t0 = time.perf_counter()
    res = export_onnx(spec, out, force=force, int8=int8, threads=threads)
    val = res.report.get("validation", {})
    info = {"exported": True, "source": spec, "seconds": time.perf_counter() - t0,
            "parity_max_abs_diff": (val.get("parity") or {}).get("max_abs_diff"),
            "int8": val.get("int8")}
    print(f"exported {spec} -> {out} in {info['seconds']:.1f} s "
          f"(parity max |diff| {info['parity_max_abs_diff']})", flush=True)
    return out, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="pruned model: ONNX folder, HF folder, .gguf or built-in name")
    ap.add_argument("baseline", help="dense baseline: ONNX folder, HF folder, .gguf or built-in name")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per case (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per case (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default os.cpu_count())")
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--prompt-lengths", type=_ints, default=[128, 512], help="prefill lengths (default 128,512)")
    ap.add_argument("--decode-batches", type=_ints, default=[1, 8], help="decode batch sizes (default 1,8)")
    ap.add_argument("--context", type=int, default=128, help="KV-cache length for decode (default 128)")
    ap.add_argument("--int8", action="store_true", help="export HF inputs with dynamic int8 quantization")
    ap.add_argument("--export-dir", type=Path, default=None, help="keep exports here (default: temporary)")
    ap.add_argument("--force", action="store_true", help="replace existing exports in --export-dir")
    ap.add_argument("--name", default=None, help="name in the results file (default: model folder name)")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from exporters.measure import ort as bench

    tmp = None
    work = args.export_dir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="onnx_latency-")
        work = Path(tmp.name)
    try:
        model_dir, model_info = ensure_onnx(args.model, work, "model", int8=args.int8, force=args.force,
                                            threads=args.threads)
        base_dir, base_info = ensure_onnx(args.baseline, work, "baseline", int8=args.int8, force=args.force,
                                          threads=args.threads)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        rep = bench(model_dir, base_dir, provider=args.provider, threads=args.threads, runs=args.runs,
                    warmup=args.warmup, prompt_lengths=args.prompt_lengths, decode_batches=args.decode_batches,
                    context=args.context, write=False)
    except CompressError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(rep.table())
    name = args.name or Path(str(args.model).rstrip("/")).name
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.results_dir / f"onnx_latency_{name}_{stamp}.json"
    data = rep.to_dict()
    data["inputs"] = {"model": {"spec": args.model, **model_info}, "baseline": {"spec": args.baseline, **base_info},
                      "argv": sys.argv[1:] if argv is None else list(argv), "cwd": os.getcwd()}
    write_json_result(path, data)  # paths relative to the repository or the folder's name
    from plots import plot_onnx_latency

    plot_onnx_latency([str(p) for p in args.results_dir.glob("onnx_latency_*.json")])
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
