"""Merge: fold LoRA into the base weights and physically remove masked groups.

``merge_and_slice(model, groups, masks)`` returns the plain ``*ForCausalLM`` (no peft left), with
``BA·scaling`` folded into ``W0`` and the masked heads/channels sliced out of every projection, the
module attributes and the config (``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size``, explicit ``head_dim``) updated. The merged model computes what the masked peft
model computed (``tests/algorithm/test_merge.py``).

Masks that give layers different widths (``widths="adaptive"``, ``skip_layers``) give a model of the per-layer
class of its architecture (:mod:`compressor.modeling.perlayer`: a stock subclass whose config lists every layer's widths),
which saves as a remote-code folder; uniform masks keep the stock class and config, unless the installed
transformers refuses that stock config (transformers >= 5.16's ``LlamaConfig`` refuses a head count that does not
divide ``hidden_size``, explicit ``head_dim`` or not): then, where the architecture has a per-layer class, the
model is of that class with uniform lists (:func:`check_pruned_config`, :func:`stock_config_refusal`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.algorithm.groups import LayerGroups, ModelGroups, decoder_layers, projection
from compressor.algorithm.masking import LayerMask, MaskState, part_mask
from compressor.algorithm.slicing import new_linear, slice_cols, slice_rows
from compressor.core.errors import ConfigError, NonFiniteError
from compressor.modeling.adapters import base_weight, lora_parts, strip_peft, unwrap


def merged_weight(mod: nn.Module, adapter: str = "default") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W0 + B·A·scaling`` in float32 (dequantizing an 8- or 4-bit base) and the bias."""
    w = base_weight(mod).clone()
    A, B, s = lora_parts(mod, adapter)
    if A is not None:
        w += (B.detach().float() @ A.detach().float()) * s
    base: Any = getattr(mod, "base_layer", mod)
    bias = None if base.bias is None else base.bias.detach().float()
    return w, bias


def _target_dtype(model: nn.Module) -> torch.dtype:
    for p in unwrap(model).parameters():
        if p.dtype.is_floating_point:
            return p.dtype if p.dtype != torch.float16 or p.device.type != "cpu" else torch.float32
    return torch.float32


def pruned_config_updates(groups: ModelGroups, num_heads: int, intermediate_size: int) -> dict[str, int]:
    """The config keys the merge rewrites (the same for every architecture): ``num_attention_heads``,
    ``num_key_value_heads`` (unchanged under GQA), ``intermediate_size`` and an explicit ``head_dim``."""
    lg = groups.layers[0]
    return {"num_attention_heads": num_heads, "num_key_value_heads": lg.num_kv_heads if lg.gqa else num_heads,
            "intermediate_size": intermediate_size, "head_dim": lg.head_dim}


def stock_config_refusal(config: Any, updates: dict[str, int] | None = None) -> str | None:
    """Why the installed transformers would not load ``config`` (with ``updates``) as its stock config class, in one
    line, or None if it would. A per-layer config (:mod:`compressor.modeling.perlayer`) is judged by its stock class with its
    scalars (the widest layer): for a uniform one, the reason it is not a stock config."""
    from compressor.modeling.sizes import is_per_layer

    cls: Any = type(config)
    d = config.to_dict()
    if is_per_layer(config):
        from compressor.modeling.perlayer import stock_config_kwargs

        cls, d = stock_config_kwargs(config)
    for key in ("quantization_config", "_pre_quantization_dtype"):
        d.pop(key, None)
    d.update(updates or {})
    try:
        cls.from_dict(d)
    except Exception as exc:  # transformers raises plain ValueError/KeyError (strict: their subclasses)
        return " ".join(str(exc).split())
    return None


