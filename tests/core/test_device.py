"""compressor.core.device: the --device names (valid ones, bad ones named with the valid ones, CUDA asked for on a
machine without it) and the native-bfloat16 probe of a CPU."""
from __future__ import annotations

import pytest
import torch

from compressor import PruneConfig
from compressor.core.device import resolve_device
from compressor.core.errors import ConfigError


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


@pytest.mark.parametrize("amx,avx512_bf16,expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_a_cpu_is_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    from compressor.core.device import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert native_bf16(torch.device("cpu")) is expected
    assert native_bf16(torch.device("meta")) is False
