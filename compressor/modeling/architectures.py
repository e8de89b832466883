"""What pruning needs to know about each supported architecture: one declarative entry per ``model_type``.

The generic code (:mod:`compressor.algorithm.groups`, :mod:`compressor.algorithm.scoring`, :mod:`compressor.algorithm.masking`,
:mod:`compressor.algorithm.merge`) works on *logical* projections — ``q_proj, k_proj, v_proj, o_proj`` and
``gate_proj, up_proj, down_proj`` — and reads from the :class:`Architecture` of a model where they live:

* ``projections``: the physical linear layers of a decoder layer that pruning slices, in order. A fused
  layer lists the logical projections stacked along its output rows: Phi-3's ``qkv_proj`` is
  ``(q_proj, k_proj, v_proj)``, so a head's rows sit in three slices of one matrix, and its
  ``gate_up_proj`` is ``(gate_proj, up_proj)``, so a channel's rows sit in two halves. These names are also
  the LoRA target modules.
* ``head_norms``: modules of ``self_attn`` that normalise each head over ``head_dim`` with one weight shared by
  all heads (Qwen3's and Gemma 3's ``q_norm``/``k_norm``). Head pruning leaves them whole; discovery checks
  their weight has ``head_dim`` entries (a norm over ``num_heads * head_dim``, as OLMo 2's, would have to
  be sliced and is not supported).
* ``hidden_norms_per_layer``: RMSNorms of width ``hidden_size`` per decoder layer (2; Gemma 2/3 add pre/post
  feed-forward norms: 4), for the parameter count in :mod:`compressor.modeling.flops`.
* ``needs_bos``: the model was trained with every sequence starting with BOS and degrades badly without it
  (Gemma: dense Gemma-3-270M WikiText-2 perplexity 61.5 without BOS, 23.9 with it, 4 × 512 tokens). Calibration
  blocks and the prune report's perplexity then start with BOS; other models keep the papers' no-BOS protocol.
* ``onnx`` / ``ort_kv_from_head_dim``: whether ``compress export --format onnx`` supports the architecture (a
  graph with KV cache, written by torch's exporter or optimum's ``text-generation-with-past``) and whether
  optimum's ``ORTModelForCausalLM`` sizes the KV cache from ``config.head_dim`` (else from
  ``hidden_size // num_attention_heads``, see :mod:`exporters.onnx.ort_config`).

Everything else (sizes, rope scaling, sliding-window layers, embedding scaling, ``(1 + w)`` RMSNorm,
pre/post feed-forward norms, soft-capping, ``query_pre_attn_scalar``) is untouched by pruning heads or MLP
channels, and the merge rewrites the same config keys for every entry (``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size``, an explicit ``head_dim``).

Example:
    >>> from compressor.modeling.architectures import get_architecture
    >>> get_architecture("phi3").prunable
    ('qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressor.core.errors import UnsupportedArchitectureError

#: logical projections whose groups own output rows / input columns
ROW_PARTS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
COL_PARTS = ("o_proj", "down_proj")
HEAD_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Projection:
    """One physical linear layer that pruning slices.

    Attributes:
        name: its attribute name on ``block`` (e.g. ``qkv_proj``).
        block: ``self_attn`` or ``mlp``.
        parts: the logical projections it holds, stacked along the output rows in this order; one part for
            an unfused layer. ``o_proj`` and ``down_proj`` (column-pruned) are never fused.
    """

    name: str
    block: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.block not in ("self_attn", "mlp"):
            raise ValueError(f"projection {self.name!r}: block {self.block!r} is not valid; use self_attn or mlp")
        bad = [p for p in self.parts if p not in ROW_PARTS + COL_PARTS]
        if not self.parts or bad:
            raise ValueError(f"projection {self.name!r}: parts {self.parts!r} must be among {ROW_PARTS + COL_PARTS}")
        if len(self.parts) > 1 and any(p in COL_PARTS for p in self.parts):
            raise ValueError(f"projection {self.name!r}: o_proj / down_proj cannot be fused with other projections")

    @property
    def row_pruned(self) -> bool:
        """True if groups own output rows of this layer (q/k/v/gate/up), False for input columns (o/down)."""
        return self.parts[0] in ROW_PARTS


@dataclass(frozen=True)
class Architecture:
    """Per-architecture facts the generic pruning and export code reads (see the module docstring)."""

    model_type: str
    model_class: str
    projections: tuple[Projection, ...]
    head_norms: tuple[str, ...] = ()
    hidden_norms_per_layer: int = 2
    needs_bos: bool = False
    onnx: bool = True
    ort_kv_from_head_dim: bool = False

    def __post_init__(self) -> None:
        parts = [p for proj in self.projections for p in proj.parts]
        if sorted(parts) != sorted(ROW_PARTS + COL_PARTS):
            raise ValueError(f"architecture {self.model_type!r}: projections must hold each of "
                             f"{ROW_PARTS + COL_PARTS} exactly once, got {parts}")

    @property
    def prunable(self) -> tuple[str, ...]:
        """Names of the physical projections (the LoRA target modules)."""
        return tuple(p.name for p in self.projections)

    def holding(self, part: str) -> Projection:
        """The physical projection that holds the logical projection ``part``."""
        for proj in self.projections:
            if part in proj.parts:
                return proj
        raise KeyError(part)


LLAMA_PROJECTIONS = (
    Projection("q_proj", "self_attn", ("q_proj",)), Projection("k_proj", "self_attn", ("k_proj",)),
    Projection("v_proj", "self_attn", ("v_proj",)), Projection("o_proj", "self_attn", ("o_proj",)),
    Projection("gate_proj", "mlp", ("gate_proj",)), Projection("up_proj", "mlp", ("up_proj",)),
    Projection("down_proj", "mlp", ("down_proj",)),
)
FUSED_PROJECTIONS = (
    Projection("qkv_proj", "self_attn", ("q_proj", "k_proj", "v_proj")), Projection("o_proj", "self_attn", ("o_proj",)),
    Projection("gate_up_proj", "mlp", ("gate_proj", "up_proj")), Projection("down_proj", "mlp", ("down_proj",)),
)

_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add ``arch`` to the table; a second entry for the same ``model_type`` is an error."""
    if arch.model_type in _REGISTRY:
        raise ValueError(f"architecture {arch.model_type!r} is already registered")
    _REGISTRY[arch.model_type] = arch
    return arch


