"""Shared helpers for the benchmark scripts (not part of the installed package)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from plots import PLOTTERS, RESULTS  # noqa: E402  (plots imports nothing from here: one-way)

#: dense WikiText-2 perplexity on the first 20 non-overlapping 2048-token windows (no BOS), measured before the
#: dense eval files existed: model -> (figure, where it was measured)
DENSE_WIKITEXT2_20 = {"smollm2-135m": (20.97, "benchmarks/results/screen_50_60.json"),
                      "qwen2.5-coder-0.5b": (32.04, "benchmarks/results/screen_qwen2.5-coder-0.5b_50_30_tokens.json")}


def cache_root() -> Path:
    from compressor.core.assets import cache_dir

    return cache_dir()


def dense_hf_dir(name: str = "smollm2-135m") -> Path:
    """An HF safetensors copy of a built-in model (made once, then reused)."""
    out = cache_root() / f"{name}-hf"
    if (out / "config.json").is_file():
        return out
    from compressor.modeling.loading import load_model
    from compressor.modeling.save import save_model_folder

    model, tok, _ = load_model(name)
    save_model_folder(model, tok, out, force=True)
    return out


def cpu_name() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; None elsewhere): timings from different CPUs do not compare."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    import torch

    from compressor.core.device import native_bf16

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(), "cpu": cpu_name(),
            "native_bf16_cpu": native_bf16(torch.device("cpu")), "date": time.strftime("%Y-%m-%d %H:%M")}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    from compressor.core.io import write_json

    write_json(path, data)
    print(f"wrote {path}")
    if name in PLOTTERS:  # the PNG next to the JSON (quality.py draws its own)
        PLOTTERS[name](data)
    return path


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def check_result_name(ap, name: str, example: str) -> None:
    """``--name`` of a script that writes ``benchmarks/results/NAME.*``: a plain file stem (no folder, no leading
    dot), else the parser's usage error naming the bad value and an example."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        ap.error(f"--name {name!r}: give a plain file stem such as {example} (written under benchmarks/results/; "
                 "no folders, no leading dot)")


@dataclass
class CompressRun:
    """One finished ``compress`` subprocess: its arguments, the command as a user types it, wall seconds, and its
    output (stdout then stderr; empty unless captured)."""

    args: list[str]
    command: str
    seconds: float
    returncode: int
    output: str = ""


class CompressFailed(RuntimeError):
    """A ``compress`` subprocess exited non-zero (the message ends with its output's tail when captured)."""


def run_compress(args, *, capture: bool = False, check: bool = True, echo: bool = True) -> CompressRun:
    """Run ``compress ARGS`` the way a user does, as its own process: ``python -m compressor.cli ARGS`` with this
    Python, in the repository root (so its memory and time are its own and the product's CLI is what is measured).

    Args:
        args: the command's arguments after ``compress`` (``["prune", MODEL, "--ratio", "0.5", ...]``); any
            path-like or number is turned into a string.
        capture: keep stdout and stderr in :attr:`CompressRun.output` instead of printing them.
        check: raise :class:`CompressFailed` when the command exits non-zero.
        echo: print the command (``+ compress ...``) before running it.
    """
    args = [str(a) for a in args]
    command = "compress " + shlex.join(args)
    if echo:
        print("+ " + command, flush=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "compressor.cli", *args], cwd=ROOT, capture_output=capture, text=True)
    run = CompressRun(args, command, time.perf_counter() - t0, p.returncode, (p.stdout or "") + (p.stderr or ""))
    if check and p.returncode != 0:
        tail = f":\n{run.output[-3000:]}" if capture else ""
        raise CompressFailed(f"{command} failed ({p.returncode}){tail}")
    return run


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def eval_ppl(report: dict, task: str) -> float | None:
    """A task's perplexity from a ``compress eval`` report (None where that task was not measured, e.g. PTB)."""
    r = report.get("results", {}).get(task)
    return float(r["ppl"]) if isinstance(r, dict) and "ppl" in r else None
