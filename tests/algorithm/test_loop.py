"""compressor.algorithm.loop: the LoRA fine-tuning of the loop (gradient clipping, LoRA+ learning rates) and an
evaluation between steps that leaves the run unchanged."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.loop import PruneLoop
from compressor.core.errors import ConfigError
from tests.tiny import tiny_config, tiny_loop, tiny_model


def test_max_grad_norm_clips_the_lora_gradients():
    loop = tiny_loop(max_grad_norm=1e-6, steps=2, lr=1.0)
    before = {n: p.detach().clone() for n, p in loop.pm.named_parameters() if "lora_" in n}
    loop.step()
    # with lr=1 and the norm clipped to 1e-6, AdamW still moves by ~lr·sign, so check the clipping itself
    norms = []
    loop2 = tiny_loop(max_grad_norm=0.5, steps=2)
    orig = loop2.opt.step

    def spy(*a, **k):
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in loop2.trainable if p.grad is not None]))))
        return orig(*a, **k)

    loop2.opt.step = spy
    loop2.step()
    assert norms and norms[0] <= 0.5 + 1e-5
    assert any(not torch.equal(before[n], p) for n, p in loop.pm.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("criterion", ["activation", "lora"])
def test_evaluating_mid_run_leaves_the_run_unchanged(criterion):
    """A no-gradient evaluation of the masked model between steps (benchmarks/screen.py --probe-windows, or a
    user's own check) adds nothing to compensation's statistics or the scores: the run's masks, weights and losses
    are those of a run without it."""
    kw = dict(compensate=True, compensate_tokens=256, steps=8, prune_every=2, prune_until=0.75, criterion=criterion,
              distill=0.5)
    ref, probed = tiny_loop(**kw), tiny_loop(**kw)
    ids = torch.randint(0, 96, (2, 48))
    for _ in range(kw["steps"]):
        ref.step()
        probed.step()
        m = probed.masked_model
        m.eval()
        with torch.no_grad():
            m(input_ids=ids)
        m.train()
    assert [h["loss"] for h in ref.history] == [h["loss"] for h in probed.history]
    for a, b in zip(ref.masks.layers, probed.masks.layers):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.channels, b.channels)
    sa, sb = ref.finish().state_dict(), probed.finish().state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate():
    model = tiny_model("llama-gqa")
    loop = PruneLoop(model, tiny_config(lora_plus=4.0, lr=1e-3), torch.randint(0, 96, (8, 32)))
    a_group, b_group = loop.opt.param_groups
    names = {id(p): n for n, p in loop.pm.named_parameters()}
    assert all("lora_A" in names[id(p)] for p in a_group["params"])
    assert all("lora_B" in names[id(p)] for p in b_group["params"])
    assert len(a_group["params"]) == len(b_group["params"]) > 0
    assert (a_group["initial_lr"], b_group["initial_lr"]) == (1e-3, pytest.approx(4e-3))
    loop.step()
    assert b_group["lr"] == pytest.approx(4 * a_group["lr"])  # one schedule, scaled
    # the default keeps one group at the peak learning rate
    one = PruneLoop(tiny_model("llama-gqa"), tiny_config(lr=1e-3), torch.randint(0, 96, (8, 32)))
    assert len(one.opt.param_groups) == 1 and one.opt.param_groups[0]["initial_lr"] == 1e-3
    with pytest.raises(ConfigError, match="lora_plus=0.0 is not valid"):
        PruneConfig(ratio=0.5, lora_plus=0.0)
