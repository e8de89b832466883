"""Screening grid for the quality issue: many pruning configurations at one ratio and one budget, each
driven through the product's own loop object (:class:`compressor.algorithm.loop.PruneLoop`), one at a time.

Every row gets the same data, steps, batch and evaluation (WikiText-2 test, non-overlapping windows of
``--eval-seq-len`` tokens, the first ``--eval-windows``). Rows with uniform widths are merged and the
merged model is evaluated; rows with per-layer widths (``widths=adaptive``, ``skip_layers``) are evaluated
on the masked model, which computes what the sliced model would (``tests/algorithm/test_merge.py``).

    python benchmarks/screen.py --ratio 0.5 --steps 60 --rows lora,taylor,activation
    python benchmarks/screen.py --model qwen2.5-coder-0.5b --ratio 0.5 --steps 30 --rows default,paper
    python benchmarks/screen.py --list

Rows name only what differs from ``PruneConfig``'s defaults (today's default recipe), except the rows built by
``_recipe`` (``paper``, ``official``, ``paper-activation*``): ``compressor.algorithm.config.RECIPES`` (``--recipe
paper|official``) with this grid's budget, plus their own changes.

Results are appended row by row to ``benchmarks/results/<name>.json`` (a killed run keeps its rows).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dense_hf_dir, git_rev, load_json, machine, write_result  # noqa: E402
from plots import plot_screen  # noqa: E402

from compressor.algorithm.config import RECIPES  # noqa: E402

OFFICIAL = dict(aggregate="official", prune_start=0.1, schedule="cubic", ema_start="zero", prune_until=0.9)
KD = dict(distill=0.5, lr=5e-4)


def _recipe(name: str, **changes: Any) -> dict[str, Any]:
    """A ``--recipe`` set of fields without its budget (steps, prune_every: the grid sets those), plus ``changes``."""
    return {**{k: v for k, v in RECIPES[name].items() if k not in ("steps", "prune_every")}, **changes}


#: name -> PruneConfig fields that differ from the defaults of this grid
ROWS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": _recipe("paper"),
    "official": _recipe("official"),
    # the paper recipe with only the criterion changed to the default's (separates criterion from recovery)
    "paper-activation": _recipe("paper", criterion="activation"),
    "paper-activation-comp": _recipe("paper", criterion="activation", compensate=True),
    "paper-activation-kd": _recipe("paper", criterion="activation", distill=0.5),
    "paper-activation-lr5e-4": _recipe("paper", criterion="activation", lr=5e-4),
    "default-nocomp": dict(compensate=False),
    "residual": dict(criterion="residual"),
    "residual-adaptive": dict(criterion="residual", widths="adaptive"),
    "adaptive": dict(widths="adaptive"),
    "kd1": dict(distill=1.0),
    "lr1e-3": dict(lr=1e-3),
    # compensation's statistics on more calibration tokens (6,144 on SmolLM2 before the default became 65,536)
    "lr1e-3-ct24k": dict(lr=1e-3, compensate_tokens=24576),
    "lr1e-3-ct64k": dict(lr=1e-3, compensate_tokens=65536),
    # compensation's statistics collected again before every mask update, from the model as it is then
    "lr1e-3-cur": dict(lr=1e-3, compensate_stats="current"),
    "lr1e-3-cur-ct24k": dict(lr=1e-3, compensate_stats="current", compensate_tokens=24576),
    "kd1-lr1e-3": dict(distill=1.0, lr=1e-3),
    "amp": dict(amp="bf16"),
    "amp-ct128k": dict(amp="bf16", compensate_tokens=131072),
    "amp-lr2e-3": dict(amp="bf16", lr=2e-3),
    "seq512": dict(batch_size=2, seq_len=512),
    "seq1024": dict(batch_size=1, seq_len=1024),
    "lr2e-3": dict(lr=2e-3),
    # LoRA+: B's learning rate a multiple of A's (today's peak lr for A)
    "lora-plus4": dict(lora_plus=4.0),
    "lora-plus8": dict(lora_plus=8.0),
    "lora-plus16-lr5e-4": dict(lora_plus=16.0, lr=5e-4),
    "ct128k": dict(compensate_tokens=131072),
    "pu0.7": dict(prune_until=0.7),
    "pu0.9": dict(prune_until=0.9),
    "pu0.3": dict(prune_until=0.3),
    "teacher-dense": dict(teacher="dense"),
    "kd1-teacher-dense": dict(distill=1.0, teacher="dense"),
    "kd0.8-teacher-dense": dict(distill=0.8, teacher="dense"),
    "lora": dict(criterion="lora"),
    "taylor": dict(criterion="taylor"),
    "activation": dict(criterion="activation"),
    "magnitude": dict(criterion="magnitude"),
    "random": dict(criterion="random"),
    "lora-official": dict(criterion="lora", **OFFICIAL),
    "taylor-official": dict(criterion="taylor", **OFFICIAL),
    "lora-agg-official": dict(criterion="lora", aggregate="official"),
    "lora-start0.2": dict(criterion="lora", prune_start=0.2),
    "lora-cubic": dict(criterion="lora", schedule="cubic"),
    "activation-start0.2": dict(criterion="activation", prune_start=0.2),
    "activation-cubic": dict(criterion="activation", schedule="cubic"),
    "activation-kd": dict(criterion="activation", **KD),
    "lora-kd": dict(criterion="lora", **KD),
    "activation-kd-r32": dict(criterion="activation", lora_r=32, lora_alpha=64.0, **KD),
    "activation-kd-lr1e-3": dict(criterion="activation", distill=0.5, lr=1e-3),
    "activation-kd1": dict(criterion="activation", distill=1.0, lr=5e-4),
    "activation-adaptive": dict(criterion="activation", widths="adaptive"),
    "activation-skip": dict(criterion="activation", skip_layers="official"),
    "activation-balanced": dict(criterion="activation", head_policy="balanced"),
    "activation-kd-adaptive": dict(criterion="activation", widths="adaptive", **KD),
    "activation-kd-clip": dict(criterion="activation", max_grad_norm=1.0, **KD),
    "activation-comp": dict(criterion="activation", compensate=True),
    "activation-kd-comp": dict(criterion="activation", compensate=True, **KD),
    "activation-kd-comp-lr1e-3": dict(criterion="activation", compensate=True, distill=0.5, lr=1e-3),
    "activation-kd-comp-r32": dict(criterion="activation", compensate=True, lora_r=32, lora_alpha=64.0, **KD),
    "lora-comp": dict(criterion="lora", compensate=True),
    "activation-kd-comp-adaptive": dict(criterion="activation", compensate=True, widths="adaptive", **KD),
    "activation-kd-comp-balanced": dict(criterion="activation", compensate=True, head_policy="balanced", **KD),
    "activation-kd-comp-h1": dict(criterion="activation", compensate=True, distill_hidden=1.0, **KD),
    "activation-kd-comp-h1-adaptive": dict(criterion="activation", compensate=True, distill_hidden=1.0,
                                           widths="adaptive", **KD),
    "activation-kd1-comp-h1": dict(criterion="activation", compensate=True, distill=1.0, distill_hidden=1.0, lr=5e-4),
}


def _wikitext(model, tok, text: str, a, windows: int) -> dict[str, Any]:
    """WikiText-2 perplexity of ``model`` on the first ``windows`` windows of ``--eval-seq-len`` tokens."""
    import torch

    from compressor.evaluation.perplexity import default_add_bos, perplexity

    with torch.no_grad():
        return perplexity(model, tok, text, seq_len=a.eval_seq_len, max_windows=windows,
                          add_bos=default_add_bos(model, tok))


def _probe(loop, tok, text: str, a) -> dict[str, Any]:
    """Perplexity of the masked model right after the last mask update (what the recovery steps start from), on
    the first ``--probe-windows`` windows; the model goes back to training mode afterwards."""
    m = loop.masked_model
    m.eval()
    t0 = time.time()
    p = _wikitext(m, tok, text, a, a.probe_windows)
    m.train()
    eval_s = round(time.time() - t0, 1)
    print(f"    after the last mask update (step {loop.step_count}): WikiText-2 {p['ppl']:.2f} on {p['windows']} "
          f"windows ({eval_s:.0f}s)", flush=True)
    return {"step": loop.step_count, "wikitext2": p["ppl"], "windows": p["windows"], "eval_s": eval_s}


def run_row(name: str, fields: dict[str, Any], a, dense: Path, text: str) -> dict[str, Any]:

    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop
    from compressor.modeling.loading import load_model

    base = dict(ratio=a.ratio, steps=a.steps, prune_every=a.prune_every, batch_size=a.batch_size, seq_len=a.seq_len,
                eval_windows=0, seed=a.seed)
    cfg = PruneConfig(**{**base, **fields})
    model, tok, _ = load_model(str(dense))
    blocks = as_blocks("wiki", tok, cfg)
    t0 = time.time()
    loop = PruneLoop(model, cfg, blocks, model_id=str(dense))
    last = None
    at_target = None
    while not loop.done:
        last = loop.step()
        if a.probe_windows and at_target is None and last.step == loop.last_event:
            at_target = _probe(loop, tok, text, a)
        if last.step % max(1, cfg.steps // 10) == 0:
            print(f"    step {last.step}/{cfg.steps} loss {last.loss:.3f} sparsity {last.sparsity:.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0 - (at_target["eval_s"] if at_target else 0.0)
    uniform = loop.widths.uniform
    if uniform:
        model_eval = loop.finish()
    else:
        model_eval = loop.masked_model
        model_eval.eval()
    ppl = _wikitext(model_eval.get_base_model() if hasattr(model_eval, "get_base_model") else model_eval,
                    tok, text, a, a.eval_windows)
    row = {"name": name, "fields": fields, "config": cfg.to_dict(), "wikitext2": ppl["ppl"],
           "windows": ppl["windows"], "sparsity": last.sparsity if last else None, "final_loss": last.loss if last else None,
           "final_lm_loss": last.lm_loss if last else None, "train_s": round(train_s, 1),
           "evaluated_on": "merged" if uniform else "masked", "after_last_mask_update": at_target,
           "channels_per_layer": [int(m.channels.sum()) for m in loop.masks.layers],
           "heads_per_layer": [int(m.heads.sum()) for m in loop.masks.layers]}
    del loop, model, model_eval
    gc.collect()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a built-in name (an HF copy is made once)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--rows", default="lora,taylor,activation")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prune-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seq-len", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=20)
    ap.add_argument("--probe-windows", type=int, default=0,
                    help="also evaluate the masked model right after the last mask update on this many windows "
                         "(what recovery starts from; 0: off)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        for k, v in ROWS.items():
            print(f"{k:28s} {v}")
        return
    from calibration.data import load_eval_text
    from compressor.modeling.loading import load_model

    stem = "" if a.model == "smollm2-135m" else f"{a.model}_"
    name = a.name or f"screen_{stem}{int(round(a.ratio * 100))}_{a.steps}"
    path = RESULTS / f"{name}.json"
    doc = load_json(path) if path.is_file() else {"rows": []}
    doc.update({"ratio": a.ratio, "steps": a.steps, "prune_every": a.prune_every, "batch_size": a.batch_size,
                "seq_len": a.seq_len, "eval": {"data": "wikitext2 test", "seq_len": a.eval_seq_len,
                                               "windows": a.eval_windows}, "machine": machine(), "git": git_rev(),
                "model": a.model})
    dense = dense_hf_dir(a.model)
    text = load_eval_text("wikitext2")
    if "dense" not in doc:
        m, tok, _ = load_model(str(dense))
        doc["dense"] = _wikitext(m, tok, text, a, a.eval_windows)["ppl"]
        del m
    print(f"dense WikiText-2: {doc['dense']:.2f}", flush=True)
    for r in a.rows.split(","):
        if r not in ROWS:
            raise SystemExit(f"unknown row {r!r}; --list shows the rows")
        print(f"== {r}: {ROWS[r]}", flush=True)
        row = run_row(r, ROWS[r], a, dense, text)
        row["x_dense"] = round(row["wikitext2"] / doc["dense"], 3)
        print(f"   -> WikiText-2 {row['wikitext2']:.2f} ({row['x_dense']:.2f} x dense), train {row['train_s']:.0f}s",
              flush=True)
        doc["rows"] = [x for x in doc["rows"] if x["name"] != r] + [row]
        write_result(name, doc)
        plot_screen(doc, name)


if __name__ == "__main__":
    main()
