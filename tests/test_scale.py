"""Memory at scale: the device option, the base held in bfloat16, the layer-wise merge and the memory plan."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from compressor import PruneConfig
from compressor.algorithm.plan import (
    ALTERNATIVES,
    InsufficientMemoryError,
    alternatives,
    check_fits,
    model_shape,
    plan_memory,
)
from compressor.core.device import resolve_device
from compressor.core.errors import ConfigError
from compressor.modeling.loading import held_dtype, hold_projections, load_model

from .tiny import assert_resumed_run_matches, tiny_model, tiny_tokenizer


def _folder(tmp_path, case="llama-mha", **config):
    m = tiny_model(case, **config)
    d = tmp_path / "m"
    m.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return m, d


# ---- --device --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["cpu", "CPU", "auto"])
def test_device_names(spec):
    dev = resolve_device(spec)
    assert dev.type in ("cpu", "cuda")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:0:1"])
def test_bad_device_is_named_with_the_valid_ones(spec):
    with pytest.raises(ConfigError, match=f"device {spec!r}.*auto, cpu, cuda or cuda:N"):
        resolve_device(spec)
    with pytest.raises(ConfigError, match="device="):
        PruneConfig(ratio=0.5, device=spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ConfigError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda:0")


# ---- the frozen base held once in bfloat16 -------------------------------------------------------------
@pytest.mark.parametrize("case", ["llama-mha", "qwen2-gqa"])
def test_load_holds_projections_in_bf16_and_the_rest_in_float32(tmp_path, case):
    """Loaded straight in the held dtypes (no float32 copy of the projections); under autocast the logits are
    bit-identical to the float32 model's, because autocast rounds a float32 projection to bfloat16 anyway."""
    ref, d = _folder(tmp_path, case, tie_word_embeddings=True)
    held, _, _ = load_model(str(d), linear_dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in held.named_parameters()}
    assert all(v == torch.bfloat16 for n, v in dtypes.items() if "_proj." in n)
    assert all(v == torch.float32 for n, v in dtypes.items() if "_proj." not in n)
    assert held.lm_head.weight is held.model.embed_tokens.weight
    assert held_dtype(held) == torch.bfloat16 and held_dtype(ref) is None
    assert held.lorapress_source_dtype == "float32"
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ref(input_ids=x).logits, held(input_ids=x).logits)
    assert hold_projections(ref, torch.bfloat16) > 0  # the in-place route gives the same model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ref(input_ids=x).logits, held(input_ids=x).logits)


def test_linear_dtype_needs_a_float32_run(tmp_path):
    _, d = _folder(tmp_path)
    with pytest.raises(ConfigError, match="linear_dtype 'bfloat16' with dtype 'bfloat16'"):
        load_model(str(d), dtype="bfloat16", linear_dtype="bfloat16")


def test_prune_with_a_held_base_writes_the_checkpoint_dtype(tmp_path):
    """amp='bf16' end to end from a folder: the base is held in bfloat16 during the run, the merged model is
    float32 for a float32 checkpoint and bfloat16 for a bfloat16 one; the report has the memory plan."""
    from compressor import prune
    from compressor.algorithm.api import as_blocks

    from .tiny import tiny_text

    for src_dtype in (torch.float32, torch.bfloat16):
        m = tiny_model("llama-mha").to(src_dtype)
        d = tmp_path / str(src_dtype)
        m.save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
        cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, amp="bf16", seq_len=32, batch_size=2,
                          eval_windows=0, device="cpu")
        blocks = as_blocks([tiny_text(2000)], tiny_tokenizer(), cfg)
        res = prune(str(d), cfg, blocks)
        assert {p.dtype for p in res.model.parameters()} == {src_dtype}
        plan = res.report["memory_plan"]
        assert plan["held"] == "bfloat16 projections" and plan["peak_gib"] > 0 and plan["fits"] in (True, None)


# ---- the layer-wise merge ------------------------------------------------------------------------------
def test_merge_frees_each_replaced_projection():
    from compressor.algorithm.groups import decoder_layers, discover_groups
    from compressor.algorithm.merge import merge_and_slice

    from .tiny import masked_lora

    pm, masks = masked_lora("llama-mha")
    groups = discover_groups(pm, verify=False)
    old = [layer.self_attn.o_proj.base_layer.weight for layer in decoder_layers(pm)]
    merged = merge_and_slice(pm, groups, masks)
    assert all(w.numel() == 0 for w in old)  # freed as the merge went, not all at the end
    assert discover_groups(merged).num_layers == groups.num_layers


# ---- the memory plan ---------------------------------------------------------------------------------------
def test_model_shape_counts_what_the_model_holds():
    m = tiny_model("qwen2-gqa", tie_word_embeddings=True)
    sh = model_shape(m.config)
    lin = sum(mod.weight.numel() + (0 if mod.bias is None else mod.bias.numel())
              for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and ".layers." in n)
    total = sum(p.numel() for p in m.parameters())  # tied once
    assert sh.linear_params == lin and sh.params == total
    assert (sh.layers, sh.hidden, sh.heads, sh.kv_heads, sh.head_dim) == (2, 32, 4, 2, 8)


