"""PNG plots of the benchmark results in ``benchmarks/results/`` (one per JSON; needs matplotlib).

Each benchmark script calls its function here after writing its JSON; running this file re-draws every
plot from the JSON already on disk, without re-running anything:

    python benchmarks/plots.py
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

#: where the benchmark scripts write their JSON and PNG files (common.py imports it from here)
RESULTS = Path(__file__).resolve().parent / "results"


def pyplot():
    """matplotlib's ``pyplot`` on the Agg backend, or None (with a note) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    return plt


def save_png(fig, name: str, folder: Path = RESULTS) -> Path:
    """Save ``fig`` as ``folder/NAME.png`` (default ``benchmarks/results/``)."""
    path = Path(folder) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return path


def plot_resources(d: dict, name: str = "resources") -> Path | None:
    """Peak memory above the loaded model and step time per mode."""
    plt = pyplot()
    rows = [r for r in d["rows"] if "error" not in r]
    if plt is None or not rows:
        return None
    modes = [r["mode"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.bar(modes, [r["peak_above_load_mb"] for r in rows], color=["C0" if "lora" in m else "C1" for m in modes])
    a1.set_ylabel("peak RSS above the loaded model (MiB)")
    a2.bar(modes, [r["step_s_median"] for r in rows], color=["C0" if "lora" in m else "C1" for m in modes])
    a2.set_ylabel("step time, median (s)")
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Scoring step: lora vs taylor (-gc: gradient checkpointing)")
    return save_png(fig, name)


def plot_mask_agreement(d: dict, name: str = "mask_agreement") -> Path | None:
    """Share of pruned channels chosen by both criteria, against the random expectation."""
    plt = pyplot()
    if plt is None or not d.get("rows"):
        return None
    rows = d["rows"]
    ratios = [f"{int(r['ratio'] * 100)}%" for r in rows]
    total = max(1, round(rows[0]["pruned_channels"] / max(1e-9, 1 - rows[0]["random_expectation_kept"])))
    rand = [r["pruned_channels"] / total for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([i - 0.2 for i in x], [r["pruned_channels_overlap"] for r in rows], 0.4, label="lora ∩ taylor (pruned channels)")
    ax.bar([i + 0.2 for i in x], rand, 0.4, label="random expectation")
    ax.set_xticks(list(x), ratios)
    ax.set_ylim(0, 1)
    ax.set_ylabel("overlap")
    ax.set_title(f"Mask agreement, lora vs taylor ({d.get('steps')} scoring steps)")
    ax.legend(fontsize=8)
    return save_png(fig, name)


def plot_ablation(d: dict, name: str = "ablation") -> Path | None:
    """WikiText-2 perplexity per λ and per prune-every."""
    plt = pyplot()
    if plt is None or not d.get("rows"):
        return None
    kinds = list(dict.fromkeys(r["ablation"] for r in d["rows"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, k in zip(axes[0], kinds):
        rs = [r for r in d["rows"] if r["ablation"] == k]
        ax.bar([str(r["value"]) for r in rs], [r["wikitext2_ppl"] for r in rs])
        ax.set_xlabel(k)
        ax.set_ylabel("WikiText-2 perplexity")
    fig.suptitle(f"Ablations at {int(d.get('ratio', 0.5) * 100)} %, {d.get('steps')} steps each")
    return save_png(fig, name)


def plot_onnx_latency(files: list[str], name: str = "onnx_latency") -> Path | None:
    """Latency ratio and FLOP ratio per case, for the newest result file of each model."""
    plt = pyplot()
    newest: dict[str, dict] = {}
    for f in sorted(files):  # names end in a UTC time stamp: the last one per model wins
        label = Path(f).stem.removeprefix("onnx_latency_").rsplit("_", 1)[0]
        newest[label] = json.loads(Path(f).read_text())
    if plt is None or not newest:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / (2 * len(newest))
    for i, (label, d) in enumerate(newest.items()):
        cases = list(d["model"]["latency"])
        r = d["ratios"]
        xs = range(len(cases))
        ax.bar([x + (2 * i) * width for x in xs], [r[f"latency.{c}"] for c in cases], width, label=f"{label}: latency")
        ax.bar([x + (2 * i + 1) * width for x in xs], [r.get(f"flops.{c}", r["flops_per_token"]) for c in cases], width,
               label=f"{label}: FLOPs", alpha=0.6)
        ax.set_xticks([x + width * (len(newest) - 0.5) for x in xs], cases)
    ax.set_ylabel("pruned / dense")
    ax.set_title("ONNX Runtime (CPU): latency vs FLOP ratio")
    ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, name, Path(sorted(files)[0]).parent)


def plot_screen(data: dict, name: str = "screen") -> Path | None:
    """Bar chart of a screening grid: WikiText-2 perplexity (log scale) per row, dense as a line."""
    plt = pyplot()
    if plt is None:
        return None
    rows = data.get("rows", [])
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4.2))
    ax.bar(range(len(rows)), [r["wikitext2"] for r in rows],
           color=["tab:orange" if r.get("evaluated_on") == "masked" else "tab:blue" for r in rows])
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_yscale("log")
    probed = [(i, r["after_last_mask_update"]["wikitext2"]) for i, r in enumerate(rows) if r.get("after_last_mask_update")]
    if probed:  # screen.py --probe-windows: what the recovery steps started from
        ax.scatter([i for i, _ in probed], [v for _, v in probed], marker="_", s=400, color="tab:red", zorder=3,
                   label="after the last mask update")
    if data.get("dense"):
        ax.axhline(data["dense"], color="k", lw=1, label=f"dense {data['dense']:.1f}")
        ax.axhline(3 * data["dense"], color="tab:green", lw=1, ls="--", label="3 × dense")
    if data.get("dense") or probed:
        ax.legend(fontsize=8)
    ax.set_ylabel("WikiText-2 perplexity")
    ev = data.get("eval", {})
    ax.set_title(f"ratio {data.get('ratio')}, {data.get('steps')} steps; {ev.get('windows')} × {ev.get('seq_len')} "
                 f"tokens (orange: masked model)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, name)


def plot_criterion_fidelity(data: dict) -> Path | None:
    """Spearman(criterion, taylor) per step and module kind; the LoRA recovery ratio on a third panel."""
    plt = pyplot()
    if plt is None:
        return None
    steps = data["steps"]
    xs = [s["step"] for s in steps]
    kinds = list(steps[0]["kinds"]) if steps else []
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for k in kinds:
        first = steps[0]["kinds"][k]
        if first.get("activation") is not None:
            a2.plot(xs, [s["kinds"][k]["activation"] for s in steps], label=f"activation, {k}")
            a2.plot(xs, [s["kinds"][k]["lora"] for s in steps], ls="--", label=f"lora, {k}")
            a2.plot(xs, [s["kinds"][k]["magnitude"] for s in steps], ls=":", label=f"magnitude, {k}")
        else:
            a1.plot(xs, [s["kinds"][k].get("lora") for s in steps], label=k)
        if first.get("recovery") is not None:
            a3.plot(xs, [s["kinds"][k]["recovery"] for s in steps], label=k)
    a1.set_title("Spearman(lora, taylor) per projection kind", fontsize=9)
    a2.set_title("Spearman(criterion, taylor), group scores (Eq. 4)", fontsize=9)
    a3.set_title("||B·dA|| / ||dB·A||", fontsize=9)
    a3.set_yscale("log")
    for ax in (a1, a2, a3):
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, "criterion_fidelity")


#: result name -> plot function (called by common.write_result)
PLOTTERS = {"resources": plot_resources, "mask_agreement": plot_mask_agreement, "ablation": plot_ablation,
            "criterion_fidelity": plot_criterion_fidelity}


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for stem, fn in PLOTTERS.items():
        p = RESULTS / f"{stem}.json"
        if p.is_file():
            fn(json.loads(p.read_text()))
    for p in sorted(RESULTS.glob("screen_*.json")):
        plot_screen(json.loads(p.read_text()), p.stem)
    files = glob.glob(str(RESULTS / "onnx_latency_*.json"))
    if files:
        plot_onnx_latency(files)


if __name__ == "__main__":
    main()