def check_pruned_config(config: Any, updates: dict[str, int]) -> str | None:
    """How a uniform pruned model (stock ``config`` with ``updates``) is written, refusing what cannot reload.

    Returns None if the pruned config loads with the installed transformers as its stock class (a stock folder).
    Returns transformers' message (:func:`stock_config_refusal`) if it does not but the per-layer class of the
    architecture (:mod:`compressor.modeling.perlayer`) holds it: the model is then written as a per-layer remote-code folder
    with uniform lists. transformers >= 5.16's ``LlamaConfig`` refuses a head count that does not divide
    ``hidden_size`` even with an explicit ``head_dim``; the per-layer class does not.

    Some configs check other fields against ``hidden_size // num_attention_heads`` instead of ``head_dim``: Phi-3
    with ``longrope`` ``rope_scaling`` (Phi-3-mini-128k, Phi-3.5) checks its factor lists that way, so a
    head-pruned one does not reload; Gemma2/Gemma3 check ``hidden_size % num_attention_heads`` in transformers
    >= 5.16 and have no per-layer class. Called before a run starts (with the final widths) and by the merge.

    Raises:
        ConfigError: the stock config class refuses it and there is no per-layer class that holds it.
    """
    refusal = stock_config_refusal(config, updates)
    if refusal is None:
        return None
    try:
        import copy

        from compressor.modeling.perlayer import per_layer_config

        pruned: Any = copy.deepcopy(config)
        for key, val in updates.items():
            setattr(pruned, key, val)
        n = int(pruned.num_hidden_layers)
        per_layer_config(pruned, [updates["num_attention_heads"]] * n, [updates["num_key_value_heads"]] * n,
                         [updates["intermediate_size"]] * n)
    except Exception:  # noqa: BLE001 - no per-layer class, or it refuses too: the stock refusal is the reason
        raise ConfigError(
            f"a pruned {getattr(config, 'model_type', '?')} config with {updates} would not load with stock "
            f"transformers: {refusal}; keep every attention head (a lower ratio with head_policy mlp-first prunes MLP "
            f"channels only)"
        ) from None
    return refusal


def _free(linear: nn.Module) -> None:
    """Release the storage of a replaced float projection (its module is dropped right after the merge)."""
    for name in ("weight", "bias"):
        t = getattr(linear, name, None)
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and type(t) in (torch.Tensor, nn.Parameter):
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)


def _kept(lg: LayerGroups, lm: LayerMask, part: str) -> torch.Tensor:
    """Indices of the rows (q/k/v/gate/up) or columns (o/down) of logical projection ``part`` that stay."""
    return torch.nonzero(part_mask(lg, lm, part)).flatten()


