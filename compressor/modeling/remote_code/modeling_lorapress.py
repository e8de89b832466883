"""Causal LMs whose decoder layers have different widths (written by lorapress, issue #12).

Self-contained: imports only ``torch`` and ``transformers``; a copy of this file sits in every such model
folder, so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works without lorapress.

Each class is the stock ``*ForCausalLM`` of the source architecture. After the stock constructor has built
every layer at the widest width, layer ``i``'s ``q_proj`` / ``o_proj`` are rebuilt for
``per_layer_num_attention_heads[i]`` heads, ``k_proj`` / ``v_proj`` for ``per_layer_num_key_value_heads[i]``
(its ``num_key_value_groups`` set to their ratio), and ``gate_proj`` / ``up_proj`` / ``down_proj`` for
``per_layer_intermediate_size[i]`` channels. Everything else is stock; the stock forward reads the head
counts from each projection's output shape, so it is the stock computation. Parameter names are the stock ones.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

from .configuration_lorapress import LorapressLlamaConfig, LorapressMistralConfig, LorapressQwen2Config


def _linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def set_layer_widths(layer: Any, heads: int, kv_heads: int, intermediate: int) -> list[nn.Module]:
    """Rebuild one decoder layer's projections for ``heads`` query heads, ``kv_heads`` KV heads and
    ``intermediate`` MLP channels where their sizes differ; returns the new (uninitialised) modules."""
    attn: Any = layer.self_attn
    mlp: Any = layer.mlp
    hidden, d = attn.q_proj.in_features, attn.head_dim
    new: list[nn.Module] = []
    if attn.q_proj.out_features != heads * d:
        attn.q_proj = _linear(attn.q_proj, hidden, heads * d)
        attn.o_proj = _linear(attn.o_proj, heads * d, hidden)
        new += [attn.q_proj, attn.o_proj]
    if attn.k_proj.out_features != kv_heads * d:
        attn.k_proj = _linear(attn.k_proj, hidden, kv_heads * d)
        attn.v_proj = _linear(attn.v_proj, hidden, kv_heads * d)
        new += [attn.k_proj, attn.v_proj]
    attn.num_key_value_groups = heads // kv_heads
    if hasattr(attn, "num_key_value_heads"):
        attn.num_key_value_heads = kv_heads
    if hasattr(attn, "num_heads"):
        attn.num_heads = heads
    if mlp.gate_proj.out_features != intermediate:
        mlp.gate_proj = _linear(mlp.gate_proj, hidden, intermediate)
        mlp.up_proj = _linear(mlp.up_proj, hidden, intermediate)
        mlp.down_proj = _linear(mlp.down_proj, intermediate, hidden)
        new += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = intermediate
    return new


class _PerLayerCausalLM:
    """Mixin: resize every layer after the stock constructor, then initialise the new projections."""

    def __init__(self, config):
        super().__init__(config)
        widths = zip(self.model.layers, config.per_layer_num_attention_heads, config.per_layer_num_key_value_heads,
                     config.per_layer_intermediate_size)
        for layer, heads, kv, inter in widths:
            for mod in set_layer_widths(layer, heads, kv, inter):
                self._init_weights(mod)


# the type: ignore comments are needed with transformers 4's annotations only
class LorapressLlamaForCausalLM(_PerLayerCausalLM, LlamaForCausalLM):  # type: ignore[misc, unused-ignore]
    config_class = LorapressLlamaConfig  # type: ignore[assignment, unused-ignore]


class LorapressMistralForCausalLM(_PerLayerCausalLM, MistralForCausalLM):  # type: ignore[misc, unused-ignore]
    config_class = LorapressMistralConfig  # type: ignore[assignment, unused-ignore]


class LorapressQwen2ForCausalLM(_PerLayerCausalLM, Qwen2ForCausalLM):  # type: ignore[misc, unused-ignore]
    config_class = LorapressQwen2Config  # type: ignore[assignment, unused-ignore]


#: stock ``model_type`` -> per-layer causal LM class
MODELS = {c.config_class.source_model_type: c
          for c in (LorapressLlamaForCausalLM, LorapressMistralForCausalLM, LorapressQwen2ForCausalLM)}
