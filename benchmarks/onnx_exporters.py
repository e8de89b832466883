"""The two ONNX exporters side by side: torch's own (``--exporter torch``, the default, no optimum) and optimum's
(``--exporter optimum``, the floor stack), on the same pruned model and its dense baseline.

Each of PRUNED and DENSE (anything ``compress export`` accepts) is exported and validated with every exporter that
imports here (optimum only where the ``optimum`` extra is installed, i.e. transformers < 4.58) into
``--export-dir/<label>_<exporter>``; then ONNX Runtime times, each pair alternating in one run
(:func:`exporters.measure.ort`): pruned against dense per exporter (latency, FLOP and bytes ratios), and each
exporter's graph against the other's for the same model (graph overhead). Nodes ORT runs per graph come from
:func:`exporters.onnx.graph_ops.op_counts`. JSON + PNG: ``benchmarks/results/onnx_exporters_<name>.*``.

    python benchmarks/onnx_exporters.py runs/smollm2-50 smollm2-135m --export-dir /tmp/onx --name smollm2-50

Run it on an otherwise idle machine (wall-clock latencies), in an environment with the ``optimum`` extra to get
both columns.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check_result_name, git_rev, machine, write_result  # noqa: E402

CASES = ("prefill_128", "prefill_512", "decode_b1", "decode_b8")


def exporters_here() -> list[str]:
    have_optimum = importlib.util.find_spec("optimum") is not None and \
        importlib.util.find_spec("optimum.exporters") is not None
    return ["torch"] + (["optimum"] if have_optimum else [])


def export(spec: str, out: Path, exporter: str, threads: int) -> dict:
    from exporters import export_onnx
    from exporters.onnx.graph_ops import op_counts

    if (out / "model.onnx").is_file() and (out / "export_report.json").is_file():
        from common import load_json

        rep = load_json(out / "export_report.json")
    else:
        t0 = time.perf_counter()
        rep = export_onnx(spec, out, force=True, exporter=exporter, threads=threads).report
        rep["wall_s"] = round(time.perf_counter() - t0, 1)
    val = rep.get("validation", {})
    counts = op_counts(out / "model.onnx", session_optimized=True)
    return {"folder": out.name, "exporter": rep.get("exporter", exporter),
            "parity_max_abs_diff": (val.get("parity") or {}).get("max_abs_diff"),
            "generate": {k: v for k, v in (val.get("generate") or {}).items() if k in ("passed", "runner", "prompts")},
            "export_seconds": rep.get("export_seconds"), "nodes": counts["stored"]["nodes"],
            "nodes_ort_runs": counts["ort_optimized"]["nodes"]}


def pair(model: Path, baseline: Path, runs: int, threads: int) -> dict:
    from exporters.measure import ort as bench

    rep = bench(model, baseline, runs=runs, threads=threads, write=False, measure_memory=False)
    keep = [f"{k}.{c}" for c in CASES for k in ("latency", "flops", "latency_over_flops", "bytes",
                                               "latency_over_bytes")]
    ratios = {k: v for k, v in (rep.ratios or {}).items() if k in keep and v is not None}
    ms = {c: (rep.model.latency[c]["median_ms"], rep.baseline.latency[c]["median_ms"])  # type: ignore[union-attr]
          for c in CASES if c in rep.model.latency}
    print(rep.table(), flush=True)
    return {"model": model.name, "baseline": baseline.name, "ratios": ratios, "median_ms": ms}


def plot(d: dict, name: str) -> None:
    from plots import pyplot, save_png

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    exps = [e for e in d["exporters"] if f"pruned_vs_dense_{e}" in d]
    width = 0.8 / max(len(exps) + 1, 1)
    xs = range(len(CASES))
    for i, e in enumerate(exps):
        r = d[f"pruned_vs_dense_{e}"]["ratios"]
        ax.bar([x + i * width for x in xs], [r.get(f"latency.{c}", 0) for c in CASES], width, label=f"{e}: latency")
    r0 = d[f"pruned_vs_dense_{exps[0]}"]["ratios"]
    ideal = [r0.get(f"flops.{c}") if c.startswith("prefill") else r0.get(f"bytes.{c}") for c in CASES]
    ax.bar([x + len(exps) * width for x in xs], [v or 0 for v in ideal], width, color="grey",
           label="FLOP ratio (prefill) / bytes ratio (decode)")
    ax.set_xticks([x + width * len(exps) / 2 for x in xs], CASES)
    ax.set_ylabel("pruned / dense")
    ax.set_title(f"ONNX Runtime, pruned/dense by exporter ({name})")
    ax.legend(fontsize=8)
    save_png(fig, f"onnx_exporters_{name}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pruned")
    ap.add_argument("dense")
    ap.add_argument("--export-dir", type=Path, required=True, help="where the exported folders go (reused if there)")
    ap.add_argument("--name", required=True, help="result stem: benchmarks/results/onnx_exporters_NAME.*")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    check_result_name(ap, args.name, "smollm2-50")
    exps = exporters_here()
    out: dict = {"command": "python benchmarks/onnx_exporters.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "git": git_rev(), "machine": machine(), "exporters": exps, "runs": args.runs,
                 "threads": args.threads, "exports": {}}
    import transformers

    out["machine"]["transformers"] = transformers.__version__
    folders: dict[tuple[str, str], Path] = {}
    for label, spec in (("pruned", args.pruned), ("dense", args.dense)):
        for e in exps:
            folder = args.export_dir / f"{label}_{e}"
            out["exports"][f"{label}_{e}"] = export(spec, folder, e, args.threads)
            folders[(label, e)] = folder
    for e in exps:
        out[f"pruned_vs_dense_{e}"] = pair(folders[("pruned", e)], folders[("dense", e)], args.runs, args.threads)
    if "optimum" in exps:
        for label in ("pruned", "dense"):
            out[f"torch_vs_optimum_{label}"] = pair(folders[(label, "torch")], folders[(label, "optimum")],
                                                    args.runs, args.threads)
    write_result(f"onnx_exporters_{args.name}", out)
    plot(out, args.name)


if __name__ == "__main__":
    main()
