"""The memory plan: what a run holds (model shape, parts by option), a run that does not fit is refused naming
what would, compensation's statistics go to disk when they do not fit, and on a GPU the plan reads its free memory."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from compressor import PruneConfig
from compressor.algorithm.memory_plan import (
    ALTERNATIVES,
    InsufficientMemoryError,
    alternatives,
    check_fits,
    model_shape,
    plan_memory,
)
from tests.tiny import tiny_model


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


def test_auto_store_goes_to_disk_when_the_statistics_do_not_fit():
    from compressor.algorithm.memory_plan import resolve_store

    sh = model_shape(tiny_model("llama-mha").config)
    cpu = torch.device("cpu")
    cfg = PruneConfig(ratio=0.5, amp="bf16")
    assert resolve_store(sh, cfg, cpu, free=2**40) == ("device", sh.layers)
    need = plan_memory(sh, cfg, cpu, free=2**40, store="device").peak
    store, per_pass = resolve_store(sh, cfg, cpu, free=int(need / 0.92) - 1)
    assert store == "disk" and 1 <= per_pass < sh.layers
    assert resolve_store(sh, dataclasses.replace(cfg, compensate_store="host"), cpu, free=1) == ("host", sh.layers)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_cuda_plan_reads_the_free_memory_of_the_gpu():
    from compressor.algorithm.memory_plan import plan_memory

    sh = model_shape(tiny_model("llama-mha").config)
    p = plan_memory(sh, PruneConfig(ratio=0.5), torch.device("cuda"))
    free, _ = torch.cuda.mem_get_info()
    assert p.free is not None and abs(p.free - free) < 2**30 and p.parts["process"] == 0
