"""The ``config.json`` adjustment that lets optimum's ``ORTModelForCausalLM`` run a head-pruned export.

Pruning attention heads keeps ``hidden_size`` and writes an explicit ``head_dim``, so
``head_dim != hidden_size // num_attention_heads``. The exporter honours ``head_dim``, but
``ORTModelForCausalLM`` (optimum-onnx 0.1.0, ``modeling_decoder.py``) sizes the empty KV cache it feeds
on the first step as ``hidden_size // num_attention_heads`` for llama/mistral/qwen2/qwen3/gemma2/phi3 (only
gemma and gemma3_text read ``config.head_dim``: ``Architecture.ort_kv_from_head_dim`` in
:mod:`compressor.modeling.architectures`), which then fails with ``past_key_values... Got: 64 Expected: 32``. That is the only use it makes of ``hidden_size``,
so the *exported folder's* ``config.json`` gets ``hidden_size = num_attention_heads * head_dim``
(the width of the attention projection, which is also what ONNX Runtime's transformer optimizer calls
``hidden_size``) and keeps the model's real width under ``"lorapress_export": {"model_hidden_size": ..}``.
The HF model's own config is never changed. Dense models whose ``head_dim == hidden_size // num_attention_heads``
(and every gemma / gemma3_text model) need no adjustment and are written as is; a dense Qwen3 or Gemma 2, whose
``head_dim`` is explicit and different, gets it too.
A model with per-layer widths (:mod:`compressor.modeling.perlayer`) is exported through its stock class, so the exported
``config.json`` is the stock one with the widest layer's scalars; only the KV-cache shape matters to
optimum, and every layer shares it (different KV heads per layer are refused: one cache shape is what
``ORTModelForCausalLM`` feeds). The graph holds each layer's real shapes, which are recorded under
``"lorapress_export": {"per_layer": {...}}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from compressor.core.errors import UnsupportedArchitectureError
from compressor.core.io import write_json
from compressor.modeling.architectures import get_architecture
from compressor.modeling.sizes import PER_LAYER_KEYS, is_per_layer, layer_widths

#: Key added to an exported folder's config.json when the ORT config adjustment was applied.
CONFIG_KEY = "lorapress_export"


def per_layer_widths(config: Any) -> dict[str, list[int]] | None:
    """``{per-layer key: widths}`` of a per-layer model that ONNX can hold, None for a uniform model.

    Raises:
        UnsupportedArchitectureError: the layers have different KV heads (ONNX Runtime's cache has one shape).
    """
    if not is_per_layer(config):
        return None
    widths = dict(zip(PER_LAYER_KEYS, layer_widths(config)))
    kv = widths[PER_LAYER_KEYS[1]]
    if len(set(kv)) > 1:
        raise UnsupportedArchitectureError(
            f"ONNX export needs the same KV heads in every layer (optimum's ORTModelForCausalLM feeds one KV-cache "
            f"shape); this model has {PER_LAYER_KEYS[1]}={kv} (an MHA model with heads pruned in some layers only). "
            f"Export it as GGUF or safetensors, or prune it without skip_layers")
    return widths


def adjust_config_for_ort(folder: str | os.PathLike, per_layer: dict[str, list[int]] | None = None
                          ) -> dict[str, Any] | None:
    """Make an exported folder's ``config.json`` loadable by ``ORTModelForCausalLM`` when heads were pruned.

    Sets ``hidden_size = num_attention_heads * head_dim`` when the two differ and records the model's real
    ``hidden_size`` under ``config["lorapress_export"]["model_hidden_size"]`` (see this module's docstring).
    ``per_layer`` (from :func:`per_layer_widths`) is recorded under ``config["lorapress_export"]["per_layer"]``.
    Idempotent. Returns a description of the change, or None when the config needed none.
    """
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    if per_layer is not None:
        extra = dict(cfg.get(CONFIG_KEY) or {})
        extra["per_layer"] = dict(per_layer, note=(
            "the graph has these per-layer widths; num_attention_heads / intermediate_size here are the widest "
            "layer's and only size optimum's KV cache (num_key_value_heads, head_dim are every layer's)"))
        cfg[CONFIG_KEY] = extra
        write_json(path, cfg)
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim")
    hidden = cfg.get("hidden_size")
    if not heads or not head_dim or not hidden or hidden // heads == head_dim:
        return {"per_layer": per_layer} if per_layer is not None else None
    if get_architecture(cfg, str(folder)).ort_kv_from_head_dim:  # optimum reads head_dim for this one
        return {"per_layer": per_layer} if per_layer is not None else None
    ort_hidden = int(heads) * int(head_dim)
    extra = dict(cfg.get(CONFIG_KEY) or {})
    extra.setdefault("model_hidden_size", int(hidden))
    extra["note"] = (
        "hidden_size here is num_attention_heads * head_dim so that optimum's ORTModelForCausalLM sizes the "
        "KV cache correctly (it uses hidden_size // num_attention_heads); the model's real hidden size is "
        "model_hidden_size"
    )
    cfg["hidden_size"] = ort_hidden
    cfg[CONFIG_KEY] = extra
    write_json(path, cfg)
    return {"hidden_size": {"model": int(extra["model_hidden_size"]), "onnx_config": ort_hidden},
            "reason": "head_dim != hidden_size // num_attention_heads"} | (
        {"per_layer": per_layer} if per_layer is not None else {})


def true_hidden_size(config: dict) -> int:
    """The model's hidden size from an exported (possibly adjusted) config dict."""
    extra = config.get(CONFIG_KEY) or {}
    return int(extra.get("model_hidden_size") or config["hidden_size"])


def true_per_layer(config: dict) -> dict[str, list[int]]:
    """The per-layer widths recorded in an exported config dict (``{}`` for a uniform model)."""
    per = (config.get(CONFIG_KEY) or {}).get("per_layer") or {}
    return {k: list(per[k]) for k in PER_LAYER_KEYS if k in per}
