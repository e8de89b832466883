"""Scale: peak memory per phase of the default prune on random-weight stand-ins of real model shapes.

Every size gets the prediction of :mod:`compressor.algorithm.memory_plan` (no weights); sizes that the plan says fit this device
are also run, each in a fresh process: the stand-in is built straight on the device in the held dtypes (no
download, no float32 detour), then ``--steps`` steps of the default recipe with one mask update (compensation
folded), the layer-wise merge and the save, each phase measured (CPU: RSS, ``MALLOC_MMAP_THRESHOLD_`` set so freed
memory leaves the process; CUDA: ``max_memory_allocated``). Weights are random: timings and memory are the real
shapes', quality figures are not.

    python benchmarks/scale.py                                     # this machine: predict all, run what fits
    python benchmarks/scale.py --sizes llama-3.1-8b --device cuda  # one size on a GPU
    python benchmarks/scale.py --predict-only --device cuda --free-gib 80   # the plan for an 80 GB GPU

Writes ``benchmarks/results/NAME.json`` and ``NAME.png`` (peak / base-weight bytes against model size).
To keep the run short, compensation's statistics rest on ``--compensate-tokens`` tokens (their memory does not
depend on it) and the step count is small; the step time is that of the real shape.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, machine, write_result  # noqa: E402

#: the exact configs of the models the stand-ins replace (from their config.json files)
SHAPES: dict[str, dict] = {
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072,
                         rms_norm_eps=1e-5),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                         rms_norm_eps=1e-6),
    "qwen2.5-3b": dict(model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                       num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768,
                       rms_norm_eps=1e-6),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=131072,
                         rms_norm_eps=1e-5),
    "llama-65b": dict(model_type="llama", vocab_size=32000, hidden_size=8192, intermediate_size=22016,
                      num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64,
                      tie_word_embeddings=False, max_position_embeddings=2048, rms_norm_eps=1e-5),
    "llama-3.1-70b": dict(model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                          num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                          tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=131072,
                          rms_norm_eps=1e-5),
}
GiB = 2**30


def hf_config(name: str):
    from transformers import AutoConfig

    d = dict(SHAPES[name])
    return AutoConfig.for_model(d.pop("model_type"), attn_implementation="eager", **d)


def run_config(args, **over):
    from compressor import PruneConfig

    kw = dict(ratio=args.ratio, steps=args.steps, prune_every=args.prune_every, prune_until=0.5,
              compensate_tokens=args.compensate_tokens, eval_windows=0, device=args.device)
    kw.update(over)
    return PruneConfig(**kw)


def predict(name: str, args, free: int | None) -> dict:
    """The plan of the default run and of the alternatives, for ``name`` on ``args.device``."""
    import torch

    from compressor.algorithm.memory_plan import alternatives, model_shape, plan_memory
    from compressor.core.device import resolve_device

    device = resolve_device(args.device) if not args.predict_only else torch.device(args.device.split(":")[0])
    total = None if free is None else free
    shape = model_shape(hf_config(name))
    # planning for a GPU this machine does not have: assume one that multiplies bfloat16 (A100, H100, H200)
    cfg = run_config(args, amp="bf16") if args.predict_only and device.type == "cuda" else run_config(args)
    plan = plan_memory(shape, cfg, device, free=free, total=total, source_dtype="bfloat16")
    alts = alternatives(shape, cfg, device, free=free, total=total, source_dtype="bfloat16")
    return {"params": shape.params, "linear_params": shape.linear_params,
            "base_bf16_gib": round((2 * shape.linear_params + 4 * shape.other_params) / GiB, 3),
            "plan": plan.as_dict(), "alternatives": {label: p.as_dict() for label, p in alts}}


def measure(name: str, args, overrides: dict) -> dict:
    """One run in this process (called in a fresh subprocess by :func:`main`)."""
    import torch

    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.loop import PruneLoop
    from compressor.algorithm.memory_plan import model_shape, plan_memory
    from compressor.core.device import resolve_device
    from compressor.core.memory import MemoryTrace
    from compressor.modeling.held import hold_projections

    torch.manual_seed(0)
    device = resolve_device(args.device)
    cfg = run_config(args, **overrides)
    cuda = device.type == "cuda"
    trace = MemoryTrace()
    phases: dict[str, dict] = {}

    class Phase:
        def __init__(self, label: str):
            self.label = label

        def __enter__(self):
            self.t0 = time.perf_counter()
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            self.ctx = trace.phase(self.label)
            self.ctx.__enter__()

        def __exit__(self, *exc):
            self.ctx.__exit__(*exc)
            rec = {"seconds": round(time.perf_counter() - self.t0, 2), "peak_rss_gib": round(
                trace.phases[-1]["peak_mb"] / 1024, 3)}
            if cuda:
                torch.cuda.synchronize(device)
                rec["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(device) / GiB, 3)
            phases[self.label] = rec

    hf_cfg = hf_config(name)
    with Phase("load"):  # built on the device in the held dtypes: projections bfloat16, the rest float32
        from transformers import AutoModelForCausalLM

        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(hf_cfg)
        finally:
            torch.set_default_dtype(prev)
        hold_projections(model, torch.bfloat16)
        model.lorapress_source_dtype = "bfloat16"
    blocks = torch.randint(0, hf_cfg.vocab_size, (max(64, cfg.batch_size * (cfg.steps + 8)), cfg.seq_len),
                           generator=torch.Generator().manual_seed(0))
    groups = discover_groups(model)
    step_times = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        with Phase("steps"):
            loop = PruneLoop(model, cfg, blocks, groups=groups, statistics_dir=Path(tmp) / "statistics")
            store = loop.comp.store if loop.comp is not None else None
            per_pass = loop.comp.layers_per_pass if loop.comp is not None else None
            while not loop.done:
                t0 = time.perf_counter()
                rec = loop.step()
                step_times.append(round(time.perf_counter() - t0, 2))
                print(f"  step {rec.step}: {step_times[-1]} s, sparsity {rec.sparsity:.3f}"
                      + (" (mask update)" if rec.masks_updated else ""), flush=True)
        with Phase("merge"):
            merged = loop.finish()
            del loop, model
        with Phase("save"):
            merged.save_pretrained(Path(tmp) / "out", safe_serialization=True)
    # a fresh config: the merge rewrote the model's own (pruned widths)
    plan = plan_memory(model_shape(hf_config(name)), cfg, device, source_dtype="bfloat16", store=store,
                       layers_per_pass=per_pass)
    return {"config": {k: v for k, v in cfg.to_dict().items() if k in (
                "ratio", "steps", "batch_size", "seq_len", "gradient_checkpointing", "compensate_store",
                "compensate_tokens", "base_bits", "amp")},
            "options": overrides, "statistics_store": store, "layers_per_pass": per_pass, "phases": phases,
            "step_seconds": step_times, "predicted": plan.as_dict(), "overall_peak_rss_gib": round(
                trace.overall_peak_mb / 1024, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=4, help="steps per run (a mask update every --prune-every)")
    ap.add_argument("--prune-every", type=int, default=2)
    ap.add_argument("--compensate-tokens", type=int, default=2048)
    ap.add_argument("--predict-only", action="store_true", help="no runs, only the plans")
    ap.add_argument("--free-gib", type=float, default=None, help="plan for this much free memory (default: measured)")
    ap.add_argument("--tmp", default=None, help="folder for the statistics files and the saved output")
    ap.add_argument("--options", default=None,
                    help='run every size with these PruneConfig fields (JSON, e.g. \'{"compensate_store": "disk", '
                         '"gradient_checkpointing": true}\') instead of the default or the first option that fits')
    ap.add_argument("--name", default=None, help="result name [scale_<device>]")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args, json.loads(args.overrides))), flush=True)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SHAPES]
    if bad:
        ap.error(f"unknown size(s) {bad}; use {', '.join(SHAPES)}")
    from compressor.core.device import free_memory_bytes, resolve_device

    free = int(args.free_gib * GiB) if args.free_gib else (
        None if args.predict_only else free_memory_bytes(resolve_device(args.device)))
    out = {"device": args.device, "machine": machine(), "git": git_rev(), "free_gib": None if free is None else
           round(free / GiB, 2), "note": "random-weight stand-ins: memory and time are the real shapes', quality is "
           "not measured; CPU peaks are RSS with MALLOC_MMAP_THRESHOLD_=65536 set", "runs": {}}
    for name in sizes:
        p = predict(name, args, free)
        row = {"predicted": p}
        fits = p["plan"]["fits"]
        chosen: dict | None = {} if fits else None
        if args.options:
            chosen = json.loads(args.options)
            row["ran_with"] = chosen
        elif not fits:
            from compressor.algorithm.memory_plan import ALTERNATIVES

            for label, over in ALTERNATIVES:
                if p["alternatives"].get(label, {}).get("fits"):
                    chosen = over
                    row["ran_with"] = label
                    break
        print(f"{name}: {p['params'] / 1e9:.2f} B params, predicted peak {p['plan']['peak_gib']} GiB "
              f"({p['plan']['peak_phase']}), fits: {fits}" + (f"; runs with {row['ran_with']}" if 'ran_with' in row
                                                              else ""), flush=True)
        if not args.predict_only and chosen is not None:
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONUNBUFFERED="1")
            cmd = [sys.executable, __file__, "--child", name, "--overrides", json.dumps(chosen), "--device",
                   args.device, "--ratio", str(args.ratio), "--steps", str(args.steps), "--prune-every",
                   str(args.prune_every), "--compensate-tokens", str(args.compensate_tokens)]
            if args.tmp:
                cmd += ["--tmp", args.tmp]
            t0 = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            sys.stdout.write("".join(line + "\n" for line in proc.stdout.splitlines() if not line.startswith("RESULT")))
            result = next((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT")),
                          None)
            if result is None:
                row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:400]
                print(f"  failed: {row['error']}")
            else:
                result["wall_s"] = round(time.time() - t0, 1)
                row["measured"] = result
                peak_key = "peak_cuda_gib" if args.device.startswith("cuda") else "peak_rss_gib"
                peak = max(ph[peak_key] for ph in result["phases"].values())
                pred = result["predicted"]["peak_gib"]
                row["summary"] = {"peak_gib": peak, "predicted_peak_gib": pred,
                                  "measured_over_predicted": round(peak / pred, 3),
                                  "peak_over_base_bytes": round(peak / p["base_bf16_gib"], 3),
                                  "target_gib": round(1.3 * p["base_bf16_gib"] + 1.5, 3)}
                print(f"  measured peak {peak} GiB vs predicted {pred} GiB; target 1.3 x base + 1.5 = "
                      f"{row['summary']['target_gib']} GiB", flush=True)
        out["runs"][name] = row
    path = write_result(args.name or f"scale_{args.device.split(':')[0]}", out)
    plot(out, path.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    """Peak memory / base-weight bytes against model size: predicted for every size, measured where it ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no picture (pip install 'lorapress[plots]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs, ys, mx, my = [], [], [], []
    for name, row in out["runs"].items():
        p = row["predicted"]
        x = p["params"] / 1e9
        xs.append(x)
        ys.append(p["plan"]["peak_gib"] / p["base_bf16_gib"])
        ax.annotate(name, (x, ys[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if "summary" in row:
            mx.append(x)
            my.append(row["summary"]["peak_over_base_bytes"])
    ax.plot(xs, ys, "o--", label="predicted (default options on this device)")
    if mx:
        ax.plot(mx, my, "s", ms=8, label="measured")
    base = [p["predicted"]["base_bf16_gib"] for p in out["runs"].values()]
    ax.plot(xs, [1.3 + 1.5 / b for b in base], ":", color="gray", label="aim: 1.3 x base + 1.5 GiB")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters (billions)")
    ax.set_ylabel("peak memory / bytes of the bf16 base")
    ax.set_title(f"Peak memory of the default prune on {out['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
