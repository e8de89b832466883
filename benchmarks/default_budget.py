"""Default-budget runs (issue #11): the product's own ``compress prune`` + ``compress eval``, one JSON table.

A row is one full ``compress prune MODEL --ratio R [OPTIONS]`` run at the default budget (250 steps, about 17 min
on 2 cores for SmolLM2-135M), then ``compress eval OUT --tasks wikitext2,ptb --seq-len 2048 --max-windows 20`` on
its output. The prune report and its picture are copied to ``benchmarks/results/prune_NAME.*`` and the eval
report to ``eval-NAME.json``; then the table ``default_budget.json`` / ``.png`` is rebuilt from every such pair
in ``benchmarks/results/`` (evaluated on 20 x 2048 tokens), so rows made earlier with the same two commands by
hand appear beside the new ones. Run one at a time on an otherwise idle machine: a second torch job on 2 cores
slows both by up to 10 x and the wall times would mean nothing.

    python benchmarks/default_budget.py run smollm2-50-lr2e-3 --ratio 0.5 -- --lr 2e-3
    python benchmarks/default_budget.py dense smollm2-135m       # the dense model's row (eval only)
    python benchmarks/default_budget.py table                    # rebuild the table from the files on disk
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# common also puts the repository on sys.path
from common import (  # noqa: E402
    DENSE_WIKITEXT2_20,
    ROOT,
    copy_prune_report,
    copy_result_json,
    eval_ppl,
    history_rows,
    load_json,
    run_compress,
    write_result,
)
from plots import RESULTS, pyplot, save_png  # noqa: E402

EVAL_ARGS = ["--tasks", "wikitext2,ptb", "--seq-len", "2048", "--max-windows", "20"]
#: dense rows measured under the same protocol (first 20 x 2048 tokens); written by ``dense`` or by hand earlier
DENSE_FILES = {"smollm2-135m": "eval-smollm2-135m-dense20.json", "gemma3-270m": "eval-gemma3-270m-dense.json"}


def _cpu_busy(seconds: float = 2.0) -> float | None:
    """Share of all CPU time spent busy over ``seconds`` (Linux ``/proc/stat``; None elsewhere)."""
    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def _busy_warning() -> None:
    busy = _cpu_busy()
    if busy is not None and busy > 0.25:
        print(f"warning: the CPUs are {busy:.0%} busy before the run: something else is running; wall times and "
              "step speed will not be comparable (run one job at a time)", file=sys.stderr)


def _copy(src: Path, dst: Path) -> None:
    """Copy a file into the results: a prune report compacted, a JSON report with machine paths made relative,
    anything else as it is."""
    if src.name == "compression_report.json":
        copy_prune_report(src, dst)
        return
    if src.suffix == ".json":
        copy_result_json(src, dst)
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run(name: str, ratio: float, model: str, extra: list[str], runs: Path, force: bool) -> None:
    targets = [RESULTS / f"prune_{name}.compression_report.json", RESULTS / f"eval-{name}.json"]
    if not force and any(p.exists() for p in targets):
        sys.exit(f"error: {targets[0].name} or {targets[1].name} already exists in {RESULTS}; pick another NAME "
                 "or pass --force")
    _busy_warning()
    out = runs / name
    t0 = time.time()
    run_compress(["prune", model, "--ratio", ratio, "--out", out, "--quiet", *(["--force"] if force else []), *extra])
    prune_s = time.time() - t0
    ev = runs / f"eval-{name}.json"
    run_compress(["eval", out, *EVAL_ARGS, "--out", ev, "--quiet", *(["--force"] if force else [])])
    _copy(out / "compression_report.json", targets[0])
    if (out / "pruning.png").is_file():
        _copy(out / "pruning.png", RESULTS / f"prune_{name}.png")
    _copy(ev, targets[1])
    print(f"{name}: prune command {prune_s:.0f} s")
    table()


def _dense_file(model: str) -> str:
    return DENSE_FILES.get(model, f"eval-{model}-dense20.json")


def dense(model: str, runs: Path, force: bool) -> None:
    name = _dense_file(model)
    dst = RESULTS / name
    if dst.exists() and not force:
        sys.exit(f"error: {dst} already exists; pass --force to measure again")
    _busy_warning()
    ev = runs / name
    run_compress(["eval", model, *EVAL_ARGS, "--out", ev, "--quiet", *(["--force"] if force else [])])
    _copy(ev, dst)
    table()


def _ppl(d: dict, task: str) -> float | None:
    v = eval_ppl(d, task)
    return None if v is None else round(v, 3)


def _same_protocol(d: dict) -> bool:
    c = d.get("config", {})
    return c.get("seq_len") == 2048 and c.get("max_windows") == 20


#: hidden sizes of the models rows were made on, for reports written before they recorded it
HIDDEN = {"smollm2-135m": 576, "qwen2.5-coder-0.5b": 896, "gemma3-270m": 640}


def _non_defaults(report: dict) -> dict:
    """The run's settings that differ from today's ``PruneConfig`` defaults (what makes the row what it is). The
    learning rate is compared as the run used it (``peak_lr``) with the one today's default picks for the row's
    ratio and model width."""
    from compressor import PruneConfig

    cfg = report.get("config", {})
    skip = {"ratio", "eval_windows", "eval_seq_len", "save_every", "version", "compensate_tokens", "lr"}
    out = {}
    for f in dataclasses.fields(PruneConfig):
        if f.name in skip or f.name not in cfg:
            continue
        if cfg[f.name] != f.default:
            out[f.name] = cfg[f.name]
    used = report.get("peak_lr", cfg.get("lr"))
    if used is not None and cfg.get("ratio"):
        hidden = (report.get("widths_before") or {}).get("hidden_size") or HIDDEN.get(report.get("model", ""))
        if abs(used - PruneConfig(ratio=cfg["ratio"]).peak_lr_for(hidden)) > 1e-12:
            out["lr"] = used
    return out


def _dense(model: str) -> dict:
    f = RESULTS / _dense_file(model)
    if f.is_file():
        d = load_json(f)
        if _same_protocol(d):
            return {"wikitext2": _ppl(d, "wikitext2"), "ptb": _ppl(d, "ptb"), "source": f"benchmarks/results/{f.name}"}
    if model in DENSE_WIKITEXT2_20:  # measured before this script existed (same protocol)
        w, src = DENSE_WIKITEXT2_20[model]
        return {"wikitext2": w, "ptb": None, "source": src}
    return {}


def _step_time(report: dict) -> float:
    """Seconds of all training steps, summed over every process of a resumed run (``wall_time_s`` is the last
    process's only); derived from the history, so reports written before ``step_time_total_s`` existed get it too."""
    from compressor.algorithm.summary import step_time_total

    return round(step_time_total(history_rows(report)), 1)


def _resumed_from(report: dict) -> int | None:
    """The step a resumed run continued from; for reports written before ``resumed_from_step`` existed, -1 when
    the steps took longer than the process ran (so it must have been resumed), else None."""
    if "resumed_from_step" in report:
        return report["resumed_from_step"]
    wall = report.get("wall_time_s")
    return -1 if wall is not None and _step_time(report) > wall else None


def table() -> dict:
    rows, dense_rows = [], {}
    for ev in sorted(RESULTS.glob("eval-*.json")):
        name = ev.stem[len("eval-"):]
        rep = RESULTS / f"prune_{name}.compression_report.json"
        d = load_json(ev)
        if not rep.is_file() or not _same_protocol(d):
            continue
        r = load_json(rep)
        model = r.get("model")
        if model not in dense_rows:
            dense_rows[model] = _dense(model)
        dn = dense_rows[model]
        w, p = _ppl(d, "wikitext2"), _ppl(d, "ptb")
        rows.append({
            "name": name, "model": model, "ratio_asked": r.get("ratio_asked"), "ratio_achieved": r.get("ratio_achieved"),
            "steps": r.get("steps"), "tokens_seen": r.get("tokens_seen"), "autocast_bf16": r.get("autocast_bf16"),
            "differs_from_todays_defaults": _non_defaults(r),
            "prune_wall_s": r.get("wall_time_s"), "step_time_total_s": _step_time(r),
            "resumed_from_step": _resumed_from(r), "peak_rss_mb": r.get("peak_rss_mb"),
            "per_layer_widths": bool((r.get("widths_after") or {}).get("per_layer")),
            "wikitext2": w, "ptb": p,
            "wikitext2_x_dense": round(w / dn["wikitext2"], 3) if w and dn.get("wikitext2") else None,
            "ptb_x_dense": round(p / dn["ptb"], 3) if p and dn.get("ptb") else None,
            "files": [f"benchmarks/results/{rep.name}", f"benchmarks/results/{ev.name}"],
        })
    out = {"protocol": "compress eval OUT " + " ".join(EVAL_ARGS) + " (first 20 non-overlapping windows, no BOS)",
           "prune": "compress prune MODEL --ratio R [options] (one job at a time on 2 CPU cores)",
           "differs_from_todays_defaults": "the run's PruneConfig fields that differ from today's defaults (lr: the "
                                           "peak the run used against the one today's default picks for the row's "
                                           "ratio and model width); fields an older report does not record are not "
                                           "compared",
           "prune_wall_s": "wall time of the compress prune process that finished the run; for a resumed run "
                           "(resumed_from_step set; -1: resumed, step unknown) only the last process, so "
                           "step_time_total_s (every step's time, all processes) is the figure to compare",
           "dense": dense_rows, "rows": rows}
    write_result("default_budget", out)
    for row in rows:
        resumed = "" if row["resumed_from_step"] is None else f" (resumed; steps {row['step_time_total_s']:.0f} s in all)"
        print(f"{row['name']:<34} ratio {row['ratio_achieved']}  steps {row['steps']}  "
              f"{row['prune_wall_s'] or 0:>6.0f} s{resumed}  WikiText-2 {row['wikitext2']}  ({row['wikitext2_x_dense']} x)  "
              f"PTB {row['ptb']}")
    _plot(out)
    return out


def _plot(d: dict) -> Path | None:
    plt = pyplot()
    rows = [r for r in d["rows"] if r["model"] == "smollm2-135m" and r["steps"] == 250 and r["wikitext2_x_dense"]]
    if plt is None or not rows:
        return None
    rows.sort(key=lambda r: (r["ratio_asked"], r["wikitext2"]))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    labels = [f"{r['ratio_asked']:.0%} {r['name']}" for r in rows]
    ax.barh(range(len(rows)), [r["wikitext2_x_dense"] for r in rows],
            color=["tab:orange" if r["per_layer_widths"] else "tab:blue" for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["wikitext2_x_dense"], i, f" {r['wikitext2_x_dense']:.2f} x ({r['wikitext2']:.1f})", va="center",
                fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    for x, c in ((1.3, "g"), (3.0, "r")):
        ax.axvline(x, color=c, ls="--", lw=1)
    ax.set_xlabel("WikiText-2 perplexity / dense (first 20 x 2048 tokens); lines: targets 1.3 x (20 %), 3 x (50 %)")
    ax.set_title("SmolLM2-135M, default budget (250 steps), 2 CPU cores; orange: per-layer widths", fontsize=9)
    return save_png(fig, "default_budget")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="compress prune + compress eval, then rebuild the table; compress prune options "
                                   "go after --")
    r.add_argument("name", help="row name: files prune_NAME.* and eval-NAME.json in benchmarks/results/")
    r.add_argument("--ratio", type=float, required=True)
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--runs", type=Path, default=ROOT / "runs", help="where the pruned folders go (default: runs/)")
    r.add_argument("--force", action="store_true", help="overwrite an existing row and output folder")
    dn = sub.add_parser("dense", help="the dense model's row: compress eval only")
    dn.add_argument("model")
    dn.add_argument("--runs", type=Path, default=ROOT / "runs")
    dn.add_argument("--force", action="store_true")
    sub.add_parser("table", help="rebuild default_budget.json / .png from the files in benchmarks/results/")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # compress prune options after --
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if extra and a.cmd != "run":
        ap.error(f"options after -- are passed to compress prune and only go with 'run', got {extra}")
    if a.cmd == "run":
        if not 0 < a.ratio < 1:
            ap.error(f"--ratio must be in (0, 1), got {a.ratio}")
        run(a.name, a.ratio, a.model, extra, a.runs, a.force)
    elif a.cmd == "dense":
        dense(a.model, a.runs, a.force)
    else:
        table()


if __name__ == "__main__":
    main()
