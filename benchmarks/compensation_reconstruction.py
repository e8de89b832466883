"""Size compensation refinements before building them: relative error ||X_K W_K'^T - X W^T||^2 / ||X W^T||^2 of
``down_proj``'s output on held-out WikiText-2 tokens (dense inputs), for a pruned run's kept channels, with
(a) no compensation, (b) least squares as the product (1 % damping), (c) least squares with an intercept, and
(d) an OBS-style greedy kept set of the same size (remove the cheapest input, update the rest).

    python benchmarks/compensation_reconstruction.py runs/s50 --batches 32

Writes ``benchmarks/results/compensation_reconstruction.json``. SmolLM2-shaped MLPs (no bias); dense model built in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dense_hf_dir, git_rev, load_json, machine, write_result  # noqa: E402


def _err(xk, wk, y, b=0.0) -> float:
    """Relative squared error of the kept inputs' output (plus an intercept ``b``) against the dense output."""
    return round(float(((xk @ wk.t() + b - y) ** 2).sum() / (y ** 2).sum()), 4)


def _solve(g, lam, cols, removed):
    """Least-squares map from the kept inputs ``cols`` to the removed ones, from the Gram matrix ``g`` (damped)."""
    import torch

    return torch.linalg.solve(g[cols][:, cols] + lam * torch.eye(len(cols), dtype=g.dtype), g[cols][:, removed])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a compress prune output (its compression_report.json names the kept channels)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="0,7,15,22,29")
    ap.add_argument("--batches", type=int, default=32, help="calibration batches of 4 x 256 tokens for the statistics")
    a = ap.parse_args()
    import torch

    from calibration.data import load_eval_text
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.groups import decoder_layers
    from compressor.modeling.loading import load_model

    m, tok, _ = load_model(str(dense_hf_dir(a.model)))
    m.eval()
    blocks = as_blocks("wiki", tok, PruneConfig(ratio=0.5))
    kept = load_json(Path(a.folder) / "compression_report.json")["kept"]
    layers = [int(i) for i in a.layers.split(",")]
    inter = m.config.intermediate_size
    gram = {i: torch.zeros(inter + 1, inter + 1, dtype=torch.float64) for i in layers}
    held: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    phase = {"calib": True}

    def hook(i):
        def f(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            if phase["calib"]:
                x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # the intercept's column
                gram[i] += x1.t() @ x1
            else:
                held[i].append(x.float())
        return f

    dec = decoder_layers(m)
    for i in layers:
        dec[i].mlp.down_proj.register_forward_pre_hook(hook(i))
    with torch.no_grad():
        for b in range(a.batches):
            m(input_ids=blocks[4 * b:4 * b + 4])
        phase["calib"] = False
        ids = tok(load_eval_text("wikitext2"), return_tensors="pt").input_ids[0][: 8 * 1024].view(8, 1024)
        for b in range(0, 8, 2):
            m(input_ids=ids[b:b + 2])
    rows: dict[str, list] = {"layer": layers, "drop": [], "least squares": [], "least squares + intercept": [],
                             "OBS greedy kept set": [], "OBS overlap with the run's kept set": []}
    for i in layers:
        W = dec[i].mlp.down_proj.weight.double()
        X = torch.cat(held[i]).double()
        Y = X @ W.t()
        K = torch.tensor(kept[i]["channels"])
        R = torch.tensor(sorted(set(range(inter)) - set(kept[i]["channels"])))
        g = gram[i]
        lam = 0.01 * g.diagonal()[:inter].mean()

        rows["drop"].append(_err(X[:, K], W[:, K], Y))
        rows["least squares"].append(_err(X[:, K], W[:, K] + W[:, R] @ _solve(g, lam, K, R).t(), Y))
        T1 = _solve(g, lam, torch.cat([K, torch.tensor([inter])]), R)
        rows["least squares + intercept"].append(_err(X[:, K], W[:, K] + W[:, R] @ T1[:-1].t(), Y, W[:, R] @ T1[-1]))
        hinv = torch.linalg.inv(g[:inter, :inter] + lam * torch.eye(inter, dtype=g.dtype))
        Wc, alive = W.clone(), torch.ones(inter, dtype=torch.bool)
        while int(alive.sum()) > len(K):
            cost = (Wc ** 2).sum(0) / hinv.diagonal()
            cost[~alive] = float("inf")
            j = int(cost.argmin())
            Wc -= torch.outer(Wc[:, j], hinv[j, :]) / hinv[j, j]
            hinv -= torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
            alive[j] = False
        Ko = torch.nonzero(alive).flatten()
        rows["OBS greedy kept set"].append(_err(X[:, Ko], Wc[:, Ko], Y))
        rows["OBS overlap with the run's kept set"].append(len(set(Ko.tolist()) & set(K.tolist())))
        print({k: v[-1] for k, v in rows.items() if k != "layer"}, f"layer {i}", flush=True)
    write_result("compensation_reconstruction", {"model": a.model, "folder": a.folder, "batches": a.batches,
                                                 "rows": rows, "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
