"""Accessors for peft-wrapped models: the one place that knows how peft lays out a LoRA layer.

Used by scoring (criteria read ``W0``, ``A``, ``B``), masking, the loss and merge (fold ``BA`` and strip
peft), so none of them depends on another for these helpers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """Return the ``*ForCausalLM`` under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_lora_layer(mod: nn.Module) -> bool:
    return hasattr(mod, "base_layer") and hasattr(mod, "lora_A")


def base_weight(mod: nn.Module) -> torch.Tensor:
    """Float32 copy-free view (or dequantized copy) of a projection's base weight ``W0``."""
    base: Any = getattr(mod, "base_layer", mod)
    w = base.weight
    if w.dtype in (torch.int8, torch.uint8) or type(w).__name__ in ("Int8Params", "Params4bit"):
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(w, state=getattr(base, "state", None)).float()
    return w.detach().float()


def lora_parts(mod: Any, adapter: str = "default") -> tuple[Any, Any, float]:
    """``(A, B, scaling)`` of a peft LoRA layer, or ``(None, None, 1.0)`` for a plain layer."""
    if not hasattr(mod, "lora_A") or adapter not in getattr(mod, "lora_A", {}):
        return None, None, 1.0
    return mod.lora_A[adapter].weight, mod.lora_B[adapter].weight, float(mod.scaling[adapter])


def strip_peft(model: nn.Module) -> nn.Module:
    """Replace every peft LoRA layer by its base layer and return the underlying model."""
    base = unwrap(model)
    for name, mod in list(base.named_modules()):
        if is_lora_layer(mod):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, mod.base_layer)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(base, attr):
            try:
                delattr(base, attr)
            except AttributeError:
                pass
    return base
