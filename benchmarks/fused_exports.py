"""Export models in every ONNX format (optimum, optimum + ``--optimize``, onnx-genai fp32 / int4), validated,
and record what each graph holds: nodes ONNX Runtime runs, fused ops, parity, int4 quality. No timing.

Each MODEL (anything ``compress export`` accepts) is exported into ``--export-dir/<label>_<format>``; the
summary goes to ``benchmarks/results/fused_exports_<name>.json``. The folders are then ready for
``compress bench`` (the lead times them on an idle machine, see the latency tables in docs/results.md)::

    python benchmarks/fused_exports.py smollm2-135m /tmp/fused-sm50 --labels dense,p50 \\
        --export-dir /tmp/fused --name smollm2
    compress bench /tmp/fused/p50_onnx-genai --baseline /tmp/fused/dense_onnx-genai --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, machine, write_result  # noqa: E402

FORMATS = ("onnx", "onnx-optimized", "onnx-genai", "onnx-genai-int4")


def export_one(spec: str, out: Path, fmt: str, threads: int | None) -> dict:
    from exporters import export_onnx
    from exporters.onnx.genai import export_onnx_genai

    t0 = time.perf_counter()
    if fmt.startswith("onnx-genai"):
        res = export_onnx_genai(spec, out, precision="int4" if fmt.endswith("int4") else "fp32", force=True,
                                threads=threads)
        graph = res.report["graph"]
    else:
        res = export_onnx(spec, out, optimize=fmt == "onnx-optimized", force=True, threads=threads)
        graph = res.report["optimize"]["after"] if fmt == "onnx-optimized" else None
    if graph is None:
        from exporters.onnx.graph_ops import op_counts

        graph = op_counts(out / "model.onnx")
    val = res.report["validation"]
    par = val.get("parity") or {}
    return {
        "folder": str(out), "seconds": time.perf_counter() - t0,
        "graph_bytes": sum(v for k, v in res.files.items() if ".onnx" in k),
        "nodes_stored": graph["stored"]["nodes"], "nodes_ort": graph["ort_optimized"]["nodes"],
        "fused_ort": graph["ort_optimized"]["fused"],
        "parity": {k: par.get(k) for k in ("passed", "max_abs_diff", "judged_by", "batch", "decode_steps",
                                           "left_padded_row")},
        "parity_per_output": {k: {kk: v.get(kk) for kk in ("max_abs_diff", "tol", "max_abs_diff_vs_fp64",
                                                           "pt_fp32_error_vs_fp64", "tol_fp64")}
                              for k, v in (par.get("per_output") or {}).items()},
        "generate_all_equal": (val.get("generate") or {}).get("all_equal"),
        "generate_passed": (val.get("generate") or {}).get("passed"),
        "int4": {k: val["int4"][k] for k in ("nll_fp32", "nll_int4", "rel_nll_increase", "top1_agreement",
                                             "top1_agreement_positions", "mean_abs_logit_diff", "input", "passed")}
        if "int4" in val else None,
        "int4_settings": res.report.get("int4_settings"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="models to export (HF folder, .gguf, built-in name)")
    ap.add_argument("--labels", default=None, help="comma-separated labels, one per model (default m0,m1,...)")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"subset of {','.join(FORMATS)}")
    ap.add_argument("--export-dir", required=True, type=Path)
    ap.add_argument("--name", default="run", help="results file: benchmarks/results/fused_exports_<name>.json")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for validation")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [f"m{i}" for i in range(len(args.models))]
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in FORMATS]
    if bad or len(labels) != len(args.models):
        ap.error(f"unknown formats {bad} (valid: {', '.join(FORMATS)})" if bad else "one label per model")
    results: dict = {"git": git_rev(), "machine": machine(), "models": dict(zip(labels, args.models)), "exports": {}}
    for label, spec in zip(labels, args.models):
        for fmt in formats:
            out = args.export_dir / f"{label}_{fmt}"
            print(f"== {label} {fmt} -> {out}", flush=True)
            try:
                results["exports"][f"{label}/{fmt}"] = r = export_one(spec, out, fmt, args.threads)
                print(f"   nodes run by ORT {r['nodes_ort']}, parity {r['parity']['max_abs_diff']:.3g} "
                      f"({r['parity']['judged_by']}), generate equal {r['generate_all_equal']}, "
                      f"{r['seconds']:.0f} s" + (f", int4 NLL {r['int4']['rel_nll_increase']:+.2%}" if r["int4"] else ""),
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - recorded, the other exports still run
                results["exports"][f"{label}/{fmt}"] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
    write_result(f"fused_exports_{args.name}", results)
    return 0 if all("error" not in v for v in results["exports"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
