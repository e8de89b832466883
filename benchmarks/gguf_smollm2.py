"""GGUF export of a real model (default the built-in SmolLM2-135M) in f32 and q8_0, validated in llama.cpp.

For each ``--types`` entry: ``export_gguf`` (validation on: next-token log-probs vs PyTorch, tokenizer ids vs
the HF tokenizer), then the written tokenizer metadata is compared with the packaged GGUF's own
(``tokenizer.ggml.*`` of the file the built-in model is read from: tokens, merges, pre-tokenizer, special ids),
and, unless ``--no-bench``, a short llama.cpp latency run of the exports side by side. Figures go to
``benchmarks/results/gguf_smollm2.json``.

Usage::

    python benchmarks/gguf_smollm2.py                     # smollm2-135m, f32 and q8_0, ~3 min on 2 cores
    python benchmarks/gguf_smollm2.py runs/pruned50 --types q8_0 --out-dir /tmp/gguf
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_json_result  # noqa: E402  (common also puts the repository on sys.path)


def _tokenizer_fields(path: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") or k.endswith(("attention.key_length", "head_count", "block_count")):
            out[k] = f.contents()
    return out


def _compare_with_source(ours: Path, source: Path) -> dict:
    a, b = _tokenizer_fields(ours), _tokenizer_fields(source)
    keys = sorted(k for k in set(a) | set(b) if k.startswith("tokenizer.ggml."))
    return {k: ("equal" if a.get(k) == b.get(k) else {"ours": _short(a.get(k)), "source": _short(b.get(k))})
            for k in keys}


def _short(v):
    return v if not isinstance(v, list) else {"len": len(v), "first": v[:3]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--types", default="f32,q8_0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=None, help="keep the exports here (default: a temporary folder)")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "gguf_smollm2.json"))
    args = ap.parse_args(argv)

    from compressor.modeling.loading import resolve_model
    from exporters import export_gguf
    from exporters.measure.gguf import bench_gguf

    src = resolve_model(args.model)
    source_gguf = Path(src.path) / src.gguf_file if src.gguf_file else None
    work = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="gguf_smollm2_"))
    results: dict = {"model": args.model, "threads": args.threads, "exports": {}}
    dirs = {}
    for t in [x for x in args.types.split(",") if x]:
        t0 = time.perf_counter()
        res = export_gguf(args.model, work / t, gguf_type=t, force=True, threads=args.threads)
        rep = res.report
        lp, tk = rep["validation"]["logprobs"], rep["validation"]["tokenizer"]
        entry = {
            "seconds": time.perf_counter() - t0, "file_bytes": res.files["model.gguf"],
            "architecture": rep["gguf"]["architecture"], "tensor_types": rep["gguf"]["tensor_types"],
            "f16_fallback": rep["gguf"]["f16_fallback"], "tokenizer": rep["tokenizer"],
            "tolerance": rep["tolerance"],
            "logprobs": {k: lp[k] for k in ("max_abs_diff", "mean_abs_diff", "mean_kl", "argmax_agreement",
                                            "argmax_gated", "near_ties", "passed")},
            "per_prompt": lp["prompts"], "tokenizer_checks": {"checks": tk["checks"], "passed": tk["passed"]},
            "validation_seconds": rep["validation"]["seconds"],
        }
        if source_gguf is not None:
            entry["tokenizer_vs_source_gguf"] = _compare_with_source(work / t / "model.gguf", source_gguf)
        results["exports"][t] = entry
        dirs[t] = work / t
        print(f"{t}: max|dlogp| {lp['max_abs_diff']:.3g} mean {lp['mean_abs_diff']:.3g} KL {lp['mean_kl']:.3g} "
              f"argmax {lp['argmax_agreement']:.2f}, tokenizer {tk['checks']} checks OK, "
              f"{entry['file_bytes'] / 2**20:.1f} MiB, {entry['seconds']:.0f} s", flush=True)
    if not args.no_bench and len(dirs) >= 1:
        names = list(dirs)
        rep = bench_gguf(dirs[names[-1]], dirs[names[0]] if len(names) > 1 else None, threads=args.threads, runs=3,
                         warmup=1, prompt_lengths=(128,), context=128, decode_tokens=16, write=False)
        print(rep.table())
        results["bench"] = {"model": names[-1], "baseline": names[0] if len(names) > 1 else None, **rep.to_dict()}
    write_json_result(args.results, results)
    print(f"Results: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
