"""compressor.algorithm.compensation: the least-squares fit of the kept inputs, masked == merged with it, the
teacher with compensated or dense weights, enough tokens for the statistics, the statistics of the current
(masked) model, statistics on disk or in host memory, and resumed runs bit-exact."""
from __future__ import annotations

import pytest
import torch

from compressor import PruneConfig
from compressor.algorithm.groups import decoder_layers, discover_groups, projection
from compressor.algorithm.loop import PruneLoop
from compressor.algorithm.width_plan import sparsity
from compressor.core.errors import ConfigError
from tests.tiny import assert_resumed_run_matches, tiny_config, tiny_loop, tiny_model, tiny_tokenizer


def test_compensation_is_the_least_squares_fit_on_the_calibration_inputs():
    from compressor.algorithm.compensation import Compensator
    from compressor.algorithm.finetune import wrap_lora

    m = tiny_model("llama-gqa")
    groups = discover_groups(m)
    pm = wrap_lora(m, tiny_config())
    comp = Compensator(pm, groups, damp=1e-6)
    xs = []
    down = projection(decoder_layers(pm)[0], "down_proj")
    h = down.register_forward_pre_hook(lambda mod, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    ids = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(5))
    with torch.enable_grad():
        pm(input_ids=ids)
    h.remove()
    x = torch.cat(xs).double()
    base = down.base_layer.weight
    w = base.detach().double().clone()
    y = x @ w.t()
    lg = groups.layers[0]
    keep = torch.ones(lg.intermediate_size, dtype=torch.bool)
    keep[::3] = False
    old = [(torch.ones(lg.num_heads, dtype=torch.bool), torch.ones(lg.intermediate_size, dtype=torch.bool))] * 2
    new = [(old[0][0], keep), old[1]]
    plain_err = ((x[:, keep] @ w[:, keep].t()) - y).norm()
    assert comp.fold(old, new) == 1
    w2 = base.detach().double()
    err = (x[:, keep] @ w2[:, keep].t()) - y
    assert err.norm() < 0.9 * plain_err
    # normal equations: the residual is orthogonal to the kept inputs
    assert (err.t() @ x[:, keep]).abs().max() < 1e-3 * (y.t() @ x[:, keep]).abs().max()
    assert torch.equal(w2[:, ~keep], w[:, ~keep]), "removed columns are left as they were (they are sliced off)"


def test_compensated_masked_model_equals_merged_model():
    loop = tiny_loop("llama-mha", compensate=True, steps=8, prune_every=2, head_policy="balanced", criterion="activation")
    while not loop.done:
        loop.step()
    assert loop.comp is not None and loop.comp.gram[0]["channels"] is None, "statistics released after the last update"
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    loop.pm.eval()
    with torch.no_grad():
        masked = loop.pm(input_ids=ids).logits
    merged = loop.finish()
    with torch.no_grad():
        out = merged(input_ids=ids).logits
    assert torch.allclose(masked, out, atol=1e-4)


def test_distillation_teacher_dense_or_compensated():
    """Compensation edits W0 in place; teacher="dense" swaps the dense weights in for the teacher pass."""
    loop = tiny_loop("llama-mha", compensate=True, distill=0.5, steps=8, prune_every=2, head_policy="balanced",
                 criterion="activation", teacher="dense")
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), loop.teacher():
        before = loop.pm(input_ids=ids).logits
    while not loop.done:
        loop.step()
    from compressor.algorithm.compensation import base_weights

    assert loop.dense_base is not None
    assert any(not torch.equal(w, loop.dense_base[k]) for k, w in base_weights(loop.pm, loop.groups).items()), \
        "compensation changed W0"
    with torch.no_grad(), loop.teacher():
        after = loop.pm(input_ids=ids).logits
    assert torch.equal(before, after)

    # teacher="compensated" (the default) keeps the edited W0 in the teacher pass
    old = tiny_loop("llama-mha", compensate=True, distill=0.5, steps=8, prune_every=2, head_policy="balanced",
                criterion="activation")
    assert old.dense_base is None
    while not old.done:
        old.step()
    with torch.no_grad(), old.teacher():
        drifted = old.pm(input_ids=ids).logits
    assert not torch.allclose(before, drifted, atol=1e-4)
    with pytest.raises(ConfigError, match="teacher"):
        tiny_config(teacher="student")


