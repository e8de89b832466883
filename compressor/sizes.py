"""The sizes of a LLaMA-family decoder (every entry of :mod:`compressor.architectures`), read from a Hugging Face config: the one place that knows the defaults.

``num_key_value_heads`` defaults to ``num_attention_heads`` (MHA) and ``head_dim`` to
``hidden_size // num_attention_heads`` (no explicit ``head_dim``, as before head pruning). Works on a
``PretrainedConfig``, a ``config.json`` dict, or any object with those attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSizes:
    """Widths of a decoder of an architecture in :mod:`compressor.architectures`."""

    model_type: str | None
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def model_sizes(config: Any, *, hidden_size: int | None = None) -> ModelSizes:
    """:class:`ModelSizes` of ``config`` (a ``PretrainedConfig`` or a ``config.json`` dict).

    Args:
        config: the model's config.
        hidden_size: use this instead of ``config.hidden_size`` (an exported ONNX folder's config.json may
            carry an adjusted one, see :func:`exporters.ort_config.true_hidden_size`).
    """
    hidden = int(hidden_size if hidden_size is not None else _get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    model_type = _get(config, "model_type")
    return ModelSizes(
        model_type=model_type,
        layers=int(_get(config, "num_hidden_layers")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(_get(config, "num_key_value_heads") or heads),
        head_dim=int(_get(config, "head_dim") or hidden // heads),
        intermediate=int(_get(config, "intermediate_size")),
        vocab=int(_get(config, "vocab_size")),
        # a config.json leaves tie_word_embeddings out when it equals PretrainedConfig's default, True (gemma)
        tied=bool(_get(config, "tie_word_embeddings", True)),
        attention_bias=bool(_get(config, "attention_bias", model_type == "qwen2")),
        mlp_bias=bool(_get(config, "mlp_bias", False)),
    )
