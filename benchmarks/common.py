"""Shared helpers for the benchmark scripts (not part of the installed package)."""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
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


#: a path outside the repository whose last part has one of these suffixes is a file: it is recorded as
#: ``folder/file`` (``p50_onnx/model.onnx``), any other as its own name (a run or export folder)
FILE_SUFFIXES = {".json", ".jsonl", ".onnx", ".onnx_data", ".gguf", ".safetensors", ".bin", ".pt", ".txt", ".md",
                 ".log", ".png", ".py", ".csv", ".tgz"}


def _cache_folder() -> str | None:
    try:
        return str(cache_root())
    except Exception:  # noqa: BLE001 - no package here: no cache to name
        return None


def rel_path(path, *, root: str | os.PathLike = ROOT, cache: str | os.PathLike | None = None) -> str:
    """How a result records a path, never a machine's absolute one: relative to the repository when inside it
    (``benchmarks/results/x.json``, ``runs/NAME``), the model's name for a file in the package's cache
    (``.../assembled/NAME/HASH/file.gguf`` -> ``NAME``), else the folder's own name (a file: ``folder/file``, see
    :data:`FILE_SUFFIXES`). A relative path is taken from the current folder when it exists there; any other string
    (a built-in model name, ``none``) is returned as it is. ``root`` and ``cache`` default to this checkout's and this
    machine's package cache (given explicitly to rewrite results written on another machine)."""
    s = os.fspath(path)
    if not os.path.isabs(s):
        if not s or not os.path.exists(s):
            return s
        s = os.path.abspath(s)
    s = os.path.normpath(s)
    root_s = os.path.normpath(os.fspath(root))
    if s == root_s:
        return "."
    if s.startswith(root_s + os.sep):
        return Path(s[len(root_s) + 1:]).as_posix()
    cache_s = os.fspath(cache) if cache is not None else _cache_folder()
    if cache_s and s.startswith(os.path.normpath(cache_s) + os.sep):
        parts = Path(s[len(os.path.normpath(cache_s)) + 1:]).parts
        return parts[1] if parts[0] == "assembled" and len(parts) > 1 else parts[0]
    parts = Path(s).parts[1:]
    if not parts:
        return s
    if Path(parts[-1]).suffix in FILE_SUFFIXES and len(parts) > 1:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def machine_prefixes(root: str | os.PathLike = ROOT) -> list[str]:
    """Folders whose paths are this machine's own: the checkout and the folder holding it, the package cache, the
    temporary folder and the home folder (longest first)."""
    root_s = os.path.normpath(os.fspath(root))
    found = {root_s, os.path.dirname(root_s), _cache_folder(), tempfile.gettempdir(), str(Path.home())}
    return sorted((os.path.normpath(p) for p in found if p and os.path.normpath(p) != os.sep), key=len, reverse=True)


def rel_text(text: str, prefixes: list[str] | None = None, **where) -> str:
    """``text`` with each absolute path under one of ``prefixes`` (default :func:`machine_prefixes`) replaced by
    :func:`rel_path`'s form; a string that is one absolute path is replaced whatever folder it is in."""
    if os.path.isabs(text) and not any(c.isspace() for c in text):
        return rel_path(text, **where)
    prefixes = machine_prefixes(where.get("root", ROOT)) if prefixes is None else prefixes
    if not prefixes:
        return text
    pat = re.compile(r"(?<![\w.~/-])(?:" + "|".join(re.escape(p) for p in prefixes) + r")(?![\w.-])(?:/[\w.+@%=~-]+)*/?")

    def one(m: re.Match) -> str:
        core = m.group(0).rstrip("./") or m.group(0)  # a sentence's full stop or a trailing slash is no part of it
        return rel_path(core, **where) + m.group(0)[len(core):]

    return pat.sub(one, text)


