"""Quality table of several models side by side (issue #15), drawn from measured ``compress eval`` reports.

Runs nothing: each ``--row LABEL=REPORT[+REPORT...]`` names one model and the eval report(s) measured on it
(several reports of one model, e.g. tasks split over two cores, are merged; a task measured twice is an
error). Prints a markdown table (one line per task, one column per model: the headline metric ± its standard
error, and n), and writes ``benchmarks/results/NAME.json`` and ``NAME.png`` (bars with ±1 SE).

The headline metric is ``acc_norm`` where lm-eval defines it (piqa, arc_*, hellaswag, openbookqa: the one model
cards and papers quote), else ``acc``; perplexity tasks show ``ppl``. Rows whose item counts differ between
models are flagged: comparisons need the same items.

    python benchmarks/quality_table.py --name quality_500 \\
        --row dense=results/eval500_dense_a.json+results/eval500_dense_b.json --row "20 %=results/eval500_p20.json"
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check_result_name, git_rev, load_json, write_json_result  # noqa: E402
from plots import RESULTS, pyplot, save_png  # noqa: E402

ORDER = ["wikitext2", "ptb", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq", "openbookqa",
         "mmlu"]
PPL = {"wikitext2", "ptb"}


def merge(paths: list[Path]) -> dict:
    """One model's reports -> task -> {"metric", "value", "stderr", "n", "protocol", "file"}."""
    out: dict = {}
    for p in paths:
        rep = load_json(p)
        for task, res in rep["results"].items():
            if task in out:
                raise SystemExit(f"{task} is measured in both {out[task]['file']} and {p}; give each task once")
            metric = "ppl" if task in PPL else ("acc_norm" if "acc_norm" in res else "acc")
            det = rep.get("details", {}).get(task, {})
            out[task] = {"metric": metric, "value": res[metric], "stderr": res.get(f"{metric}_stderr"),
                         "n": det.get("n"), "windows": det.get("windows"), "protocol": det.get("protocol"),
                         "file": str(p), "model": rep.get("config", {}).get("model")}
    return out


def _cell(t: dict | None) -> str:
    if t is None:
        return "–"
    if t["metric"] == "ppl":
        return f"{t['value']:.2f}"
    se = t["stderr"]
    se_s = f" ± {100 * se:.1f}" if isinstance(se, (int, float)) and math.isfinite(se) else ""
    return f"{100 * t['value']:.1f}{se_s}"


def table(rows: dict[str, dict]) -> str:
    labels = list(rows)
    tasks = [t for t in ORDER if any(t in r for r in rows.values())]
    tasks += sorted({t for r in rows.values() for t in r} - set(tasks))
    head = "| task | metric | n | " + " | ".join(labels) + " |"
    lines = [head, "|" + "---|" * (3 + len(labels))]
    for t in tasks:
        cells = [rows[lab].get(t) for lab in labels]
        present = [c for c in cells if c]
        ns = {c["n"] if c["metric"] != "ppl" else c["windows"] for c in present}
        n = "/".join(str(x) for x in sorted(ns, key=str)) + (" ⚠ differs" if len(ns) > 1 else "")
        if present and present[0]["metric"] == "ppl":
            n = f"{n} × 2048 tok"
        lines.append(f"| {t} | {present[0]['metric'] if present else ''} | {n} | "
                     + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(rows: dict[str, dict], name: str) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    tasks = [t for t in ORDER if t not in PPL and any(t in r for r in rows.values())]
    if not tasks:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 4))
    w = 0.8 / len(rows)
    for i, (lab, r) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * w for j in range(len(tasks))]
        vals = [100 * r[t]["value"] if t in r else float("nan") for t in tasks]
        errs = [100 * (r[t]["stderr"] or 0) if t in r else 0 for t in tasks]
        ax.bar(xs, vals, w, yerr=errs, capsize=2, label=lab)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({rows[next(iter(rows))].get(t, {}).get('metric', '')})" for t in tasks], fontsize=8)
    ax.set_ylabel("accuracy, % (±1 SE)")
    ax.legend(fontsize=8)
    ax.set_title(name)
    return save_png(fig, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", required=True, help="LABEL=REPORT[+REPORT...] (paths relative to benchmarks/)")
    ap.add_argument("--name", default="quality_table", help="output name under benchmarks/results/")
    a = ap.parse_args()
    check_result_name(ap, a.name, "quality_500")
    rows: dict[str, dict] = {}
    for spec in a.row:
        label, sep, files = spec.partition("=")
        if not sep or not files:
            ap.error(f"--row {spec!r}: use LABEL=REPORT[+REPORT...]")
        paths = []
        for f in files.split("+"):
            p = Path(f) if Path(f).is_absolute() or Path(f).is_file() else Path(__file__).resolve().parent / f
            if not p.is_file():
                ap.error(f"--row {label}: report {f!r} not found")
            paths.append(p)
        rows[label] = merge(paths)
    md = table(rows)
    print(md)
    out = RESULTS / f"{a.name}.json"
    write_json_result(out, {"about": "issue #15: models side by side from compress eval reports (benchmarks/quality_table.py)",
                     "git": git_rev(), "rows": rows, "markdown": md})
    png = plot(rows, a.name)
    print(f"wrote {out}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
