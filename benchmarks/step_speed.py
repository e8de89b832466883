"""Side-by-side speed of the pruning fine-tune's step: float32 against bfloat16 autocast (``--amp bf16``), and
the chunked LM-head loss against the textbook ``log_softmax`` formulation it replaced, in one process.

Each mode drives a fresh :class:`compressor.algorithm.loop.PruneLoop` (the default recipe: ``activation`` scoring,
distillation 0.5, compensation statistics being collected) over the same calibration batches; the steps timed
are scoring steps before the first mask update (the first one is a warm-up and not counted). The head-loss rows
time one LM-head + loss pass with a teacher (the default's distillation) on ``batch × seq`` positions and
check that both give the same loss and gradient.

    python benchmarks/step_speed.py                      # SmolLM2-135M, 6 timed steps per mode
    python benchmarks/step_speed.py --steps 4 --model gemma3-270m

Writes ``benchmarks/results/step_speed.{json,png}`` (``--name`` picks another stem). Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check_result_name, dense_hf_dir, git_rev, machine, write_result  # noqa: E402


def reference_head_loss(h, weight, y, th, ce_scale, kl_scale, chunk):
    """The earlier formulation (log_softmax of student and teacher, explicit p, tp): value and gradient w.r.t. h."""
    import torch
    import torch.nn.functional as F

    grad_h = torch.empty_like(h)
    ce_sum = h.new_zeros((), dtype=torch.float32)
    kl_sum = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk):
        e = min(s + chunk, h.shape[0])
        logp = torch.log_softmax(F.linear(h[s:e], weight).float(), dim=-1)
        p = logp.exp()
        yc = y[s:e]
        valid = yc != -100
        tgt = torch.where(valid, yc, 0)
        ce_sum += -(logp.gather(1, tgt[:, None]).squeeze(1) * valid).sum()
        g = p * (ce_scale * valid[:, None])
        g.scatter_add_(1, tgt[:, None], (-ce_scale * valid).to(g.dtype)[:, None])
        tlogp = torch.log_softmax(F.linear(th[s:e], weight).float(), dim=-1)
        tp = tlogp.exp()
        kl_sum += (tp * (tlogp - logp)).sum()
        g += kl_scale * (p - tp)
        grad_h[s:e] = (g.to(weight.dtype) @ weight).to(h.dtype)
    return ce_scale * ce_sum + kl_scale * kl_sum, grad_h


class _HeadOnly:
    """A causal LM whose decoder hands back set hidden states, over the real model's LM head and config: what the
    product's :func:`compressor.algorithm.loss.lm_loss` reads (``get_decoder``, ``get_output_embeddings``, a config
    without logit soft-capping), so timing it times the LM head and loss alone, exactly as a pruning step runs them."""

    def __init__(self, model) -> None:
        from types import SimpleNamespace

        import torch

        self.config = model.config
        self.hidden = None
        head = model.get_output_embeddings()
        self._head = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=head.bias is not None)
        self._head.weight = torch.nn.Parameter(head.weight.detach(), requires_grad=False)
        if head.bias is not None:
            self._head.bias = torch.nn.Parameter(head.bias.detach(), requires_grad=False)
        self._decoder = lambda **_: SimpleNamespace(last_hidden_state=self.hidden)

    def get_decoder(self):
        return self._decoder

    def get_output_embeddings(self):
        return self._head


def head_loss_rows(model, batch: int, seq: int, repeats: int) -> list[dict]:
    """LM head + loss with a teacher (distillation 0.5, the default's) on ``batch × seq`` positions: the product's
    chunked :func:`~compressor.algorithm.loss.lm_loss` against :func:`reference_head_loss`, same hidden states,
    targets and weights; value and gradient w.r.t. the hidden states compared."""
    import torch

    from compressor.algorithm.loss import lm_loss, supports_chunked_loss

    lm = _HeadOnly(model)
    if not supports_chunked_loss(lm):
        raise SystemExit(f"{type(model).__name__} post-processes its logits: the product does not use the chunked "
                         "loss for it (no head-loss rows)")
    head = lm.get_output_embeddings().weight
    d = head.shape[1]
    g = torch.Generator().manual_seed(0)
    n = batch * seq
    ids = torch.randint(0, head.shape[0], (batch, seq), generator=g)
    h = torch.randn(batch, seq, d, generator=g)
    th = h + 0.1 * torch.randn(batch, seq, d, generator=g)
    distill, chunk = 0.5, 256
    # the targets and weights lm_loss forms: the inputs shifted by one (the last position has none), CE averaged
    # over the batch × (seq − 1) targets, KL over all batch × seq positions
    y = torch.full_like(ids, -100)
    y[:, :-1] = ids[:, 1:]
    ce_scale, kl_scale = (1 - distill) / (batch * (seq - 1)), distill / n

    def fused():
        lm.hidden = h.clone().requires_grad_(True)
        loss, _ = lm_loss(lm, ids, chunk_tokens=chunk, teacher_hidden=th, distill=distill)
        loss.backward()
        return loss.detach(), lm.hidden.grad.reshape(n, d)

    def reference():
        return reference_head_loss(h.reshape(n, d), head, y.reshape(n), th.reshape(n, d), ce_scale, kl_scale, chunk)

    rows, results = [], {}
    for name, fn in (("head loss, textbook log_softmax", reference), ("head loss, fused (the product)", fused)):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            results[name] = fn()
            times.append(time.perf_counter() - t)
        rows.append({"mode": name, "s_median": round(statistics.median(times), 4), "positions": n})
        print(f"{name:34s} {rows[-1]['s_median']:.3f} s for {n} positions", flush=True)
    (la, ga), (lb, gb) = results.values()
    rows[-1]["max_abs_grad_diff"] = float((ga - gb).abs().max())
    rows[-1]["loss_diff"] = float((la - lb).abs())
    return rows


def step_rows(path: Path, ratio: float, steps: int) -> list[dict]:
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.loop import PruneLoop
    from compressor.modeling.loading import load_model

    rows = []
    for amp in ("off", "bf16"):
        # no mask update within the timed steps: every step scores, trains and collects statistics
        cfg = PruneConfig(ratio=ratio, steps=1000, prune_every=500, eval_windows=0, amp=amp)
        model, tok, _ = load_model(str(path))
        loop = PruneLoop(model, cfg, as_blocks("wiki", tok, cfg), model_id=str(path))
        loop.step()  # warm-up
        times, losses = [], []
        for _ in range(steps):
            rec = loop.step()
            times.append(rec.time_s)
            losses.append(rec.loss)
        rows.append({"mode": f"step, amp {amp}", "s_median": round(statistics.median(times), 3),
                     "s_all": times, "losses": losses})
        print(f"step, amp {amp:5s} median {rows[-1]['s_median']:.2f} s  losses {[round(x, 4) for x in losses]}",
              flush=True)
        del loop, model
        gc.collect()
    rows[1]["speedup_vs_float32"] = round(rows[0]["s_median"] / rows[1]["s_median"], 3)
    return rows


def plot(doc: dict, name: str = "step_speed") -> None:
    from plots import pyplot, save_png

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind in zip(axes, ("step", "head loss")):
        rows = [r for r in doc["rows"] if r["mode"].startswith(kind)]
        ax.bar([r["mode"].split(", ", 1)[1] for r in rows], [r["s_median"] for r in rows], color=["C1", "C0"])
        ax.set_ylabel("seconds (median)")
        ax.set_title(kind)
    fig.suptitle(f"{doc['model']}: pruning step, float32 vs bf16 autocast; LM-head loss, textbook vs fused")
    save_png(fig, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=5, help="timed head-loss passes per formulation")
    ap.add_argument("--name", default="step_speed",
                    help="result name: writes benchmarks/results/NAME.{json,png} (e.g. step_speed_<machine>)")
    a = ap.parse_args()
    check_result_name(ap, a.name, "step_speed_epyc")
    import torch

    from compressor.core.device import native_bf16
    from compressor.modeling.loading import load_model

    path = dense_hf_dir(a.model)
    model, _, _ = load_model(str(path))
    rows = head_loss_rows(model, 4, 256, a.repeats)
    del model
    rows = step_rows(path, a.ratio, a.steps) + rows
    doc = {"model": a.model, "machine": machine(), "git": git_rev(), "native_bf16": native_bf16(torch.device("cpu")),
           "batch": "4 x 256 tokens", "rows": rows}
    write_result(a.name, doc)
    plot(doc, a.name)


if __name__ == "__main__":
    main()
