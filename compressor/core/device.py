"""Which device a run uses (``--device``) and what it multiplies natively."""
from __future__ import annotations

import re

import torch

from compressor.core.errors import ConfigError

#: what ``--device`` accepts
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device named by ``spec``: ``auto`` (the first CUDA GPU when torch sees one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: an unknown name, or a CUDA device this torch cannot use (no CUDA build, no GPU, N out of range).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise ConfigError(f"device {spec!r} is not valid; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(f"device {spec!r}: torch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu, "
                          f"or install a CUDA build of torch on a machine with a GPU")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CPU with AMX tiles or AVX512-BF16 (Intel
    Sapphire Rapids and later, Cooper Lake, AMD Zen 4 and later), a CUDA GPU with bf16. Measured on 2 cores, a
    SmolLM2-135M step under autocast: 1.40-1.54 x faster with AMX, 1.49 x on an AMD EPYC with AVX512-BF16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            probe = getattr(torch.cpu, name, None)
            if probe is not None and probe():
                return True
    return False


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a run on ``device`` can still take: CUDA free memory, or the host's ``MemAvailable``; None where
    unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
