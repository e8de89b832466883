"""Paper Fig. 4: how far the LoRA-guided criterion picks the same groups as vanilla Taylor.

One LoRA fine-tune (no masking) in which W0 also gets a gradient, so that on every step both the
``lora`` (Eq. 10, from LoRA's tensors only) and ``taylor`` (Eq. 3, from W's gradient) scores are computed
from the very same batch and weights and smoothed with the same λ. At 10, 20 and 50 % the masks each
criterion would choose are compared: overlap = |kept_lora ∩ kept_taylor| / |kept| (heads and channels,
all layers), plus a random-mask expectation for reference.

    python benchmarks/mask_agreement.py --steps 20
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dense_hf_dir, git_rev, machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ratios", default="0.1,0.2,0.5")
    a = ap.parse_args()
    from calibration import load_texts, pack_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.loop import PruneLoop
    from compressor.algorithm.masking import MaskState, mask_lowest
    from compressor.algorithm.schedule import solve_widths
    from compressor.algorithm.scoring import MovingAverage, model_scores
    from compressor.modeling.loading import load_model

    model_dir = a.model or str(dense_hf_dir())
    model, tok, _ = load_model(model_dir)
    n = a.steps
    # the product's loop in taylor mode (W0 has a gradient, LoRA trains as usual); every step scores and no
    # mask changes before the last step. An observer scores the same gradients with the lora criterion too.
    cfg = PruneConfig(ratio=0.5, criterion="taylor", steps=n, prune_every=1, prune_start=(n - 1) / n, prune_until=1.0,
                      lr=a.lr, batch_size=a.batch_size, seq_len=a.seq_len, eval_windows=0)
    blocks = pack_blocks(tok, load_texts("wiki"), a.seq_len, max_blocks=a.steps * a.batch_size, seed=0)
    loop = PruneLoop(model, cfg, blocks, model_id=model_dir)
    lora_ema = MovingAverage(0.9)
    loop.observers.append(lambda lp: lora_ema.update(model_scores(lp.pm, lp.groups, get_criterion("lora"))))
    while not loop.done:
        rec = loop.step()
        print(f"step {rec.step}/{n} loss {rec.loss:.3f}", flush=True)
    groups = loop.groups
    emas = {"lora": lora_ema, "taylor": loop.ema}
    rows = []
    lg = groups.layers[0]
    for ratio in [float(r) for r in a.ratios.split(",")]:
        w = solve_widths(lg, groups.hidden_size, ratio)
        kept = {}
        for name, ema in emas.items():
            ms = MaskState.full(groups)
            mask_lowest(ms, ema.value, groups, w.heads_per_kv, w.intermediate_size)
            kept[name] = ms
        inter_h = sum(int((x.heads & y.heads).sum()) for x, y in zip(kept["lora"].layers, kept["taylor"].layers))
        inter_c = sum(int((x.channels & y.channels).sum()) for x, y in zip(kept["lora"].layers, kept["taylor"].layers))
        n_h = w.num_heads * groups.num_layers
        n_c = w.intermediate_size * groups.num_layers
        pruned_h = (lg.num_heads - w.num_heads) * groups.num_layers
        pruned_c = (lg.intermediate_size - w.intermediate_size) * groups.num_layers
        both_pruned_c = pruned_c - (n_c - inter_c)
        rows.append({"ratio": ratio, "kept_heads_overlap": round(inter_h / n_h, 4),
                     "kept_channels_overlap": round(inter_c / n_c, 4),
                     "pruned_channels_overlap": round(both_pruned_c / max(1, pruned_c), 4),
                     "random_expectation_kept": round(w.intermediate_size / lg.intermediate_size, 4),
                     "pruned_heads": pruned_h, "pruned_channels": pruned_c})
        print(rows[-1])
    write_result("mask_agreement", {"benchmark": "mask agreement lora vs taylor (paper Fig. 4)", "model": model_dir,
                                    "steps": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len, "rows": rows,
                                    "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
