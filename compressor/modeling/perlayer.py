"""Models whose decoder layers have different widths (``widths="adaptive"``, ``skip_layers``): issue #12.

A stock Hugging Face config holds one width for every layer. A non-uniform model is written as the standard
remote-code layout instead:

* ``config.json`` with ``model_type`` ``lorapress_<source>`` (``lorapress_llama``, ``lorapress_mistral``,
  ``lorapress_qwen2``), the per-layer lists ``per_layer_num_attention_heads``,
  ``per_layer_num_key_value_heads`` and ``per_layer_intermediate_size`` (the scalars hold the widest layer),
  and an ``auto_map``;
* ``configuration_lorapress.py`` and ``modeling_lorapress.py``, copies of :mod:`compressor.modeling.remote_code`, which
  import only ``torch`` and ``transformers``.

``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it anywhere; without
``trust_remote_code`` transformers refuses (the ``model_type`` is unknown to it, so it never falls back to a
stock class). This project's loader recognises the ``model_type`` and builds the model from the in-package
classes, so it runs no code from the folder. Uniform models stay stock configs, unless the installed transformers
refuses the stock config of their widths (transformers >= 5.16's ``LlamaConfig`` refuses a head count that does not
divide ``hidden_size``): they are written in this layout with uniform lists
(:func:`compressor.algorithm.merge.check_pruned_config`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from compressor.core.errors import UnsupportedArchitectureError
from compressor.modeling.remote_code.configuration_lorapress import (
    CONFIGS,
    PER_LAYER_HEADS,
    PER_LAYER_INTERMEDIATE,
    PER_LAYER_KV_HEADS,
    unvalidated,
)
from compressor.modeling.remote_code.modeling_lorapress import MODELS
from compressor.modeling.sizes import PER_LAYER_KEYS, is_per_layer, layer_widths, stock_model_type

#: the remote-code files copied into a non-uniform model folder
REMOTE_CODE_FILES = ("configuration_lorapress.py", "modeling_lorapress.py")
_REMOTE_DIR = Path(__file__).resolve().parent / "remote_code"
#: per-layer ``model_type`` -> stock ``model_type``
PER_LAYER_MODEL_TYPES = {cls.model_type: src for src, cls in CONFIGS.items()}

__all__ = ["PER_LAYER_HEADS", "PER_LAYER_INTERMEDIATE", "PER_LAYER_KEYS", "PER_LAYER_KV_HEADS", "PER_LAYER_MODEL_TYPES",
           "REMOTE_CODE_FILES",
           "is_per_layer", "layer_widths", "per_layer_config", "per_layer_model_class", "stock_model_type",
           "as_stock", "to_per_layer", "write_remote_code"]


def _check_source(model_type: str | None) -> str:
    if model_type not in CONFIGS:
        raise UnsupportedArchitectureError(
            f"per-layer widths are not supported for model_type {model_type!r}; supported: {', '.join(CONFIGS)}")
    return str(model_type)


def per_layer_config(config: Any, heads: Sequence[int], kv_heads: Sequence[int], intermediate: Sequence[int]):
    """The per-layer config of stock ``config`` with layer ``i`` holding ``heads[i]`` query heads,
    ``kv_heads[i]`` KV heads and ``intermediate[i]`` MLP channels (scalars: the widest layer), with its
    ``auto_map``.

    Raises:
        UnsupportedArchitectureError: ``config.model_type`` has no per-layer class.
        ValueError: a list of the wrong length, a width < 1, heads not a multiple of the KV heads.
    """
    src = _check_source(stock_model_type(config))
    cls = CONFIGS[src]
    d = {k: v for k, v in config.to_dict().items()
         if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
    d.update({"num_attention_heads": max(heads), "num_key_value_heads": max(kv_heads),
              "intermediate_size": max(intermediate), PER_LAYER_HEADS: [int(h) for h in heads],
              PER_LAYER_KV_HEADS: [int(k) for k in kv_heads], PER_LAYER_INTERMEDIATE: [int(c) for c in intermediate]})
    new = cls(**d)
    new.auto_map = {"AutoConfig": f"configuration_lorapress.{cls.__name__}",
                    "AutoModelForCausalLM": f"modeling_lorapress.{MODELS[src].__name__}"}
    new._attn_implementation = getattr(config, "_attn_implementation", None)
    return new


def per_layer_model_class(config: Any) -> Any:
    """The in-package per-layer causal LM class for a per-layer ``config``."""
    return MODELS[_check_source(stock_model_type(config))]


def _swap_config(model: nn.Module, old: Any, new: Any) -> None:
    for mod in model.modules():
        if getattr(mod, "config", None) is old:
            mod.config = new


def stock_class(cls: Any) -> Any:
    """The stock transformers class a per-layer class extends (the first ``transformers.*`` class in its MRO)."""
    return next(c for c in cls.__mro__[1:] if c.__module__.startswith("transformers."))


def stock_config_kwargs(config: Any) -> tuple[Any, dict[str, Any]]:
    """``(stock config class, its keyword arguments)`` of per-layer ``config``: the scalars (the widest layer),
    without the per-layer lists and the keys that name the per-layer type."""
    drop = (*PER_LAYER_KEYS, "model_type", "auto_map", "architectures", "transformers_version")
    return stock_class(type(config)), {k: v for k, v in config.to_dict().items() if k not in drop}


def _stock_config(config: Any):
    """The stock config of per-layer ``config``: its scalars (the widest layer), no per-layer lists. Built without
    the stock class's validators (transformers >= 5): a per-layer config may hold a head count that the stock one
    refuses (see :func:`compressor.algorithm.merge.check_pruned_config`); this object only stands in for it in memory."""
    cls = per_layer_model_class(config)
    stock_cfg_cls, kwargs = stock_config_kwargs(config)
    new = stock_cfg_cls.__new__(stock_cfg_cls)
    unvalidated(stock_cfg_cls.__init__)(new, **kwargs)
    new._attn_implementation = getattr(config, "_attn_implementation", None)
    new._name_or_path = getattr(config, "_name_or_path", "")
    return cls, new


@contextlib.contextmanager
def as_stock(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block a per-layer model presents itself as its stock class with a stock config holding the
    widest layer's scalars (for tools that dispatch on the stock ``model_type``/class, e.g. optimum's ONNX
    exporter; the modules, and so what the model computes, are unchanged). A stock model is left as it is.
    This is the one place where a per-layer model is shown with scalar widths; callers must write the real
    widths next to anything they save from it (see :func:`exporters.onnx.ort_config.adjust_config_for_ort`)."""
    old: Any = getattr(model, "config", None)
    if old is None or not is_per_layer(old):
        yield model
        return
    cls, new = _stock_config(old)
    stock_cls = stock_class(cls)
    _swap_config(model, old, new)
    model.__class__ = stock_cls
    try:
        yield model
    finally:
        model.__class__ = cls
        _swap_config(model, new, old)


def to_per_layer(model: nn.Module, heads: Sequence[int], kv_heads: Sequence[int], intermediate: Sequence[int]
                 ) -> nn.Module:
    """Turn a stock causal LM whose layers already have these widths (as :func:`compressor.algorithm.merge.merge_and_slice`
    leaves them) into the per-layer class of its architecture, in place, and return it.

    The per-layer class is a subclass of the stock one that only differs in its constructor (it builds the
    layers at these widths), so the module tree is already what it would build; the config is replaced in
    every module that held the old one.
    """
    old: Any = model.config
    new = per_layer_config(old, heads, kv_heads, intermediate)
    _swap_config(model, old, new)
    model.__class__ = per_layer_model_class(new)
    return model


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Copy :data:`REMOTE_CODE_FILES` into ``folder``; returns their names."""
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(_REMOTE_DIR / name, Path(folder) / name)
    return list(REMOTE_CODE_FILES)