def test_compensation_statistics_rest_on_enough_tokens():
    """Fewer calibration tokens than inputs leave the least-squares fit under-determined: before the first mask
    update the statistics are topped up to compensate_tokens (default 64 x the widest input, at most 65,536) by forward passes."""
    # prune_until 0.5: two mask updates, so the statistics are still held after the first
    loop = tiny_loop(compensate=True, steps=8, prune_every=2, criterion="activation", prune_until=0.5)
    assert loop.comp is not None
    lg = loop.groups.layers[0]
    from compressor.algorithm.compensation import TOKENS_CAP, TOKENS_PER_INPUT

    widest = max(lg.intermediate_size, lg.num_heads * lg.head_dim)
    assert loop.compensation_target() == min(TOKENS_PER_INPUT * widest, TOKENS_CAP) == 64 * widest
    import compressor.algorithm.compensation_run as run_mod

    orig = run_mod.TOKENS_CAP
    run_mod.TOKENS_CAP = 100
    try:
        assert loop.compensation_target() == 100, "wide models stop at the cap"
    finally:
        run_mod.TOKENS_CAP = orig
    trained = 2 * loop.cfg.batch_size * loop.cfg.seq_len  # the tokens of the two steps before the first update
    assert loop.compensation_target() > trained
    loop.step()
    assert loop.comp.collecting and loop.comp.tokens == loop.cfg.batch_size * loop.cfg.seq_len
    loop.step()  # first mask update
    assert not loop.comp.collecting
    assert loop.compensation_target() <= loop.comp.tokens < loop.compensation_target() + loop.cfg.seq_len
    assert loop.pos == 2 * loop.per_step, "the extra passes do not move the training data order"

    few = tiny_loop(compensate=True, steps=8, prune_every=2, criterion="activation", compensate_tokens=10, prune_until=0.5)
    few.step()
    few.step()
    assert few.comp is not None and few.comp.tokens == trained, "enough tokens already: no extra passes"
    with pytest.raises(ConfigError, match="compensate_tokens=0"):
        tiny_config(compensate_tokens=0)


def test_compensation_resumes_bit_exactly():
    a = tiny_loop(compensate=True, steps=10, prune_every=2, criterion="activation")
    for _ in range(3):
        a.step()
    import copy

    st = copy.deepcopy(a.state_dict())  # as through the disk: no tensor shared with the running loop
    b = tiny_loop(compensate=True, steps=10, prune_every=2, criterion="activation")
    b.load_state_dict(st)
    while not a.done:
        ra, rb = a.step(), b.step()
        assert ra.loss == rb.loss
    wa = a.finish().state_dict()
    wb = b.finish().state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compensation_refuses_8bit_and_works_from_a_plan():
    with pytest.raises(ConfigError, match="base_bits=8"):
        PruneConfig(ratio=0.5, compensate=True, base_bits=8)
    from compressor.algorithm.compensation import base_weights

    g = torch.Generator().manual_seed(0)
    m = tiny_model()
    groups = discover_groups(m)
    plan = {"heads": [torch.rand(lg.num_heads, generator=g) for lg in groups.layers],
            "channels": [torch.rand(lg.intermediate_size, generator=g) for lg in groups.layers]}
    before = {k: w.detach().clone() for k, w in base_weights(m, groups).items()}
    loop = PruneLoop(m, tiny_config(compensate=True), torch.randint(0, 96, (8, 32), generator=g), plan=plan)
    after = base_weights(loop.pm, loop.groups)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the plan's masks were compensated"
    assert loop.comp.gram[0]["channels"] is None and sparsity(loop.groups, loop.masks) > 0.3
    # the plan's statistics passes run in the constructor, under the run's mixed precision too
    loop = PruneLoop(tiny_model(), tiny_config(compensate=True, amp="bf16"), torch.randint(0, 96, (8, 32), generator=g),
                     plan=plan)
    assert loop.amp and sparsity(loop.groups, loop.masks) > 0.3


def test_compensation_current_statistics_see_the_earlier_masks():
    """compensate_stats='current': before every mask update after the first, the statistics are collected again
    from the model as it is (earlier masks applied), so the inputs removed earlier are zero in them; 'dense' keeps
    the dense model's statistics. Masked == merged and resume stay exact."""
    kw = dict(compensate=True, steps=12, prune_every=2, prune_until=0.5, criterion="activation",
              head_policy="balanced")
    runs = {}
    for stats in ("dense", "current"):
        loop = tiny_loop("llama-mha", compensate_stats=stats, **kw)
        while len(loop.schedule_log) < 2:  # the loop updates the masks inside step()
            loop.step()
        runs[stats] = loop
    first = runs["current"].schedule_log[0]
    assert first["step"] == 2 and len(runs["current"].schedule_log) == 2
    for stats, loop in runs.items():
        m = loop.masks.layers[0].channels
        g = loop.comp.gram[0]["channels"]
        assert g is not None and not bool(m.all())
        if stats == "current":
            # channels removed at the first update were already masked when the second update's statistics were
            # collected; those removed at the second were still live: some rows are zero, not all
            removed_first = torch.nonzero(~m).flatten()
            zero_rows = [int(c) for c in removed_first if float(g[c].abs().max()) == 0.0]
            assert zero_rows, "the earlier masks are applied while the statistics are collected"
            assert len(zero_rows) < len(removed_first)
        else:
            assert all(float(g[int(c)].abs().max()) > 0 for c in torch.nonzero(~m).flatten())
    with pytest.raises(ConfigError, match="compensate_stats='current'.*compensate=True"):
        tiny_config(compensate=False, compensate_stats="current")
    with pytest.raises(ConfigError, match="compensate_stats"):
        tiny_config(compensate_stats="teacher")

    # masked == merged, and a resumed run is bit-exact
    import copy

    a = tiny_loop("llama-mha", compensate_stats="current", **kw)
    for _ in range(3):
        a.step()
    st = copy.deepcopy(a.state_dict())
    b = tiny_loop("llama-mha", compensate_stats="current", **kw)
    b.load_state_dict(st)
    assert_resumed_run_matches(a, b)