for _arch in (
    Architecture("llama", "LlamaForCausalLM", LLAMA_PROJECTIONS),
    Architecture("mistral", "MistralForCausalLM", LLAMA_PROJECTIONS),
    Architecture("qwen2", "Qwen2ForCausalLM", LLAMA_PROJECTIONS),
    Architecture("qwen3", "Qwen3ForCausalLM", LLAMA_PROJECTIONS, head_norms=("q_norm", "k_norm")),
    Architecture("gemma", "GemmaForCausalLM", LLAMA_PROJECTIONS, needs_bos=True, ort_kv_from_head_dim=True),
    Architecture("gemma2", "Gemma2ForCausalLM", LLAMA_PROJECTIONS, hidden_norms_per_layer=4, needs_bos=True),
    Architecture("gemma3_text", "Gemma3ForCausalLM", LLAMA_PROJECTIONS, head_norms=("q_norm", "k_norm"),
                 hidden_norms_per_layer=4, needs_bos=True, ort_kv_from_head_dim=True),
    Architecture("phi3", "Phi3ForCausalLM", FUSED_PROJECTIONS),
):
    register_architecture(_arch)

#: model types we know and refuse, with the reason (anything else not in the table is refused too)
UNSUPPORTED_REASONS = {
    "mixtral": "mixture-of-experts MLP (per-expert channel groups are not implemented)",
    "qwen2_moe": "mixture-of-experts MLP (per-expert channel groups are not implemented)",
    "qwen3_moe": "mixture-of-experts MLP (per-expert channel groups are not implemented)",
    "jamba": "Mamba/attention hybrid (Mamba mixers have no head or channel groups here)",
    "falcon_h1": "Mamba/attention hybrid (Mamba mixers have no head or channel groups here)",
    "gemma3": "multimodal Gemma 3; load its text model (model_type gemma3_text, Gemma3ForCausalLM) instead",
    "olmo2": "q_norm/k_norm over all heads together would have to be sliced per head",
}


def supported() -> dict[str, str]:
    """``model_type -> model class`` of every supported architecture."""
    return {k: a.model_class for k, a in _REGISTRY.items()}


def supported_text() -> str:
    """The supported architectures as one line for error messages."""
    return ", ".join(f"{k} ({v})" for k, v in supported().items())


def find_architecture(model_type: str | None) -> Architecture | None:
    """The table entry of ``model_type``, or None (no error) when it has none."""
    return _REGISTRY.get(str(model_type)) if model_type is not None else None


def _type_and_classes(config: Any) -> tuple[Any, list[str]]:
    """``(model_type, architectures)`` of a config, a ``config.json`` dict or a ``model_type`` string; a
    per-layer-widths ``lorapress_<type>`` gives its stock type (its table entry)."""
    from compressor.modeling.sizes import PER_LAYER_TYPE_PREFIX

    mt: Any
    archs: list[str]
    if isinstance(config, str):
        mt, archs = config, []
    elif isinstance(config, dict):
        mt, archs = config.get("model_type"), config.get("architectures") or []
    else:
        mt, archs = getattr(config, "model_type", None), getattr(config, "architectures", None) or []
    if isinstance(mt, str) and mt.startswith(PER_LAYER_TYPE_PREFIX):
        mt = mt[len(PER_LAYER_TYPE_PREFIX):]
    return mt, list(archs)


def get_architecture(config: Any, spec: str = "model") -> Architecture:
    """The :class:`Architecture` of ``config`` (a config, a ``config.json`` dict, or a ``model_type`` string).

    Raises:
        UnsupportedArchitectureError: the model type is not in the table; the message names it (with the
            reason for known ones such as MoE or Mamba hybrids) and lists the supported ones.
    """
    mt, archs = _type_and_classes(config)
    arch = find_architecture(mt)
    if arch is None:
        reason = UNSUPPORTED_REASONS.get(str(mt))
        raise UnsupportedArchitectureError(
            f"{spec!r} has model_type {mt!r} ({', '.join(archs)})" + (f": {reason}" if reason else "")
            + f"; supported: {supported_text()}"
        )
    return arch


def needs_bos(config: Any) -> bool:
    """True if sequences of this model should start with BOS (see ``Architecture.needs_bos``); False for a
    model type that is not in the table."""
    arch = find_architecture(_type_and_classes(config)[0])
    return bool(arch and arch.needs_bos)


def onnx_architectures() -> list[str]:
    """Model types ``compress export --format onnx`` supports."""
    return [k for k, a in _REGISTRY.items() if a.onnx]


def check_onnx(config: Any, spec: str = "model") -> Architecture:
    """Like :func:`get_architecture`, and raise if the architecture has no ONNX export."""
    arch = get_architecture(config, spec)
    if not arch.onnx:
        raise UnsupportedArchitectureError(
            f"{spec!r} ({arch.model_type}) cannot be exported to ONNX; ONNX export supports "
            f"{', '.join(onnx_architectures())} "
            f"(--format safetensors works for every supported architecture)"
        )
    return arch
