"""The picture next to a pruned model: ``pruning.png`` (loss and sparsity per step; kept heads and MLP
channels per layer)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: what a report says instead of naming its picture when matplotlib cannot be imported
NO_MATPLOTLIB = 'skipped: matplotlib is not installed (pip install "lorapress[plots]")'


def picture_note(name: str) -> str:
    """``name`` if a PNG can be drawn here, else :data:`NO_MATPLOTLIB` (for the report's ``picture`` key)."""
    import importlib.util

    return name if importlib.util.find_spec("matplotlib") is not None else NO_MATPLOTLIB


def write_prune_png(report: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Draw ``report`` (a ``compression_report.json``) to ``path``; returns None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    hist = report.get("history") or []
    kept = report.get("kept") or []
    wb = report.get("widths_before", {})
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = [h["step"] for h in hist]
    ax1.plot(steps, [h["loss"] for h in hist], color="tab:blue", lw=1, label="objective")
    if any("lm_loss" in h for h in hist):
        ax1.plot(steps, [h.get("lm_loss") for h in hist], color="tab:cyan", lw=1, label="LM loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(steps, [h["sparsity"] for h in hist], color="tab:red", lw=1.5, label="sparsity")
    ax2.set_ylabel("sparsity (prunable weights masked)")
    ax2.set_ylim(0, 1)
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(lines, [str(getattr(line, "get_label", lambda: "")()) for line in lines], loc="upper center", fontsize=8)
    ax1.set_title(f"{report.get('criterion', '')} · ratio {report.get('ratio_achieved', '')}")
    layers = [k["layer"] for k in kept]
    nh, ni = wb.get("num_attention_heads") or 1, wb.get("intermediate_size") or 1
    ax3.bar([i - 0.2 for i in layers], [len(k["heads"]) / nh for k in kept], width=0.4, label=f"heads (of {nh})")
    ax3.bar([i + 0.2 for i in layers], [len(k["channels"]) / ni for k in kept], width=0.4, label=f"MLP channels (of {ni})")
    ax3.set_xlabel("layer")
    ax3.set_ylabel("share kept")
    ax3.set_ylim(0, 1.05)
    ax3.legend(fontsize=8)
    ax3.set_title("kept per layer")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return p
