"""How faithful is each W-gradient-free criterion to vanilla Taylor, per module kind and per step?

One run of the product's loop with ``criterion=taylor`` (so ``∂L/∂W0`` exists) on SmolLM2-135M; after
every backward pass, on the *same* gradients and weights, the group vectors of each projection kind are
formed by every criterion and compared with Spearman's rank correlation:

* kinds: ``q rows`` (per query head), ``o cols`` (per head), ``gate/up rows`` (per channel), ``down cols``
  (per channel), and the full group scores (``heads``, ``channels``) as the loop forms them (Eq. 4);
* criteria: ``lora`` (Eq. 10), ``magnitude``, and ``activation`` (first-order effect of removing the group,
  from o_proj / down_proj input gradients; group-level only);
* the LoRA recovery ratio ``‖B·∇A‖ / ‖∇B·A‖`` per kind (issue #11, hypothesis 1).

    python benchmarks/criterion_fidelity.py --steps 30

Writes ``benchmarks/results/criterion_fidelity.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dense_hf_dir, git_rev, machine, write_result  # noqa: E402

KINDS = {"q rows": ("q_proj", 1), "o cols": ("o_proj", 0), "gate rows": ("gate_proj", 1), "up rows": ("up_proj", 1),
         "down cols": ("down_proj", 0)}


def spearman(a, b) -> float:
    import torch

    ra = torch.argsort(torch.argsort(a.double())).double()
    rb = torch.argsort(torch.argsort(b.double())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--layers", default="0,7,15,22,29", help="layers to compare (all: every layer)")
    a = ap.parse_args()


    from compressor.algorithm.activation_scorer import ActivationScorer
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.criteria import get_criterion
    from compressor.algorithm.groups import decoder_layers, projection
    from compressor.algorithm.loop import PruneLoop
    from compressor.algorithm.scoring import layer_scores, projection_tensors
    from compressor.modeling.adapters import lora_parts
    from compressor.modeling.loading import load_model

    dense = dense_hf_dir()
    model, tok, _ = load_model(str(dense))
    # ratio 0.5, but masks never change: prune_start just below 1 keeps every step a scoring step without masking
    cfg = PruneConfig(ratio=0.5, criterion="taylor", steps=a.steps, prune_every=1, prune_start=(a.steps - 1) / a.steps,
                      prune_until=1.0, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, eval_windows=0)
    loop = PruneLoop(model, cfg, as_blocks("wiki", tok, cfg), model_id=str(dense))
    act = ActivationScorer(loop.pm, loop.groups)
    layers = list(range(loop.groups.num_layers)) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
    crits = {n: get_criterion(n) for n in ("taylor", "lora", "magnitude")}
    steps: list[dict] = []

    def observe(lp: PruneLoop) -> None:
        act_scores = act.collect()
        rec: dict = {"step": lp.step_count + 1, "kinds": {}}
        per_kind: dict = {k: {"lora": [], "magnitude": [], "recovery": []} for k in KINDS}
        per_group: dict = {g: {"lora": [], "magnitude": [], "activation": []} for g in ("heads", "channels")}
        dl = decoder_layers(lp.pm)
        for li in layers:
            layer, lg = dl[li], lp.groups.layers[li]
            for kind, (name, dim) in KINDS.items():
                mod = projection(layer, name)
                vec = {}
                for cn, c in crits.items():
                    imp = c(projection_tensors(mod, c, None))
                    v = imp.sum(dim=dim)
                    if name in ("q_proj", "o_proj"):
                        v = v.view(lg.num_heads, lg.head_dim).sum(1)
                    vec[cn] = v
                per_kind[kind]["lora"].append(spearman(vec["lora"], vec["taylor"]))
                per_kind[kind]["magnitude"].append(spearman(vec["magnitude"], vec["taylor"]))
                A, B, _ = lora_parts(mod)
                if A is not None and A.grad is not None:
                    num = float((B.detach() @ A.grad).norm())
                    den = float((B.grad @ A.detach()).norm())
                    per_kind[kind]["recovery"].append(num / den if den > 0 else float("nan"))
            full = {cn: layer_scores(layer, lg, c) for cn, c in crits.items()}
            for g in ("heads", "channels"):
                ref = getattr(full["taylor"], g)
                per_group[g]["lora"].append(spearman(getattr(full["lora"], g), ref))
                per_group[g]["magnitude"].append(spearman(getattr(full["magnitude"], g), ref))
                per_group[g]["activation"].append(spearman(getattr(act_scores[li], g), ref))

        def mean(xs):
            xs = [x for x in xs if x == x]
            return sum(xs) / len(xs) if xs else None

        for kind, d in per_kind.items():
            rec["kinds"][kind] = {k: mean(v) for k, v in d.items()}
        for g, d in per_group.items():
            rec["kinds"][g] = {k: mean(v) for k, v in d.items()}
        steps.append(rec)
        print(f"step {rec['step']}: " + "  ".join(
            f"{k}: lora {v.get('lora', 0):.2f}" + (f" act {v['activation']:.2f}" if v.get("activation") is not None else "")
            + (f" rec {v['recovery']:.3f}" if v.get("recovery") is not None else "")
            for k, v in rec["kinds"].items()), flush=True)

    loop.observers.append(observe)
    while not loop.done:
        loop.step()
    write_result("criterion_fidelity", {
        "what": "Spearman rank correlation with vanilla Taylor (same step, same weights and gradients), mean over "
                "the compared layers; recovery = ||B·dA|| / ||dB·A||", "layers": layers, "steps": steps,
        "config": cfg.to_dict(), "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