def merge_and_slice(model: nn.Module, groups: ModelGroups, masks: MaskState | None = None,
                    dtype: torch.dtype | None = None) -> nn.Module:
    """Fold LoRA into the base and remove masked groups. Returns the plain causal LM.

    Args:
        model: peft-wrapped or plain causal LM whose groups are ``groups``.
        groups: from :func:`compressor.algorithm.groups.discover_groups` (sizes before pruning).
        masks: which heads/channels to keep; ``None`` keeps everything (plain merge).
        dtype: dtype of the new weights (default: the model's float dtype; float32 for quantized bases).

    Projections are merged and sliced one at a time and each replaced weight is freed at once, so the merge holds
    the output plus about one float32 projection; ``model`` is consumed (use the returned model). Every check runs
    before that: when one fails, ``model`` is left unchanged.

    Raises:
        NonFiniteError: a merged weight contains NaN/inf (the model is left unchanged in that case).
        ConfigError: the pruned config would not load with stock transformers and the architecture has no
            per-layer class that holds it (:func:`check_pruned_config`; the model is left unchanged).
    """
    masks = masks or MaskState.full(groups)
    masks.remove()
    base = unwrap(model)
    dtype = dtype or (torch.float32 if getattr(base, "is_quantized", False) else _target_dtype(model))
    layers = decoder_layers(model)
    kept = [(lm.kept_heads(), lm.kept_channels()) for lm in masks.layers]
    heads_n = [len(h) for h, _ in kept]
    kv_n = [lg.num_kv_heads if lg.gqa else len(h) for lg, (h, _) in zip(groups.layers, kept)]
    inter_n = [len(c) for _, c in kept]
    uniform = len(set(zip(heads_n, kv_n, inter_n))) == 1
    if not uniform:
        from compressor.modeling.perlayer import per_layer_model_class

        per_layer_model_class(base.config)  # raises for an architecture without a per-layer class
    for i, (h, c) in enumerate(zip(heads_n, inter_n)):
        if h < 1 or c < 1:
            raise ValueError(f"layer {i} would keep {h} attention heads and {c} MLP channels; every layer needs "
                             f">= 1 of each")
    arch = groups.architecture
    for i, (layer, lg, (heads, _)) in enumerate(zip(layers, groups.layers, kept)):
        if lg.gqa:
            per = lg.heads_per_kv
            counts = {sum(1 for h in heads if h // per == g) for g in range(lg.num_kv_heads)}
            if len(counts) != 1 or 0 in counts:
                raise ValueError(f"layer {i}: GQA masks must keep the same number (≥1) of query heads per KV group")
        for proj in arch.projections:  # one merged projection at a time, checked and dropped
            w, b = merged_weight(projection(layer, proj.name))
            if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all()):
                raise NonFiniteError(f"layer {i} {proj.name}: merged weight has NaN/inf; refusing to write the model")
            del w, b
    # the scalar config fields hold the widest layer (per-layer widths: compressor.modeling.perlayer)
    updates = pruned_config_updates(groups, max(heads_n), max(inter_n))
    updates["num_key_value_heads"] = max(kv_n)
    #: transformers' refusal of the uniform stock config: the model becomes the per-layer class with uniform lists
    refusal = check_pruned_config(base.config, updates) if uniform else None
    # all checks passed: from here the model is consumed. Layer by layer, each projection is merged and sliced
    # and the old weight freed at once: the merge holds the output plus about one projection in float32.
    new_modules: list[dict[str, nn.Linear]] = []
    for layer, lg, lm in zip(layers, groups.layers, masks.layers):
        mods: dict[str, nn.Linear] = {}
        for proj in arch.projections:
            mod = projection(layer, proj.name)
            w, b = merged_weight(mod)
            if proj.row_pruned:  # a fused projection keeps its parts' rows, each at its offset
                rows = torch.cat([start + _kept(lg, lm, part) for part, start, _ in lg.part_offsets(proj)])
                w, b = slice_rows(w, b, rows)
            else:
                w = slice_cols(w, _kept(lg, lm, proj.parts[0]))
            mods[proj.name] = new_linear(w, b, dtype)
            del w, b
            _free(getattr(mod, "base_layer", mod))
        new_modules.append(mods)
    if base is not model:
        base = strip_peft(model)
    blocks = {p.name: p.block for p in arch.projections}
    for layer, mods, n_heads, n_kv, n_inter in zip(decoder_layers(base), new_modules, heads_n, kv_n, inter_n):
        for name, lin in mods.items():
            setattr(getattr(layer, blocks[name]), name, lin)
        attn = layer.self_attn
        for attr, val in (("num_heads", n_heads), ("num_key_value_heads", n_kv),
                          ("num_key_value_groups", n_heads // n_kv), ("head_dim", groups.layers[0].head_dim)):
            if hasattr(attn, attr):
                setattr(attn, attr, val)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = n_inter
    cfg: Any = base.config
    for key, val in updates.items():
        setattr(cfg, key, val)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    if getattr(base, "is_quantized", False) or getattr(base, "quantization_method", None):
        resets: tuple[tuple[str, Any], ...] = (("is_quantized", False), ("hf_quantizer", None),
                                               ("quantization_method", None), ("is_loaded_in_8bit", False),
                                               ("is_loaded_in_4bit", False))
        for attr, val in resets:
            if hasattr(base, attr):
                try:
                    setattr(base, attr, val)
                except AttributeError:
                    pass
    if not uniform or refusal is not None:
        from compressor.modeling.perlayer import to_per_layer

        base = to_per_layer(base, heads_n, kv_n, inter_n)
    # every prunable projection is now a plain float nn.Linear; bring the rest (embeddings, norms) to dtype
    nn.Module.to(base, dtype)
    return base
