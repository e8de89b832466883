"""Paper Table 4: per-step peak memory and step time of the scoring step, `lora` vs `taylor` vs
`lora` with an 8-bit base, same model and batch, measured in one run (each mode in a fresh subprocess,
run one after another, never concurrently).

Modes: ``lora``, ``taylor``, ``lora-8bit``, each also with gradient checkpointing (``-gc``). Every mode
computes the loss as ``compress prune`` does (LM head and loss in chunks unless ``--loss-chunk-tokens 0``).

Peak memory is the process's peak resident set (VmHWM) during the measured steps, reset after loading
(``/proc/self/clear_refs``), so it covers what a training+scoring step holds: weights, LoRA, optimizer
state, activations, gradients (and W's gradient for Taylor). Workers run with glibc's mmap threshold fixed
at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the RSS (see ``_worker_env``). Step time
is the median over the steps after the first, from a second run of the same mode with glibc's defaults
(the fixed threshold slows steps down).

    python benchmarks/resources.py --batch 4 --seq-len 256 --steps 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dense_hf_dir, git_rev, machine, write_result  # noqa: E402

#: mode -> (criterion, base bits, gradient checkpointing)
MODES = {"lora": ("lora", None, False), "taylor": ("taylor", None, False), "lora-8bit": ("lora", 8, False),
         "lora-gc": ("lora", None, True), "taylor-gc": ("taylor", None, True), "lora-8bit-gc": ("lora", 8, True)}
#: (numerator, denominator) pairs reported as ratios: each LoRA mode against Taylor with the same checkpointing
PAIRS = [("lora", "taylor"), ("lora-8bit", "taylor"), ("lora-gc", "taylor-gc"), ("lora-8bit-gc", "taylor-gc"),
         ("lora-gc", "taylor")]


def _rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(mode: str, model_dir: str, batch: int, seq_len: int, steps: int, loss_chunk: int) -> dict:
    """One mode's scoring steps, driven through the product's own loop (:class:`compressor.algorithm.loop.PruneLoop`):
    loss (chunked LM head unless disabled), backward, scoring, moving average, optimizer step."""
    import torch

    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop
    from compressor.modeling.loading import load_model

    crit_name, bits, gc = MODES[mode]
    n = max(steps, 2)
    # every step scores and nothing is masked: the first mask update would come after the last measured step
    cfg = PruneConfig(ratio=0.5, criterion=crit_name, base_bits=bits, steps=n + 1, prune_every=1,
                      prune_start=n / (n + 1), prune_until=1.0, gradient_checkpointing=gc, loss_chunk_tokens=loss_chunk,
                      batch_size=batch, seq_len=seq_len, lr=1e-4, eval_windows=0,
                      compensate=not bits)  # compensation changes W0: float bases only
    model, tok, _ = load_model(model_dir, base_bits=bits)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)
    loop = PruneLoop(model, cfg, ids, model_id=model_dir)
    cuda = loop.device.type == "cuda"
    rss_loaded = _rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    if cuda:  # on a GPU the figure that matters is the device's memory: peak allocated during the steps
        torch.cuda.synchronize()
        cuda_loaded = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loop.step(ids)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb("VmHWM")
    gpu = {}
    if cuda:
        cuda_peak = torch.cuda.max_memory_allocated() / 2**20
        gpu = {"device": torch.cuda.get_device_name(0), "cuda_after_load_mb": round(cuda_loaded, 1),
               "peak_step_cuda_mb": round(cuda_peak, 1), "peak_cuda_above_load_mb": round(cuda_peak - cuda_loaded, 1)}
    return {"mode": mode, "criterion": crit_name, "base_bits": bits, "gradient_checkpointing": gc, "rss_after_load_mb": round(rss_loaded, 1),
            "peak_step_rss_mb": round(peak, 1), "peak_above_load_mb": round(peak - rss_loaded, 1),
            "step_s_median": round(statistics.median(times[1:] if len(times) > 1 else times), 3),
            "step_s_all": [round(t, 3) for t in times], "batch": batch, "seq_len": seq_len,
            "loss_chunk_tokens": loss_chunk if loop.chunked else 0, **gpu}


def _config_default(name: str):
    from dataclasses import fields

    from compressor.algorithm.config import PruneConfig

    return next(f.default for f in fields(PruneConfig) if f.name == name)


def _worker_env() -> dict:
    """glibc keeps freed blocks below its (growing) mmap threshold in the heap, so a process's RSS peak
    depends on its allocation history as much as on what it holds. A fixed 64 KiB threshold makes every
    tensor-sized block an mmap that is returned on free, so the RSS peak tracks the live tensors. It also
    makes every large allocation fault in fresh pages, which slows the step, so each mode runs twice:
    memory is taken from a run with this setting, time from a run with glibc's defaults."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder (default: built-in SmolLM2-135M, converted once)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--loss-chunk-tokens", type=int, default=_config_default("loss_chunk_tokens"),
                    help="LM-head/loss chunk as in `compress prune` (0: stock full-logits loss)")
    ap.add_argument("--name", default="resources", help="result name: benchmarks/results/NAME.json (+ .png)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.model, a.batch, a.seq_len, a.steps, a.loss_chunk_tokens)))
        return
    model_dir = a.model or str(dense_hf_dir())
    rows = []
    for mode in a.modes.split(","):
        print(f"[resources] {mode} ...", flush=True)
        res = {}
        for pass_, env in (("memory", _worker_env()), ("time", dict(os.environ))):
            p = subprocess.run([sys.executable, __file__, "--worker", mode, "--model", model_dir, "--batch", str(a.batch),
                                "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--loss-chunk-tokens",
                                str(a.loss_chunk_tokens)], capture_output=True, text=True, env=env)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                res = {"error": f"{pass_} pass: " + (p.stderr or p.stdout)[-800:]}
                break
            res[pass_] = json.loads(line[0][7:])
        if "error" in res:
            rows.append({"mode": mode, "error": res["error"]})
            print(f"  failed: {rows[-1]['error'][-300:]}")
            continue
        # memory from the fixed-threshold pass, time from the default-allocator pass (see _worker_env)
        r = dict(res["memory"])
        r["step_s_median"], r["step_s_all"] = res["time"]["step_s_median"], res["time"]["step_s_all"]
        r["memory_pass_step_s_median"] = res["memory"]["step_s_median"]
        r["default_malloc_peak_step_rss_mb"] = res["time"]["peak_step_rss_mb"]
        rows.append(r)
        gpu_txt = f", GPU peak {r['peak_step_cuda_mb']:.0f} MiB" if "peak_step_cuda_mb" in r else ""
        print(f"  peak {r['peak_step_rss_mb']:.0f} MiB (+{r['peak_above_load_mb']:.0f} above load; "
              f"{r['default_malloc_peak_step_rss_mb']:.0f} MiB with glibc's default){gpu_txt}, step {r['step_s_median']:.2f} s")
    by = {r["mode"]: r for r in rows if "error" not in r}
    ratios = {}
    for num, den in PAIRS:
        if num in by and den in by:
            t = by[den]
            ratios[f"{num}/{den}"] = {
                "peak_rss": round(by[num]["peak_step_rss_mb"] / t["peak_step_rss_mb"], 3),
                "peak_above_load": round(by[num]["peak_above_load_mb"] / max(t["peak_above_load_mb"], 1e-9), 3),
                "step_time": round(by[num]["step_s_median"] / t["step_s_median"], 3)}
            if "peak_step_cuda_mb" in by[num] and "peak_step_cuda_mb" in t:
                ratios[f"{num}/{den}"]["peak_cuda"] = round(by[num]["peak_step_cuda_mb"] / t["peak_step_cuda_mb"], 3)
                ratios[f"{num}/{den}"]["peak_cuda_above_load"] = round(
                    by[num]["peak_cuda_above_load_mb"] / max(t["peak_cuda_above_load_mb"], 1e-9), 3)
    print(json.dumps(ratios, indent=1))
    write_result(a.name, {"benchmark": "resources (paper Table 4)", "model": model_dir, "rows": rows,
                               "ratios": ratios, "targets": {"lora/taylor peak": "<= 0.5", "lora-8bit/taylor peak": "<= 0.35",
                                                             "lora/taylor step time": "<= 0.5"},
                               "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
