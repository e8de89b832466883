"""Ratio -> perplexity curve of the default command (issue #11), drawn from measured ``compress eval`` reports.

Runs nothing: it collects the WikiText-2 / PTB perplexities already measured (``benchmarks/results/eval-*.json``,
each written by ``compress eval OUT --tasks wikitext2,ptb --seq-len 2048 --max-windows N``) into
``benchmarks/results/ratio_curve.json`` and ``ratio_curve.png``. Two protocols are kept apart, never mixed in
one line: the first 20 windows of 2048 tokens (this round's), and the first 8 (the earlier rounds', where the
paper recipe was measured).

    python benchmarks/ratio_curve.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DENSE_WIKITEXT2_20, eval_ppl, load_json, write_result  # noqa: E402
from plots import RESULTS, pyplot, save_png  # noqa: E402

#: series -> {ratio: eval report (20 windows)}; a missing file is skipped and listed as not measured
SERIES_20 = {
    "defaults until 2026-12-04 (activation, compensate, distill 0.5, lr 5e-4, 150 steps)": {
        0.2: "eval-smollm2-20-v2.json", 0.3: "eval-smollm2-30-default.json", 0.5: "eval-smollm2-50-v2.json"},
    "the same with lr 1e-3": {
        0.2: "eval-smollm2-20-lr1e-3.json", 0.3: "eval-smollm2-30-lr1e-3.json", 0.5: "eval-smollm2-50-lr1e-3.json"},
    "2026-12-04 (lr 1e-3, compensation statistics on 65,536 tokens, 150 steps, float32)": {
        0.2: "eval-smollm2-20-ct64k.json", 0.3: "eval-smollm2-30-ct64k.json", 0.5: "eval-smollm2-50-ct64k.json"},
    "default of 2026-12-04's last stop (the same, 250 steps, --amp auto)": {
        0.2: "eval-smollm2-20-amp250.json", 0.3: "eval-smollm2-30-amp250.json", 0.5: "eval-smollm2-50-amp250.json"},
    "the default with --widths adaptive (per-layer MLP widths; remote-code output; 20 %: prune until 0.5), 2026-12-05": {
        0.2: "eval-smollm2-20-adaptive250.json", 0.5: "eval-smollm2-50-adaptive-pu04-250.json"},
    "learning rate by ratio (1e-3 below 25 %, 2e-3 from 25 %), prune until 50 % of the steps, 2026-12-05": {
        0.2: "eval-smollm2-20-amp250.json", 0.3: "eval-smollm2-30-lr2e-3-250.json", 0.5: "eval-smollm2-50-lr2e-3-250.json"},
    "default since 2026-12-05 (the same, prune until 40 % of the steps)": {
        0.2: "eval-smollm2-20-pu04-250.json", 0.3: "eval-smollm2-30-default-20261205.json",
        0.5: "eval-smollm2-50-pu04-250.json"},
}
#: the 8-window protocol (first 8 x 2048 tokens, dense 19.13): summary file of earlier rounds
EIGHT = "eval-smollm2-v2-8windows.json"
DENSE_20 = {"wikitext2": DENSE_WIKITEXT2_20["smollm2-135m"][0],
            "source": f"{DENSE_WIKITEXT2_20['smollm2-135m'][1]} (dense, first 20 x 2048)"}


def _ppl(path: Path, task: str) -> float | None:
    return eval_ppl(load_json(path), task) if path.is_file() else None  # None: file missing or task not measured


def collect() -> dict:
    out: dict = {"protocol_20": "first 20 non-overlapping 2048-token windows, no BOS",
                 "dense_20": DENSE_20, "series_20": {}, "not_measured": []}
    for name, files in SERIES_20.items():
        pts = []
        for ratio, f in sorted(files.items()):
            w, p = _ppl(RESULTS / f, "wikitext2"), _ppl(RESULTS / f, "ptb")
            if w is None:
                out["not_measured"].append(f"{name} at {ratio}: {f} missing")
                continue
            pts.append({"ratio": ratio, "wikitext2": w, "ptb": p, "x_dense": round(w / DENSE_20["wikitext2"], 3),
                        "file": f})
        out["series_20"][name] = pts
    e8 = RESULTS / EIGHT
    if e8.is_file():
        d = load_json(e8)
        out["protocol_8"] = d.get("protocol")
        out["dense_8"] = d.get("dense")
        out["series_8"] = {
            "default": [{"ratio": r, "wikitext2": d[k]} for r, k in ((0.2, "smollm2-20-v2"), (0.3, "smollm2-30-v2"),
                                                                     (0.5, "smollm2-50-v2")) if k in d],
            "paper recipe (lora, no distillation, 200 steps)": [
                {"ratio": r, "wikitext2": d["previous_defaults"][k]} for r, k in ((0.2, "smollm2-20"), (0.5, "smollm2-50"))
                if k in d.get("previous_defaults", {})],
        }
    out["not_measured"].append("magnitude at the default budget (only on the 30-step grid of 2026-11-25)")
    return out


def plot(d: dict) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
    ax = axes[0]
    for name, pts in d["series_20"].items():
        ax.plot([0] + [p["ratio"] for p in pts], [d["dense_20"]["wikitext2"]] + [p["wikitext2"] for p in pts], "o-",
                label=name)
    ax.axhline(d["dense_20"]["wikitext2"], color="k", lw=1, label="dense")
    ax.plot([0.2, 0.5], [d["dense_20"]["wikitext2"] * 1.3, d["dense_20"]["wikitext2"] * 3], "gx", ms=10, mew=2,
            ls="none", label="targets (1.3x dense at 20 %, 3x at 50 %)")
    ax.set_title("WikiText-2, first 20 x 2048 tokens", fontsize=9)
    if "series_8" in d:
        bx = axes[1]
        for name, pts in d["series_8"].items():
            if pts:
                bx.plot([0] + [p["ratio"] for p in pts], [d["dense_8"]] + [p["wikitext2"] for p in pts], "o-", label=name)
        bx.axhline(d["dense_8"], color="k", lw=1, label="dense")
        bx.set_title("WikiText-2, first 8 x 2048 tokens (earlier protocol)", fontsize=9)
    for a in axes:
        a.set_yscale("log")
        a.set_xlabel("ratio of prunable parameters removed")
        a.set_ylabel("perplexity")
        a.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(0.0, -0.18))  # below the axes: the lines fill them
    fig.suptitle("SmolLM2-135M, 2 CPU cores, <= 30 min a run", fontsize=10)
    return save_png(fig, "ratio_curve")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    d = collect()
    print(json.dumps(d, indent=1))
    write_result("ratio_curve", d)  # atomic, the project's JSON writer
    plot(d)


if __name__ == "__main__":
    main()