def test_plan_parts_follow_the_options():
    sh = model_shape(tiny_model("llama-mha").config)
    cpu = torch.device("cpu")
    base = PruneConfig(ratio=0.5, amp="bf16")
    p = plan_memory(sh, base, cpu, free=2**40)
    assert p.held == "bfloat16 projections" and p.parts["autocast_copies"] == 0
    assert p.parts["base"] == 2 * sh.linear_params + 4 * sh.other_params
    off = plan_memory(sh, dataclasses.replace(base, amp="off"), cpu, free=2**40)
    assert off.held == "float32" and off.parts["base"] == 4 * sh.params
    ckpt = plan_memory(sh, dataclasses.replace(base, gradient_checkpointing=True), cpu, free=2**40)
    assert ckpt.parts["activations"] < p.parts["activations"]
    nocomp = plan_memory(sh, dataclasses.replace(base, compensate=False), cpu, free=2**40)
    assert nocomp.parts["statistics"] == 0 < p.parts["statistics"]
    assert p.parts["statistics"] == 4 * sh.layers * (sh.intermediate ** 2 + (sh.heads * sh.head_dim) ** 2)
    assert p.fits and p.peak == max(p.phases.values())


def test_a_run_that_does_not_fit_is_refused_naming_what_would():
    sh = model_shape(tiny_model("llama-mha").config)
    cpu = torch.device("cpu")
    cfg = PruneConfig(ratio=0.5, amp="bf16", batch_size=8, seq_len=128, compensate_store="device")
    p = plan_memory(sh, cfg, cpu, free=2**40)
    free = int((p.peak - 1) / 0.92)  # just too little for the default, enough for checkpointing
    p = plan_memory(sh, cfg, cpu, free=free)
    alts = alternatives(sh, cfg, cpu, free=free)
    assert [label for label, _ in alts] == [label for label, o in ALTERNATIVES if not o.get("base_bits")]
    with pytest.raises(InsufficientMemoryError,
                       match=r"needs about .* GiB on cpu .*these would fit: .*--gradient-checkpointing \(peak"):
        check_fits(p, alts)
    check_fits(p, alts, resident=p.peak)  # the weights already loaded are not counted twice


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    from compressor.cli import main

    _, d = _folder(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["prune", str(d), "--ratio", "0.5", "--out", str(out), "--dry-run",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "predicted memory on cpu" in r.output and "<- peak" in r.output and "--gradient-checkpointing" in r.output
    assert not out.exists()


# ---- compensation's statistics off the device ------------------------------------------------------------
def _compensators(tmp_path, case="llama-gqa"):
    import copy

    from compressor.algorithm.compensation import Compensator
    from compressor.algorithm.groups import discover_groups

    from .tiny import lora_with_random_b

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

    from .tiny import random_scores

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

    from .tiny import tiny_text

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


def test_auto_store_goes_to_disk_when_the_statistics_do_not_fit():
    from compressor.algorithm.plan import resolve_store

    sh = model_shape(tiny_model("llama-mha").config)
    cpu = torch.device("cpu")
    cfg = PruneConfig(ratio=0.5, amp="bf16")
    assert resolve_store(sh, cfg, cpu, free=2**40) == ("device", sh.layers)
    need = plan_memory(sh, cfg, cpu, free=2**40, store="device").peak
    store, per_pass = resolve_store(sh, cfg, cpu, free=int(need / 0.92) - 1)
    assert store == "disk" and 1 <= per_pass < sh.layers
    assert resolve_store(sh, dataclasses.replace(cfg, compensate_store="host"), cpu, free=1) == ("host", sh.layers)


# ---- on a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs them on a lent device) ---------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_cuda_load_prune_and_merge_stay_on_the_device(tmp_path):
    """Loaded straight onto the GPU in the held dtypes, pruned with statistics in host memory, merged there."""
    from compressor import prune
    from compressor.algorithm.api import as_blocks

    from .tiny import tiny_text

    _, d = _folder(tmp_path)
    held, _, _ = load_model(str(d), linear_dtype="bfloat16", device="cuda")
    assert {p.device.type for p in held.parameters()} == {"cuda"}
    cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, amp="bf16", seq_len=32, batch_size=2, eval_windows=0,
                      device="cuda", compensate_store="host", compensate_tokens=128)
    res = prune(str(d), cfg, as_blocks([tiny_text(2000)], tiny_tokenizer(), cfg))
    assert {p.device.type for p in res.model.parameters()} == {"cuda"}
    assert res.report["memory_plan"]["device"].startswith("cuda")


@pytest.mark.gpu
@cuda
def test_cuda_plan_reads_the_free_memory_of_the_gpu():
    from compressor.algorithm.plan import plan_memory

    sh = model_shape(tiny_model("llama-mha").config)
    p = plan_memory(sh, PruneConfig(ratio=0.5), torch.device("cuda"))
    free, _ = torch.cuda.mem_get_info()
    assert p.free is not None and abs(p.free - free) < 2**30 and p.parts["process"] == 0