def _compensators(tmp_path, case="llama-gqa"):
    import copy

    from compressor.algorithm.compensation import Compensator
    from compressor.algorithm.groups import discover_groups
    from tests.tiny import lora_with_random_b

    m = tiny_model(case, layers=3)
    groups = discover_groups(m)
    a = lora_with_random_b(m)
    b = copy.deepcopy(a)
    return groups, (a, Compensator(a, groups)), (b, Compensator(b, groups, store="disk", folder=tmp_path / "stats",
                                                                   layers_per_pass=2))


def test_disk_statistics_equal_the_device_ones_and_fold_the_same(tmp_path):
    """Collected two layers per pass (each pass stops after its group), written one file per layer and read back
    one layer at a time: the same matrices, the same tokens and the same folded weights as in memory."""
    from compressor.algorithm.compensation import base_weights
    from compressor.algorithm.masking import MaskState, mask_lowest
    from tests.tiny import random_scores

    groups, (ma, ca), (mb, cb) = _compensators(tmp_path)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 96, (2, 16), generator=g) for _ in range(3)]
    ca.collect_from(ma, batches)
    cb.collect_grouped(mb, batches)
    assert ca.tokens == cb.tokens == 3 * 2 * 16
    assert all(v is None for layer in cb.gram for v in layer.values())  # nothing left in memory
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == [f"layer{i}.safetensors" for i in range(3)]
    ca.stop_collecting()
    cb.stop_collecting()
    for i in range(3):
        for kind in ("channels", "heads"):
            assert torch.equal(ca.gram[i][kind], cb._layer_gram(i)[kind])
    masks = MaskState.full(groups)
    old = [(m.heads.clone(), m.channels.clone()) for m in masks.layers]
    mask_lowest(masks, random_scores(groups), groups, 2, groups.layers[0].intermediate_size // 2)
    new = [(m.heads, m.channels) for m in masks.layers]
    assert ca.fold(old, new) == cb.fold(old, new) > 0
    wa, wb = base_weights(ma, groups), base_weights(mb, groups)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = cb.state_dict()
    assert state["store"] == "disk" and state["gram"] == []  # a checkpoint does not carry the matrices
    cb.release()
    assert len(list((tmp_path / "stats").iterdir())) == 3  # a given folder keeps them (for resuming)
    from compressor.algorithm.compensation import Compensator

    own = Compensator(mb, groups, store="disk", layers_per_pass=3)
    own.collect_grouped(mb, [torch.randint(0, 96, (2, 16))])
    folder = own.folder
    assert folder is not None and len(list(folder.iterdir())) == 3
    own.release()
    assert not folder.exists()  # a temporary one is removed


def test_a_disk_checkpoint_without_its_files_is_refused(tmp_path):
    from compressor.algorithm.compensation import Compensator

    groups, _, (mb, cb) = _compensators(tmp_path)
    cb.collect_grouped(mb, [torch.randint(0, 96, (2, 16))])
    cb.stop_collecting()
    state = cb.state_dict()
    (tmp_path / "stats" / "layer1.safetensors").unlink()
    fresh = Compensator(mb, groups, store="disk", folder=tmp_path / "stats")
    with pytest.raises(ConfigError, match="statistics of layer 1 are missing"):
        fresh.load_state_dict(state)
    with pytest.raises(ConfigError, match="resume it with --compensate-store disk"):
        Compensator(mb, groups).load_state_dict(state)


@pytest.mark.parametrize("store", ["disk", "host"])
def test_a_run_with_statistics_off_the_device_resumes_exactly(tmp_path, store):
    """compensate_store disk / host end to end: masked == merged, and a run resumed from a mid-run state (disk:
    its files stay in the statistics folder) ends bit-identical to the uninterrupted one."""
    import copy

    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.loop import PruneLoop
    from tests.tiny import tiny_text

    cfg = PruneConfig(ratio=0.5, steps=8, prune_every=2, prune_until=0.5, seq_len=32, batch_size=2,
                      compensate_tokens=256, compensate_store=store, amp="off", eval_windows=0)
    blocks = as_blocks([tiny_text(3000)], tiny_tokenizer(), cfg)
    a = PruneLoop(tiny_model("llama-gqa"), cfg, blocks, statistics_dir=tmp_path / "a")
    assert a.comp is not None and a.comp.store == store
    for _ in range(3):  # past the first mask update: the statistics exist
        a.step()
    st = copy.deepcopy(a.state_dict())
    b = PruneLoop(tiny_model("llama-gqa"), cfg, blocks, statistics_dir=tmp_path / "a")
    b.load_state_dict(st)
    assert_resumed_run_matches(a, b)
