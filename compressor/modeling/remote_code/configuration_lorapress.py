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

Works with transformers 4.57 and 5. transformers 5 configs are strict dataclasses (huggingface_hub's
``@strict``): every subclass becomes a dataclass whose generated ``__init__`` replaces an inherited one, the
stock ``__init__`` ends by running the stock class's validators, and since 5.16 ``LlamaConfig``'s
``validate_architecture`` refuses ``hidden_size % num_attention_heads != 0`` even with an explicit ``head_dim``.
The attention of these models is sized by ``head_dim`` (and each layer by its lists), so these classes run every
stock check except that one (:meth:`_PerLayerWidths.validate_architecture`), which lets a pruned LLaMA keep a
head count that does not divide ``hidden_size``.
"""
from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, MistralConfig, Qwen2Config

PER_LAYER_HEADS = "per_layer_num_attention_heads"
PER_LAYER_KV_HEADS = "per_layer_num_key_value_heads"
PER_LAYER_INTERMEDIATE = "per_layer_intermediate_size"


def unvalidated(init: Any) -> Any:
    """``init`` (a config class's ``__init__``) without the class validation that huggingface_hub's ``@strict``
    wraps around it (transformers >= 5; ``functools.wraps`` keeps the inner one as ``__wrapped__``); ``init``
    itself where there is no such wrapper (transformers 4)."""
    fn = getattr(init, "__func__", init)
    if getattr(getattr(fn, "__code__", None), "co_name", "") == "init_with_validate":
        return fn.__wrapped__
    return fn


def _validators(cls: type) -> list[Any]:
    """The class validators of ``cls`` as ``@strict`` collects them (every public ``validate_*`` method), looked
    up on ``cls`` itself so that its overrides count."""
    return [getattr(cls, n) for n in dir(cls) if n.startswith("validate_") and callable(getattr(cls, n))]


class _PerLayerWidths:
    """Mixin: validates and holds the per-layer lists (defaults: every layer as the scalars say)."""

    #: ``model_type`` of the stock architecture this one extends
    source_model_type = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # transformers >= 5 turns every config subclass into a dataclass and gives it a generated __init__ unless
        # the class defines its own: define this mixin's in the subclass itself
        cls.__init__ = _PerLayerWidths.__init__  # type: ignore[method-assign]
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "__class_validators__"):
            # @strict captured the stock class's validators as functions: this class's own list, so that its
            # validate_architecture replaces the stock one (read by :meth:`validate`)
            cls.__class_validators__ = _validators(cls)

    def __init__(self, per_layer_num_attention_heads=None, per_layer_num_key_value_heads=None,
                 per_layer_intermediate_size=None, **kwargs):
        # the stock __init__ without the stock validators (transformers >= 5), which run below as this class's
        unvalidated(super().__init__)(self, **kwargs)
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
        if hasattr(type(self), "__class_validators__"):
            self.validate()

    def validate(self) -> None:
        """Run this class's validators (transformers >= 5 calls it before saving; the stock ``validate`` would
        run the stock class's list). Nothing to run on transformers 4."""
        for validator in getattr(type(self), "__class_validators__", ()):
            validator(self)

    def validate_architecture(self) -> None:
        """The stock architecture checks, less ``hidden_size % num_attention_heads == 0`` (the attention is sized by
        ``head_dim``, so a pruned model may keep any head count): where that does not hold and the stock class's
        own ``validate_architecture`` refuses, the checks of its parents run instead (transformers >= 5.16's
        ``LlamaConfig`` checks nothing else there; Mistral and Qwen2 do not check it)."""
        check = getattr(super(), "validate_architecture", None)
        if check is None:  # transformers 4
            return
        cfg: Any = self
        if cfg.hidden_size % cfg.num_attention_heads == 0:
            check()
            return
        owner = next(c for c in type(self).__mro__
                     if "validate_architecture" in vars(c) and not issubclass(c, _PerLayerWidths))
        try:
            check()
        except ValueError:
            parents = getattr(super(owner, self), "validate_architecture", None)
            if parents is not None:
                parents()

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
