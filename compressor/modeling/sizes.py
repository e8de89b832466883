"""The sizes of a LLaMA-family decoder (every entry of :mod:`compressor.modeling.architectures`), read from a Hugging Face config: the one place that knows the defaults.

``num_key_value_heads`` defaults to ``num_attention_heads`` (MHA) and ``head_dim`` to
``hidden_size // num_attention_heads`` (no explicit ``head_dim``, as before head pruning). Works on a
``PretrainedConfig``, a ``config.json`` dict, or any object with those attributes.

A per-layer-widths config (:mod:`compressor.modeling.perlayer`, ``model_type`` ``lorapress_<stock type>``) lists every
layer's widths under :data:`PER_LAYER_KEYS`; its scalars hold the widest layer. :func:`model_sizes` reports
the stock ``model_type`` and the per-layer widths (``layer_heads`` ...; uniform configs repeat the scalars).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``config.json`` keys of a per-layer-widths model (restated in ``remote_code/configuration_lorapress.py``,
#: which must import nothing from this project)
PER_LAYER_KEYS = ("per_layer_num_attention_heads", "per_layer_num_key_value_heads", "per_layer_intermediate_size")
#: ``model_type`` prefix of a per-layer-widths model (``lorapress_llama`` extends ``llama``)
PER_LAYER_TYPE_PREFIX = "lorapress_"


@dataclass(frozen=True)
class ModelSizes:
    """Widths of a decoder of an architecture in :mod:`compressor.modeling.architectures` (``heads``, ``kv_heads``,
    ``intermediate``: the widest layer; ``layer_*``: every layer's)."""

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
    layer_heads: tuple[int, ...] = ()
    layer_kv_heads: tuple[int, ...] = ()
    layer_intermediate: tuple[int, ...] = ()

    @property
    def uniform(self) -> bool:
        """Every layer has the same widths."""
        return len(set(zip(self.layer_heads, self.layer_kv_heads, self.layer_intermediate))) <= 1


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def stock_model_type(config: Any) -> str | None:
    """The stock ``model_type`` of ``config``: ``lorapress_llama`` -> ``llama``; a stock type as it is."""
    mt = _get(config, "model_type")
    return mt[len(PER_LAYER_TYPE_PREFIX):] if isinstance(mt, str) and mt.startswith(PER_LAYER_TYPE_PREFIX) else mt


def is_per_layer(config: Any) -> bool:
    """Whether ``config`` (object or ``config.json`` dict) is a per-layer-widths config."""
    return stock_model_type(config) != _get(config, "model_type")


def layer_widths(config: Any) -> tuple[list[int], list[int], list[int]]:
    """``(heads, kv_heads, intermediate)`` per layer (a uniform config repeats its scalars)."""
    n = int(_get(config, "num_hidden_layers"))
    h0 = int(_get(config, "num_attention_heads"))
    scalars = (h0, int(_get(config, "num_key_value_heads") or h0), int(_get(config, "intermediate_size")))
    out = []
    for key, scalar in zip(PER_LAYER_KEYS, scalars):
        out.append([int(v) for v in (_get(config, key) or [scalar] * n)])
    return out[0], out[1], out[2]


def rope_theta(config: Any, default: float = 10000.0) -> float:
    """The RoPE base of ``config``: ``rope_theta`` (transformers 4), else ``rope_parameters["rope_theta"]``
    (transformers 5, which keeps it there and has no ``rope_theta`` attribute); ``default`` without either."""
    theta = _get(config, "rope_theta")
    if theta is None:
        params = _get(config, "rope_parameters")
        theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(default if theta is None else theta)


def model_sizes(config: Any, *, hidden_size: int | None = None) -> ModelSizes:
    """:class:`ModelSizes` of ``config`` (a ``PretrainedConfig`` or a ``config.json`` dict).

    Args:
        config: the model's config.
        hidden_size: use this instead of ``config.hidden_size`` (an exported ONNX folder's config.json may
            carry an adjusted one, see :func:`exporters.onnx.ort_config.true_hidden_size`).
    """
    hidden = int(hidden_size if hidden_size is not None else _get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    model_type = stock_model_type(config)
    lh, lkv, li = layer_widths(config)
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
        layer_heads=tuple(lh), layer_kv_heads=tuple(lkv), layer_intermediate=tuple(li),
    )
