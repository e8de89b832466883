"""What the benchmark reads and feeds: the graph of an exported folder, its sizes, counts, and random inputs."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compressor.core.errors import ModelLoadError
from compressor.modeling.flops import count_params as _count_params
from compressor.modeling.flops import flops_per_token as _flops_per_token
from compressor.modeling.sizes import ModelSizes, model_sizes
from exporters.onnx.ort_config import true_hidden_size, true_per_layer


def find_onnx_file(folder: str | os.PathLike, file_name: str | None = None) -> Path:
    """The graph to benchmark in ``folder``: ``file_name``, else ``model.onnx``, else the only ``*.onnx``.

    Raises:
        ModelLoadError: not a folder, a Hugging Face (PyTorch) folder, no or several ``*.onnx`` files.
    """
    p = Path(folder)
    if not p.is_dir():
        raise ModelLoadError(f"{str(p)!r} is not a folder; give a folder written by `compress export --format onnx`")
    if file_name:
        f = p / file_name
        if not f.is_file():
            raise ModelLoadError(f"{str(f)!r} does not exist")
        return f
    onnx_files = sorted(p.glob("*.onnx"))
    if not onnx_files:
        if (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin"))):
            raise ModelLoadError(
                f"{str(p)!r} is a Hugging Face (PyTorch) model folder, not an ONNX export; export it first with "
                f"`compress export {p} --format onnx --out {p.name}_onnx` (benchmarks/onnx_latency.py does both)"
            )
        raise ModelLoadError(f"{str(p)!r} has no *.onnx file; give a folder written by `compress export --format onnx`")
    if (p / "model.onnx").is_file():
        return p / "model.onnx"
    if len(onnx_files) > 1:
        raise ModelLoadError(f"{str(p)!r} has several ONNX files ({', '.join(f.name for f in onnx_files)}); "
                             f"keep one or name it with file_name")
    return onnx_files[0]


def read_config(folder: Path) -> dict[str, Any]:
    from compressor.modeling.loading import check_architecture

    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no config.json (needed for parameter and FLOP counts)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(path)!r}: {exc}") from exc
    check_architecture(SimpleNamespace(model_type=cfg.get("model_type"), architectures=cfg.get("architectures")),
                       str(folder))
    return cfg


def model_dims(cfg: dict[str, Any]) -> dict[str, Any]:
    """Sizes used for counting, from an exported ``config.json`` dict (the real hidden size and per-layer widths,
    see :func:`exporters.onnx.ort_config.true_hidden_size` / :func:`~exporters.onnx.ort_config.true_per_layer`); the
    fields of :class:`compressor.modeling.sizes.ModelSizes`."""
    return asdict(model_sizes(cfg | true_per_layer(cfg), hidden_size=true_hidden_size(cfg)))


def count_params(dims: dict[str, Any]) -> int:
    """Parameter count of a supported decoder from :func:`model_dims` (:func:`compressor.modeling.flops.count_params`)."""
    return _count_params(ModelSizes(**dims))


def flops_per_token(dims: dict[str, Any], context: float) -> dict[str, float]:
    """Forward FLOPs per token at ``context`` cached positions: ``{"linear", "attention", "total", "context"}``
    (:func:`compressor.modeling.flops.flops_per_token`)."""
    return _flops_per_token(ModelSizes(**dims), context)


_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "float32"}


def make_feed(session, dims: dict[str, Any], *, batch: int, new_tokens: int, past: int, seed: int = 0):
    """Inputs for one forward pass: ``batch`` sequences of ``new_tokens`` tokens after ``past`` cached positions.

    KV-cache shapes (heads, head_dim) are read from the graph's ``past_key_values.*`` inputs; symbolic
    dimensions fall back to the config.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    feed: dict[str, Any] = {}
    for inp in session.get_inputs():
        name = inp.name
        if name == "input_ids":
            feed[name] = rng.integers(0, dims["vocab"], size=(batch, new_tokens), dtype=np.int64)
        elif name == "attention_mask":
            feed[name] = np.ones((batch, past + new_tokens), dtype=np.int64)
        elif name == "position_ids":
            feed[name] = np.tile(np.arange(past, past + new_tokens, dtype=np.int64), (batch, 1))
        elif name == "use_cache_branch":
            feed[name] = np.array([past > 0])
        elif name.startswith("past_key_values."):
            shape = list(inp.shape)
            heads = shape[1] if isinstance(shape[1], int) else dims["kv_heads"]
            hd = shape[3] if len(shape) > 3 and isinstance(shape[3], int) else dims["head_dim"]
            dt = _NP_TYPES.get(inp.type, "float32")
            feed[name] = (rng.standard_normal((batch, heads, past, hd)) * 0.5).astype(dt)
        else:
            raise ModelLoadError(f"the graph has an input {name!r} ({inp.type}, {inp.shape}) this benchmark cannot feed")
    return feed
