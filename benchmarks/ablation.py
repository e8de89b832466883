"""Small ablations at 50 %: moving-average λ ∈ {0, 0.5, 0.9, 0.99} and prune-every ∈ {1, 10, 20}, same
budget otherwise; WikiText-2 perplexity of each result (through `compress prune` and `compress eval`).

    python benchmarks/ablation.py --steps 60
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, dense_hf_dir, git_rev, load_json, machine, run_compress, write_result  # noqa: E402

RUNS = ROOT / "benchmarks" / ".runs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--lams", default="0,0.5,0.9,0.99")
    ap.add_argument("--prune-everys", default="1,10,20")
    ap.add_argument("--default-prune-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=8)
    a = ap.parse_args()
    dense = dense_hf_dir()
    runs = [("lam", float(x), {"--lam": x, "--prune-every": str(a.default_prune_every)}) for x in a.lams.split(",")]
    runs += [("prune_every", int(x), {"--prune-every": x}) for x in a.prune_everys.split(",")]
    rows = []
    for kind, val, opts in runs:
        out = RUNS / f"ablation-{kind}-{val}"
        if not (out / "compression_report.json").is_file():
            args = ["prune", dense, "--ratio", a.ratio, "--out", out, "--force", "--steps", a.steps,
                    "--batch-size", a.batch_size, "--seq-len", a.seq_len, "--eval-data", "none", "--quiet"]
            for k, v in opts.items():
                args += [k, v]
            run_compress(args)
        ev = out / "eval_report.json"
        if not ev.is_file():
            run_compress(["eval", out, "--tasks", "wikitext2", "--seq-len", 2048, "--max-windows", a.eval_windows,
                          "--out", ev, "-q"])
        ppl = load_json(ev)["results"]["wikitext2"]["ppl"]
        rows.append({"ablation": kind, "value": val, "wikitext2_ppl": ppl,
                     "prune_wall_s": load_json(out / "compression_report.json")["wall_time_s"]})
        print(rows[-1], flush=True)
        _write(a, rows, complete=False)  # partial results survive an interrupted run
    _write(a, rows, complete=True)


def _write(a, rows, complete: bool) -> None:
    write_result("ablation", {"complete": complete, "benchmark": "ablation λ and prune-every at 50%", "ratio": a.ratio, "steps": a.steps,
                              "batch_size": a.batch_size, "seq_len": a.seq_len, "rows": rows,
                              "protocol": f"WikiText-2, 2048-token windows, first {a.eval_windows}",
                              "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
