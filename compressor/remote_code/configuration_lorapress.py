"""Configs of LoRAPrune models whose decoder layers have different widths (written by lorapress, issue #12).

Self-contained: imports only ``transformers``; a copy of this file sits next to ``config.json`` in every such
model folder, so ``AutoConfig.from_pretrained(folder, trust_remote_code=True)`` works without lorapress.

Each class is the stock config of the source architecture plus two lists, one entry per decoder layer:

* ``per_layer_num_attention_heads``: query heads of layer ``i``;
* ``per_layer_num_key_value_heads``: KV heads of layer ``i`` (query heads are a multiple of them). Pruning
  keeps every KV head of a GQA model, so this list is uniform unless an MHA model (KV heads = heads) had
  heads pruned in some layers only; ``head_dim`` is shared;
* ``per_layer_intermediate_size``: MLP channels of layer ``i``.

The scalars ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size`` hold the widest layer's value (code that only
reads the scalars allocates enough); the lists are what the model is built from.
"""
from __future__ import annotations

from transformers import LlamaConfig, MistralConfig, Qwen2Config

PER_LAYER_HEADS = "per_layer_num_attention_heads"
PER_LAYER_KV_HEADS = "per_layer_num_key_value_heads"
PER_LAYER_INTERMEDIATE = "per_layer_intermediate_size"


class _PerLayerWidths:
    """Mixin: validates and holds the per-layer lists (defaults: every layer as the scalars say)."""

    #: ``model_type`` of the stock architecture this one extends
    source_model_type = ""

    def __init__(self, per_layer_num_attention_heads=None, per_layer_num_key_value_heads=None,
                 per_layer_intermediate_size=None, **kwargs):
        super().__init__(**kwargs)
        n = int(self.num_hidden_layers)
        heads = self._layer_list(PER_LAYER_HEADS, per_layer_num_attention_heads, self.num_attention_heads, n)
        kv = self._layer_list(PER_LAYER_KV_HEADS, per_layer_num_key_value_heads,
                              self.num_key_value_heads or self.num_attention_heads, n)
        inter = self._layer_list(PER_LAYER_INTERMEDIATE, per_layer_intermediate_size, self.intermediate_size, n)
        bad = [i for i, (h, k) in enumerate(zip(heads, kv)) if h % k]
        if bad:
            i = bad[0]
            raise ValueError(f"layer {i} has {heads[i]} attention heads, not a multiple of its {kv[i]} KV heads "
                             f"({PER_LAYER_HEADS}, {PER_LAYER_KV_HEADS})")
        self.per_layer_num_attention_heads = heads
        self.per_layer_num_key_value_heads = kv
        self.per_layer_intermediate_size = inter

    @staticmethod
    def _layer_list(name, value, default, n):
        if value is None:
            return [int(default)] * n
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"{name} must be a list of {n} widths (num_hidden_layers={n}), got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ValueError(f"{name} must hold integers >= 1, got {list(value)!r}")
        return [int(v) for v in value]


class LorapressLlamaConfig(_PerLayerWidths, LlamaConfig):
    """:class:`~transformers.LlamaConfig` with per-layer attention heads and MLP widths."""

    model_type = "lorapress_llama"
    source_model_type = "llama"


class LorapressMistralConfig(_PerLayerWidths, MistralConfig):
    """:class:`~transformers.MistralConfig` with per-layer attention heads and MLP widths."""

    model_type = "lorapress_mistral"
    source_model_type = "mistral"


class LorapressQwen2Config(_PerLayerWidths, Qwen2Config):
    """:class:`~transformers.Qwen2Config` with per-layer attention heads and MLP widths."""

    model_type = "lorapress_qwen2"
    source_model_type = "qwen2"


#: stock ``model_type`` -> per-layer config class
CONFIGS = {c.source_model_type: c for c in (LorapressLlamaConfig, LorapressMistralConfig, LorapressQwen2Config)}
