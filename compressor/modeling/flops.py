"""Parameter and FLOP counts of a LLaMA-family decoder from its sizes: one formula for the schedule and the bench.

The prunable projections of a layer (``q, k, v, o, gate, up, down``) hold
:func:`projection_params` weights, ``h*d*(2H + 2K) + 3*h*I`` (the pruning schedule counts with it too)::

    params          = V*h + L*(layer_params + N*h + M*d [+ biases]) + h + (V*h unless tied)
    linear FLOPs    = 2 * (L * layer_params + V*h)           multiply-add = 2 FLOPs, lm_head included
    attention FLOPs = 4 * L * H * d * T                      QK^T and AV against T positions

with ``L`` layers, ``h`` hidden size, ``H`` query heads, ``K`` KV heads, ``d`` head_dim, ``I`` intermediate
size, ``V`` vocabulary, ``T`` the attention context, ``N`` the hidden-size norms per layer (2; 4 for Gemma 2/3)
and ``M`` the per-head norms over ``head_dim`` (Qwen3, Gemma 3: 2), from :mod:`compressor.modeling.architectures`. Embedding
lookup, norms, RoPE, softmax and activations (O(h) per layer) are left out. With per-layer widths
(``ModelSizes.layer_*``) the ``L * ...`` terms are sums over the layers, each with its own ``H``, ``K``, ``I``.
"""
from __future__ import annotations

from compressor.modeling.sizes import ModelSizes

#: the FLOP formula in one line (written into benchmark reports)
FLOPS_FORMULA = "2*(L*(h*H*d + 2*h*K*d + H*d*h + 3*h*I) + V*h) + 4*L*H*d*T, T=context"


def layer_widths(s: ModelSizes) -> list[tuple[int, int, int]]:
    """``(H, K, I)`` of every layer (the scalars repeated when ``s`` has no per-layer widths)."""
    if s.layer_heads:
        return list(zip(s.layer_heads, s.layer_kv_heads, s.layer_intermediate))
    return [(s.heads, s.kv_heads, s.intermediate)] * s.layers


def projection_params(hidden: int, head_dim: int, heads: int, kv_heads: int, intermediate: int) -> int:
    """Weights in one layer's prunable projections (biases ignored): ``h*d*(2H + 2K) + 3*h*I``; the pruning schedule
    counts with it too (:func:`compressor.algorithm.schedule.layer_params`)."""
    return hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate


def layer_projection_params(s: ModelSizes, heads: int | None = None, kv_heads: int | None = None,
                            intermediate: int | None = None) -> int:
    """Weights of one layer's prunable projections (:func:`projection_params`), with the scalar widths of ``s`` unless
    given."""
    return projection_params(s.hidden, s.head_dim, s.heads if heads is None else heads,
                             s.kv_heads if kv_heads is None else kv_heads,
                             s.intermediate if intermediate is None else intermediate)


def count_params(s: ModelSizes) -> int:
    """Parameter count: embedding, the projections, norms and biases, lm_head unless tied."""
    from compressor.modeling.architectures import find_architecture

    h, d = s.hidden, s.head_dim
    arch = find_architecture(s.model_type)
    norms, head_norms = (arch.hidden_norms_per_layer, len(arch.head_norms)) if arch is not None else (2, 0)
    total = 0
    for H, K, I in layer_widths(s):  # noqa: E741
        total += layer_projection_params(s, H, K, I) + norms * h + head_norms * d
        if s.attention_bias:
            total += H * d + 2 * K * d
        if s.mlp_bias:
            total += 2 * I + h
    return s.vocab * h + total + h + (0 if s.tied else s.vocab * h)


def flops_per_token(s: ModelSizes, context: float) -> dict[str, float]:
    """Forward FLOPs per token at ``context`` attended positions: ``{"linear", "attention", "total", "context"}``."""
    widths = layer_widths(s)
    linear = 2.0 * (sum(layer_projection_params(s, H, K, I) for H, K, I in widths) + s.vocab * s.hidden)
    attention = 4.0 * sum(H for H, _, _ in widths) * s.head_dim * context
    return {"linear": linear, "attention": attention, "total": linear + attention, "context": context}
