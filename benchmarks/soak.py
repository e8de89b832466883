"""Soak: a prune checkpointed every step, killed with SIGKILL at random moments and resumed each time, must end
with the same weights as an uninterrupted run; resident memory must not grow with the steps.

A tiny random LLaMA (GQA, 2 layers) is pruned to 50 % for ``--steps`` steps with the CLI's default recipe
(activation criterion, distillation, compensation) and a checkpoint after every step. The driver first runs
it uninterrupted, then again in a fresh output where it SIGKILLs the worker at random moments (a random step,
then a random fraction of a step, so kills land in training steps, in checkpoint writes and in the final save)
and restarts it with ``--resume`` each time, at least ``--kills`` times. Each worker is
:func:`compressor.job.prune_job` in its own process (locks, recovery of temporaries, checkpoint policy as in
``compress prune``) and appends ``{step, rss_mb}`` after every step to a log.

Reports: the kills (step of the checkpoint found after each), max |Δw| between the two final models over all
tensors, whether the kept heads/channels and the loss history agree, and the RSS slope (MiB per 100 steps,
least squares over the uninterrupted run's steps after the first 10 %). Writes ``results/soak.json`` and
``results/soak.png``.

    python benchmarks/soak.py --steps 300 --kills 20
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, git_rev, load_json, machine, write_result  # noqa: E402
from plots import RESULTS, pyplot, save_png  # noqa: E402


# ---------------------------------------------------------------------------------------------- worker
def _config(steps: int):
    from compressor.algorithm.config import RECIPES, PruneConfig

    return PruneConfig(**{**RECIPES["default"], "ratio": 0.5, "steps": steps, "prune_every": 10, "save_every": 1,
                          "seq_len": 32, "eval_windows": 0})


def worker(work: Path, out: str, steps: int, resume: bool) -> None:
    from compressor.core.memory import current_rss_mb
    from compressor.job import prune_job

    log = open(work / f"{out}.rss.jsonl", "a", buffering=1)

    def progress(rec):
        log.write(json.dumps({"pid": os.getpid(), "step": rec["step"], "rss_mb": current_rss_mb(),
                              "t": time.time()}) + "\n")

    prune_job(str(work / "model"), work / out, _config(steps), data=str(work / "calib.txt"), eval_data="none",
              resume=resume, force=resume, progress=progress)


# ---------------------------------------------------------------------------------------------- driver
def _start(work: Path, out: str, steps: int, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--worker", str(work), out, str(steps)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"{out}.stderr", "a"))


def _log(work: Path, out: str) -> list[dict]:
    try:
        return [json.loads(ln) for ln in (work / f"{out}.rss.jsonl").read_text().splitlines() if ln.endswith("}")]
    except FileNotFoundError:
        return []


def _ckpt_step(work: Path, out: str) -> int | None:
    try:
        return load_json(work / f"{out}.ckpt" / "last" / "state.json")["step"]
    except (OSError, ValueError, KeyError):
        return None


def _finished(work: Path, out: str) -> bool:
    return (work / out / "compression_report.json").is_file() and not (work / f"{out}.ckpt").exists()


def soak(work: Path, out: str, steps: int, kills: int, rng: random.Random) -> list[dict]:
    """Run ``out`` to the end, SIGKILLing the worker ``kills`` times at random moments; return the kills."""
    done: list[dict] = []
    while not _finished(work, out):
        resume = _ckpt_step(work, out) is not None
        p = _start(work, out, steps, resume)
        n0 = len(_log(work, out))
        if len(done) < kills:
            left = steps - (_ckpt_step(work, out) or 0)
            # steps this worker makes before its kill: spread the kills that are left over the steps that are left
            target = rng.randint(1, max(1, min(left - 1, 2 * left // max(1, kills - len(done)))))
            while p.poll() is None and len(_log(work, out)) - n0 < target:
                time.sleep(0.005)
            recs = _log(work, out)
            dt = (recs[-1]["t"] - recs[-2]["t"]) if len(recs) - n0 >= 2 else 0.05
            time.sleep(rng.uniform(0, max(dt, 0.01)))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                done.append({"after_worker_steps": target, "checkpoint_step": _ckpt_step(work, out),
                             "output_written": (work / out / "compression_report.json").is_file()})
                print(f"kill {len(done)}: checkpoint at step {done[-1]['checkpoint_step']}", flush=True)
                continue
        rc = p.wait()
        if rc != 0:
            raise RuntimeError(f"worker exited {rc}: {(work / f'{out}.stderr').read_text()[-3000:]}")
    return done


def where_killed(kills: list[dict]) -> dict[str, int]:
    """Count where the kills landed. A worker logs a step and then writes its checkpoint, and the driver kills
    it within one step time after the log shows its target step: if the checkpoint found afterwards is one
    short of that step, the kill interrupted the checkpoint write; otherwise the next training step (or the
    final merge and save, if the output was written)."""
    out = {"checkpoint_write": 0, "training_step": 0, "final_save": 0}
    prev = 0
    for k in kills:
        step = k["checkpoint_step"] or 0
        if k["output_written"]:
            out["final_save"] += 1
        elif step < prev + k["after_worker_steps"]:
            out["checkpoint_write"] += 1
        else:
            out["training_step"] += 1
        prev = step
    return out


def _slope(recs: list[dict], skip: float = 0.1) -> float:
    """Least-squares RSS slope over the steps after the first ``skip`` fraction, MiB per 100 steps."""
    import numpy as np

    recs = [r for r in recs if r["rss_mb"] is not None]
    recs = recs[int(len(recs) * skip):]
    x = np.array([r["step"] for r in recs], dtype=float)
    y = np.array([r["rss_mb"] for r in recs], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 100) if len(x) > 2 else float("nan")


def _median_step_s(recs: list[dict]) -> float:
    import statistics

    return statistics.median(b["t"] - a["t"] for a, b in zip(recs, recs[1:])) if len(recs) > 1 else float("nan")


def compare(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    ra = load_json(a / "compression_report.json")
    rb = load_json(b / "compression_report.json")
    same_shapes = wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    dw = max(float((wa[k] - wb[k]).abs().max()) for k in wa) if same_shapes else float("inf")
    la, lb = [h["loss"] for h in ra["history"]], [h["loss"] for h in rb["history"]]
    return {"max_abs_dw": dw, "same_tensors_and_shapes": same_shapes, "same_kept": ra["kept"] == rb["kept"],
            "history_steps": [len(la), len(lb)],
            "max_abs_dloss": max((abs(x - y) for x, y in zip(la, lb)), default=float("nan"))}


def plot(d: dict, ref: list[dict], soaked: list[dict]) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([r["step"] for r in ref], [r["rss_mb"] for r in ref], lw=1.5, label="uninterrupted")
    pids = list(dict.fromkeys(r["pid"] for r in soaked))
    for i, pid in enumerate(pids):
        seg = [r for r in soaked if r["pid"] == pid]
        ax.plot([r["step"] for r in seg], [r["rss_mb"] for r in seg], lw=0.8, color="C1",
                label="killed and resumed (one line per process)" if i == 0 else None)
    for k in d["kills"]:
        if k["checkpoint_step"] is not None:
            ax.axvline(k["checkpoint_step"], color="0.8", lw=0.5, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"soak: {len(d['kills'])} SIGKILLs, max |Δw| = {d['compare']['max_abs_dw']:.1e}, "
                 f"RSS slope {d['rss_slope_mib_per_100_steps']['uninterrupted']:+.2f} MiB/100 steps", fontsize=9)
    ax.legend(fontsize=8)
    return save_png(fig, "soak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--worker", nargs=3, metavar=("WORK", "OUT", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], int(args.worker[2]), args.resume)
        return

    sys.path.insert(0, str(ROOT))
    from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        tiny_model("llama-gqa").save_pretrained(work / "model")
        tiny_tokenizer().save_pretrained(work / "model")
        (work / "calib.txt").write_text(tiny_text(6000))
        t0 = time.time()
        p = _start(work, "ref", args.steps, False)
        if p.wait() != 0:
            raise RuntimeError((work / "ref.stderr").read_text()[-3000:])
        t_ref = time.time() - t0
        print(f"uninterrupted run: {t_ref:.0f} s", flush=True)
        t0 = time.time()
        kills = soak(work, "soak", args.steps, args.kills, random.Random(args.seed))
        t_soak = time.time() - t0
        ref, soaked = _log(work, "ref"), _log(work, "soak")
        d = {
            "what": "tiny llama-gqa pruned to 50 % with a checkpoint every step; SIGKILL at random moments, "
                    "resumed each time; final weights vs an uninterrupted run",
            "steps": args.steps, "kills_asked": args.kills, "seed": args.seed, "kills": kills,
            "processes": len({r["pid"] for r in soaked}),
            "compare": compare(work / "ref", work / "soak"),
            "kills_where": where_killed(kills),
            "rss_slope_mib_per_100_steps": {"uninterrupted": _slope(ref)},
            "rss_mb": {"uninterrupted_first": ref[0]["rss_mb"], "uninterrupted_last": ref[-1]["rss_mb"],
                       "uninterrupted_max": max(r["rss_mb"] for r in ref)},
            "wall_s": {"uninterrupted": round(t_ref, 1), "soak": round(t_soak, 1)},
            "leftovers": sorted(p.name for p in work.iterdir() if p.name.startswith(".soak")),
            "step_s_median": _median_step_s(ref),
            "rss_per_step": {"uninterrupted": [[r["step"], r["rss_mb"]] for r in ref]},
            "machine": machine(), "git": git_rev(),
        }
        write_result("soak", d)
        plot(d, ref, soaked)
        c = d["compare"]
        print(f"{len(kills)} kills, {d['processes']} processes; max |dw| {c['max_abs_dw']:.3g}, same kept "
              f"{c['same_kept']}, max |dloss| {c['max_abs_dloss']:.3g}; RSS slope "
              f"{d['rss_slope_mib_per_100_steps']['uninterrupted']:+.3f} MiB/100 steps")
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    main()
