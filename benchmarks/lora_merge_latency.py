"""Paper Table 3 on PyTorch: forward latency of LoRA unmerged vs merged vs pruned + merged, same input.

Variants, all float32 on the CPU, loaded in one process and timed alternately (order rotates every run, so a
drift in machine load hits all alike):

* ``lora-unmerged``: the dense model with LoRA adapters on every prunable projection (peft, rank
  ``--lora-r``, B non-zero), as during pruning: each projection computes ``W x + B A x``;
* ``merged``: the same adapters folded into the weights (:func:`compressor.algorithm.merge.merge_and_slice` without
  masks): a plain dense model;
* ``pruned-merged``: the pruned model (``PRUNED``, a folder written by ``compress prune``), LoRA merged and
  pruned groups sliced away.

Cases: one forward pass (prefill, no KV cache) at batch 1 of ``--seq-lens`` tokens (default 2048, as the
paper, and 128). Reported per case and variant: median / p90 / min latency over ``--runs`` runs after
``--warmup``, tokens/s, FLOPs per token (:mod:`compressor.modeling.flops`; LoRA adds ``2 r (in + out)`` per adapted
projection), and the ratios to ``merged``. Before timing, ``merged`` logits are checked against
``lora-unmerged`` (max |diff| <= 1e-3: merging must not change the function), so the comparison is of equals.

    python benchmarks/lora_merge_latency.py smollm2-135m /tmp/fused-sm50 --threads 2 --runs 10
    python benchmarks/lora_merge_latency.py --smoke      # tiny random model, seconds: checks the script runs

Results: ``benchmarks/results/lora_merge_latency[_<name>].json`` (``--out`` to write elsewhere). Never run it
on a busy machine: these are wall-clock latencies.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, machine, write_json_result, write_result  # noqa: E402

VARIANTS = ("lora-unmerged", "merged", "pruned-merged")


def _lora_flops(model, r: int) -> float:
    """Extra forward FLOPs per token of the LoRA adapters of a peft model: 2 r (in + out) per adapted layer."""
    total = 0.0
    for mod in model.modules():
        base = getattr(mod, "base_layer", None)
        if base is not None and hasattr(mod, "lora_A"):
            total += 2.0 * r * (base.in_features + base.out_features)
    return total


def _flops(config, seq_len: int) -> float:
    from compressor.modeling.flops import flops_per_token
    from compressor.modeling.sizes import model_sizes

    return flops_per_token(model_sizes(config), (seq_len + 1) / 2)["total"]


def build_variants(dense, pruned, lora_r: int, seed: int = 0) -> dict:
    """``{variant: model}``; the merged model is a deep copy of the LoRA one with the adapters folded in."""
    import copy

    import torch

    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.finetune import wrap_lora
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.merge import merge_and_slice

    groups = discover_groups(dense)
    lora = wrap_lora(dense, PruneConfig(ratio=0.5, lora_r=lora_r, seed=seed))
    g = torch.Generator().manual_seed(seed)
    # peft computes B A x whatever B holds (same latency); a non-zero B makes the merge check below meaningful
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    lora.eval()
    merged = merge_and_slice(copy.deepcopy(lora), groups).eval()
    return {"lora-unmerged": lora, "merged": merged, "pruned-merged": pruned.eval()}


def check_merge(variants: dict, vocab: int, seq_len: int = 32) -> float:
    import torch

    x = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = variants["lora-unmerged"](input_ids=x).logits
        b = variants["merged"](input_ids=x).logits
    diff = float((a - b).abs().max())
    if not diff <= 1e-3:
        raise SystemExit(f"merged logits differ from LoRA-unmerged by {diff:.3g} (> 1e-3): not comparing")
    return diff


def time_variants(variants: dict, seq_lens, runs: int, warmup: int, vocab: int, lora_r: int) -> dict:
    import torch

    out: dict = {}
    names = list(variants)
    for n in seq_lens:
        x = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            for _ in range(warmup):
                for name in names:
                    variants[name](input_ids=x, use_cache=False)
            times: dict[str, list[float]] = {name: [] for name in names}
            for i in range(runs):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    t0 = time.perf_counter()
                    variants[name](input_ids=x, use_cache=False)
                    times[name].append(time.perf_counter() - t0)
        case: dict = {}
        for name in names:
            m = variants[name]
            cfg = m.config if not hasattr(m, "get_base_model") else m.get_base_model().config
            fl = _flops(cfg, n) + (_lora_flops(m, lora_r) if name == "lora-unmerged" else 0.0)
            t = sorted(times[name])
            med = statistics.median(t)
            case[name] = {"median_ms": med * 1e3, "p90_ms": t[min(len(t) - 1, int(0.9 * len(t)))] * 1e3,
                          "min_ms": t[0] * 1e3, "runs": len(t), "tokens_per_s": n / med if med > 0 else None,
                          "flops_per_token": fl}
        ref = case["merged"]
        for name in names:
            case[name]["latency_vs_merged"] = case[name]["median_ms"] / ref["median_ms"]
            case[name]["flops_vs_merged"] = case[name]["flops_per_token"] / ref["flops_per_token"]
        out[f"batch1_seq{n}"] = case
    return out


def _tiny():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=128, hidden_size=64, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
               max_position_embeddings=256)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(num_attention_heads=4, intermediate_size=96, **cfg)).eval()
    pruned = LlamaForCausalLM(LlamaConfig(num_attention_heads=2, intermediate_size=48, **cfg)).eval()
    return dense, pruned


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dense", nargs="?", help="dense model (built-in name, HF folder, .gguf)")
    ap.add_argument("pruned", nargs="?", help="pruned model folder (compress prune --out)")
    ap.add_argument("--seq-lens", default="2048,128", help="prompt lengths, batch 1 (default 2048,128)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8, compress prune's default)")
    ap.add_argument("--name", default=None, help="results file suffix")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here instead of benchmarks/results/")
    ap.add_argument("--smoke", action="store_true", help="tiny random models, 1 run at 16 and 8 tokens")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        dense, pruned = _tiny()
        seq_lens, runs, warmup = [16, 8], 1, 0
    else:
        if not (args.dense and args.pruned):
            ap.error("give DENSE and PRUNED (or --smoke)")
        from compressor.modeling.loading import load_model

        dense, _, _ = load_model(args.dense)
        pruned, _, _ = load_model(args.pruned)
        seq_lens, runs, warmup = [int(s) for s in args.seq_lens.split(",") if s.strip()], args.runs, args.warmup
    variants = build_variants(dense, pruned, args.lora_r)
    vocab = int(pruned.config.vocab_size)
    merge_diff = check_merge(variants, vocab)
    cases = time_variants(variants, seq_lens, runs, warmup, vocab, args.lora_r)
    result = {"git": git_rev(), "machine": machine(), "torch_threads": torch.get_num_threads(),
              "dense": "tiny-random" if args.smoke else args.dense, "pruned": "tiny-random" if args.smoke else args.pruned,
              "lora_r": args.lora_r, "runs": runs, "warmup": warmup, "alternating": True, "dtype": "float32",
              "merge_max_abs_logit_diff": merge_diff, "cases": cases, "smoke": bool(args.smoke)}
    for case, rows in cases.items():
        print(case)
        for name, r in rows.items():
            print(f"  {name:14s} {r['median_ms']:9.2f} ms  {r['tokens_per_s']:10.1f} tok/s  latency x{r['latency_vs_merged']:.3f}"
                  f"  FLOPs x{r['flops_vs_merged']:.3f} (vs merged)")
    if args.out is not None:
        write_json_result(args.out, result)
    else:
        write_result("lora_merge_latency" + (f"_{args.name}" if args.name else ""), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