def rel_paths(obj, prefixes: list[str] | None = None, **where):
    """``obj`` (JSON data) with :func:`rel_text` applied to every string, keys included."""
    prefixes = machine_prefixes(where.get("root", ROOT)) if prefixes is None else prefixes
    if isinstance(obj, str):
        return rel_text(obj, prefixes, **where)
    if isinstance(obj, list):
        return [rel_paths(v, prefixes, **where) for v in obj]
    if isinstance(obj, tuple):
        return tuple(rel_paths(v, prefixes, **where) for v in obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            k2 = rel_text(k, prefixes, **where) if isinstance(k, str) else k
            if k2 in out:  # two paths with one name: keep the key as it was rather than merge them
                k2 = k
            out[k2] = rel_paths(v, prefixes, **where)
        return out
    return obj


def write_json_result(path, data) -> Path:
    """Write ``data`` as JSON at ``path`` (atomically, the project's writer) with machine paths made relative
    (:func:`rel_paths`)."""
    from compressor.core.io import write_json

    write_json(path, rel_paths(data))
    return Path(path)


def copy_result_json(src, dst) -> Path:
    """Copy a JSON report (a ``compress`` command's, from its output folder) into the results, paths made
    relative (:func:`rel_paths`)."""
    return write_json_result(dst, load_json(src))


#: what :func:`compact_prune_report` did, recorded in the report it wrote
COMPACTED = ("benchmarks/common.py compact_prune_report: 'history' (one object per step) as 'history_columns' (one "
             "list per field, same values); each layer's kept 'channels' as 'channels_mask', the hex of the integer "
             "whose bit i is set when channel i is kept (common.kept_channels decodes it); lists on one line")


def _finite(x):
    """``x``, or None for a float that JSON cannot hold (NaN, infinity; the project's writer does the same)."""
    return None if isinstance(x, float) and (x != x or abs(x) == float("inf")) else x


def compact_prune_report(report: dict) -> dict:
    """A ``compress prune`` report made small for ``benchmarks/results/`` (a 250-step run on Qwen2.5-0.5B is 1.3 MB
    as written, mostly one line per kept channel index), losing no figure: the per-step ``history`` becomes
    ``history_columns`` (each scalar field a list over the steps: step, loss, lm_loss, lr, sparsity, time_s; a
    per-step field that is not a scalar, such as a per-layer array, is dropped), and each ``kept`` layer's channel
    indices a bit mask (``channels_mask``; ``channels_kept`` and ``channels_of`` beside it). Already compact
    reports are returned as they are. Read the history back with :func:`history_rows`, the channels with
    :func:`kept_channels`."""
    widths = (report.get("widths_before") or {}).get("intermediate_size")
    out: dict = {}
    for key, value in report.items():
        if key == "history" and isinstance(value, list) and all(isinstance(h, dict) for h in value):
            fields = list(dict.fromkeys(f for h in value for f, x in h.items()
                                        if x is None or isinstance(x, (bool, int, float, str))))
            out["history_columns"] = {f: [_finite(h.get(f)) for h in value] for f in fields}
        elif key == "kept" and isinstance(value, list):
            layers = []
            for i, e in enumerate(value):
                ch = e.get("channels") if isinstance(e, dict) else None
                if isinstance(ch, list) and all(isinstance(c, int) for c in ch):
                    e = {k: v for k, v in e.items() if k != "channels"}
                    li = e.get("layer", i)
                    n = (widths[li] if 0 <= li < len(widths) else None) if isinstance(widths, list) else widths
                    e.update(channels_kept=len(ch), channels_of=n, channels_mask=format(sum(1 << c for c in ch), "x"))
                layers.append(e)
            out[key] = layers
        else:
            out[key] = value
    if out != report:
        out["compacted"] = COMPACTED
    return out


def history_rows(report: dict) -> list[dict]:
    """A prune report's per-step history as one dict per step, from ``history`` or a compacted report's
    ``history_columns``."""
    if "history" in report:
        return report["history"] or []
    cols = report.get("history_columns") or {}
    n = max((len(v) for v in cols.values()), default=0)
    return [{f: v[i] for f, v in cols.items() if i < len(v)} for i in range(n)]


def kept_channels(layer: dict) -> list[int]:
    """One ``kept`` entry's channel indices, from ``channels`` or a compacted report's ``channels_mask``."""
    if "channels" in layer:
        return list(layer["channels"])
    mask = int(layer["channels_mask"], 16)
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def dumps_compact(data) -> str:
    """JSON indented like the project's reports, but each list of plain values on one line."""

    def go(obj, level: int) -> str:
        pad, inner = "  " * level, "  " * (level + 1)
        if isinstance(obj, dict) and obj:
            return "{\n" + ",\n".join(f"{inner}{json.dumps(k, ensure_ascii=False)}: {go(v, level + 1)}"
                                       for k, v in obj.items()) + f"\n{pad}}}"
        if isinstance(obj, list) and any(isinstance(v, (dict, list)) and v for v in obj):
            return "[\n" + ",\n".join(inner + go(v, level + 1) for v in obj) + f"\n{pad}]"
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)

    return go(data, 0) + "\n"


def copy_prune_report(src, dst) -> Path:
    """Copy a ``compress prune`` report into the results: compacted (:func:`compact_prune_report`), paths made
    relative (:func:`rel_paths`), lists on one line (:func:`dumps_compact`), written atomically."""
    from compressor.core.io import atomic_write_text

    atomic_write_text(dst, dumps_compact(rel_paths(compact_prune_report(load_json(src)))), what="prune report")
    return Path(dst)


def write_result(name: str, data: dict) -> Path:
    """``benchmarks/results/NAME.json`` (paths recorded relative: :func:`rel_paths`), and its plot where
    ``plots.PLOTTERS`` has one."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = write_json_result(RESULTS / f"{name}.json", data)
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
    """One finished ``compress`` subprocess: its arguments, the command as a user types it (paths as results record
    them, :func:`rel_path`), wall seconds, and its output (stdout then stderr; empty unless captured)."""

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
    shown = [rel_path(a) if isinstance(a, os.PathLike) else str(a) for a in args]  # as results record it
    args = [str(a) for a in args]
    command = "compress " + shlex.join(shown)
    if echo:
        print("+ compress " + shlex.join(args), flush=True)
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
