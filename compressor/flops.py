"""Parameter and FLOP counts of a LLaMA-family decoder from its sizes: one formula for the schedule and the bench.

The prunable projections of a layer (``q, k, v, o, gate, up, down``) hold
:func:`compressor.schedule.layer_params` weights, ``h*d*(2H + 2K) + 3*h*I``; that count is used here too::

    params          = V*h + L*(layer_params + 2*h [+ biases]) + h + (V*h unless tied)
    linear FLOPs    = 2 * (L * layer_params + V*h)           multiply-add = 2 FLOPs, lm_head included
    attention FLOPs = 4 * L * H * d * T                      QK^T and AV against T positions

with ``L`` layers, ``h`` hidden size, ``H`` query heads, ``K`` KV heads, ``d`` head_dim, ``I`` intermediate
size, ``V`` vocabulary and ``T`` the attention context. Embedding lookup, norms, RoPE, softmax and
activations (O(h) per layer) are left out.
"""
from __future__ import annotations

from .sizes import ModelSizes

#: the FLOP formula in one line (written into benchmark reports)
FLOPS_FORMULA = "2*(L*(h*H*d + 2*h*K*d + H*d*h + 3*h*I) + V*h) + 4*L*H*d*T, T=context"


def layer_projection_params(s: ModelSizes) -> int:
    """Weights of one layer's prunable projections (:func:`compressor.schedule.layer_params`)."""
    from .groups import LayerGroups
    from .schedule import layer_params

    return layer_params(LayerGroups(0, s.heads, s.kv_heads, s.head_dim, s.intermediate), s.hidden)


def count_params(s: ModelSizes) -> int:
    """Parameter count: embedding, the projections, norms and biases, lm_head unless tied."""
    h, H, K, d, I = s.hidden, s.heads, s.kv_heads, s.head_dim, s.intermediate  # noqa: E741
    per_layer = layer_projection_params(s) + 2 * h
    if s.attention_bias:
        per_layer += H * d + 2 * K * d
    if s.mlp_bias:
        per_layer += 2 * I + h
    return s.vocab * h + s.layers * per_layer + h + (0 if s.tied else s.vocab * h)


def flops_per_token(s: ModelSizes, context: float) -> dict[str, float]:
    """Forward FLOPs per token at ``context`` attended positions: ``{"linear", "attention", "total", "context"}``."""
    linear = 2.0 * (s.layers * layer_projection_params(s) + s.vocab * s.hidden)
    attention = 4.0 * s.layers * s.heads * s.head_dim * context
    return {"linear": linear, "attention": attention, "total": linear + attention, "context": context}
