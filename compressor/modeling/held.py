"""A frozen base held in 16 bits: decoder projections in bfloat16 (or float16), embeddings, LM head and norms in
float32 — loaded that way straight from a checkpoint, or converted in place — and the dtype a checkpoint declares."""
from __future__ import annotations

from typing import Any


def held_class(cls: Any, config: Any) -> Any:
    """``cls`` with its projections loaded in the requested 16-bit dtype and its other modules with parameters
    (embeddings, LM head, norms: named from a meta-device instance of ``config``) in float32, straight from the
    checkpoint (transformers' ``_keep_in_fp32_modules_strict``; no float32 copy of the rest)."""
    import torch
    from torch import nn

    with torch.device("meta"):
        meta = cls._from_config(config)
    names = {name.rsplit(".", 1)[-1] for name, mod in meta.named_modules()
             if name and not isinstance(mod, nn.Linear) and any(True for _ in mod.parameters(recurse=False))}
    names |= {"lm_head"} & {name.rsplit(".", 1)[-1] for name, _ in meta.named_modules()}
    keep = sorted(set(getattr(cls, "_keep_in_fp32_modules_strict", None) or ()) | names)
    return type(cls.__name__, (cls,), {"_keep_in_fp32_modules_strict": keep, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def hold_projections(model: Any, dtype: Any) -> int:
    """Hold the linear layers inside the decoder layers in ``dtype`` and every other float parameter and buffer in
    float32, in place, one module at a time (the model's own memory plus one layer at most). Returns how many
    tensors changed dtype. Under bfloat16 autocast the forward pass computes what it computed before: autocast
    casts a float32 projection weight to bfloat16 for every product anyway."""
    import torch
    from torch import nn

    changed = 0
    inside: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}" and "lora_" not in name:
            inside.update(id(t) for t in mod.parameters(recurse=False))
            for t in mod.parameters(recurse=False):
                if t.dtype.is_floating_point and t.dtype != dtype:
                    t.data = t.data.to(dtype)
                    changed += 1
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in inside and t.dtype.is_floating_point and t.dtype != torch.float32:
            t.data = t.data.float()
            changed += 1
    return changed


def held_dtype(model: Any) -> Any:
    """The 16-bit dtype of the decoder projections of a model held by :func:`hold_projections` (projections in
    bfloat16 or float16, embeddings in float32), else None."""
    import torch
    from torch import nn

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None or getattr(emb, "weight", None) is None or emb.weight.dtype != torch.float32:
        return None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}":
            w = mod.weight
            return w.dtype if w.dtype in (torch.bfloat16, torch.float16) else None
    return None


def source_dtype(config: Any) -> str | None:
    """The dtype a model's checkpoint declares (``dtype`` / ``torch_dtype`` in its config), e.g. ``bfloat16``."""
    d = vars(config).get("dtype") or vars(config).get("torch_dtype")  # no deprecation warning on either release
    return None if d is None else str(d).replace("torch.", "")
