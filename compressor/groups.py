"""Coupled pruning groups of a decoder-only transformer, found with torch-pruning's dependency graph.

Per decoder layer there are two kinds of group:

* **attention heads** — a head's rows in ``q_proj`` and its columns in ``o_proj``. Under MHA
  (``num_key_value_heads == num_attention_heads``) the head's rows in ``k_proj`` and ``v_proj`` belong
  to the same group. Under GQA the KV heads are shared by ``num_attention_heads // num_key_value_heads``
  query heads; we prune **query heads evenly within each KV group** and keep every KV head, so the
  result is again a valid GQA config (``num_attention_heads = kv_heads × kept_per_group``). A KV head is
  never left without a query head.
* **MLP channels** — row ``c`` of ``gate_proj`` and ``up_proj`` and column ``c`` of ``down_proj``.

Sizes are read from the config (``head_dim``, ``num_key_value_heads``, ``intermediate_size``), and the
dependency graph is asked which weights are coupled; :func:`discover_groups` raises
:class:`GroupDiscoveryError` naming the layer if what it finds disagrees with the config.

Tracing notes (measured): tracing with the KV cache on hangs, so ``use_cache=False``; the rotary
embedding (``rotate_half`` slices and concatenates channels) and SDPA hide the head coupling, so we trace
with eager attention and RoPE bypassed. Under GQA the graph maps q-head ``h`` to KV channels by index,
which is wrong after ``repeat_kv``; the KV mapping is therefore taken from the config
(``kv_head = q_head // (num_heads // num_kv_heads)``), and only the q↔o coupling, MHA's q↔k↔v↔o coupling
and the MLP coupling are taken from, and asserted against, the graph.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import unwrap  # noqa: F401  (re-exported)
from .errors import GroupDiscoveryError, UnsupportedArchitectureError
from .sizes import model_sizes

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
PRUNABLE = ATTN + MLP


@dataclass(frozen=True)
class LayerGroups:
    """The prunable structure of one decoder layer (sizes as currently in the model)."""

    index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def gqa(self) -> bool:
        return self.num_kv_heads != self.num_heads

    @property
    def heads_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ModelGroups:
    """Groups of every decoder layer plus the widths of the hidden stream."""

    model_type: str
    hidden_size: int
    layers: tuple[LayerGroups, ...]
    verified_with: str = "torch-pruning DependencyGraph"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a (possibly peft-wrapped) causal LM."""
    base = unwrap(model)
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(base).__name__} has no `model.layers` list of decoder layers; supported: LLaMA-style "
            f"causal LMs (llama, mistral, qwen2)"
        )
    return layers


def projection(layer: nn.Module, name: str) -> nn.Module:
    parent = layer.self_attn if name in ATTN else layer.mlp
    return getattr(parent, name)


def _out_features(mod: nn.Module) -> int:
    base: Any = getattr(mod, "base_layer", mod)
    return int(base.out_features)


def _in_features(mod: nn.Module) -> int:
    base: Any = getattr(mod, "base_layer", mod)
    return int(base.in_features)


def groups_from_config(model: nn.Module) -> ModelGroups:
    """Derive the groups from the config and check every layer's weight shapes against it."""
    base = unwrap(model)
    cfg: Any = base.config
    sizes = model_sizes(cfg)
    hidden, n_heads, n_kv, head_dim, inter = sizes.hidden, sizes.heads, sizes.kv_heads, sizes.head_dim, sizes.intermediate
    if n_heads % n_kv:
        raise GroupDiscoveryError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
    expected = {
        "q_proj": (n_heads * head_dim, hidden), "k_proj": (n_kv * head_dim, hidden),
        "v_proj": (n_kv * head_dim, hidden), "o_proj": (hidden, n_heads * head_dim),
        "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter),
    }
    layers = []
    for i, layer in enumerate(decoder_layers(base)):
        for name, shape in expected.items():
            try:
                mod = projection(layer, name)
            except AttributeError as exc:
                raise GroupDiscoveryError(
                    f"layer {i} has no {name}; supported layers have self_attn.{{q,k,v,o}}_proj and "
                    f"mlp.{{gate,up,down}}_proj"
                ) from exc
            got = (_out_features(mod), _in_features(mod))
            if got != shape:
                raise GroupDiscoveryError(
                    f"layer {i} {name} has shape {got}, but the config implies {shape} "
                    f"(heads={n_heads}, kv_heads={n_kv}, head_dim={head_dim}, intermediate={inter})"
                )
        layers.append(LayerGroups(i, n_heads, n_kv, head_dim, inter))
    return ModelGroups(str(cfg.model_type), hidden, tuple(layers), verified_with="config shapes")


@contextlib.contextmanager
def tracing_mode(model: nn.Module):
    """Eager attention, no KV cache, RoPE bypassed — what torch-pruning needs to see the head coupling."""
    base: Any = unwrap(model)
    modeling: Any = sys.modules.get(type(base).__module__)
    orig_rope = getattr(modeling, "apply_rotary_pos_emb", None)
    orig_impl = getattr(base.config, "_attn_implementation", None)
    orig_cache = getattr(base.config, "use_cache", None)
    try:
        if orig_rope is not None:
            modeling.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
        base.config._attn_implementation = "eager"
        base.config.use_cache = False
        yield
    finally:
        if orig_rope is not None:
            modeling.apply_rotary_pos_emb = orig_rope
        base.config._attn_implementation = orig_impl
        base.config.use_cache = orig_cache


def discover_groups(model: nn.Module, *, verify: bool = True) -> ModelGroups:
    """Find the coupled head and channel groups of every decoder layer.

    The config gives the sizes; torch-pruning's dependency graph (traced on a short dummy input) is
    asked, for every layer, which weights are coupled with ``o_proj``'s input channels of each head and
    with ``down_proj``'s input channels, and the answer is checked against the config.

    Args:
        model: a LLaMA-style causal LM (llama, mistral, qwen2), optionally peft-wrapped (not yet masked).
        verify: trace and assert with torch-pruning (default). Skipped for quantized (bitsandbytes) bases,
            whose shapes are still checked against the config.

    Raises:
        GroupDiscoveryError: naming the first layer whose groups disagree with the config.

    Example:
        >>> groups = discover_groups(model)      # doctest: +SKIP
        >>> groups.layers[0].num_heads, groups.layers[0].intermediate_size
    """
    groups = groups_from_config(model)
    base: Any = unwrap(model)
    if not verify:
        return groups
    if getattr(base, "is_quantized", False) or getattr(base, "quantization_method", None):
        return ModelGroups(groups.model_type, groups.hidden_size, groups.layers, "config shapes",
                           ("quantized base: dependency graph not traced; shapes checked against config",))
    import torch_pruning as tp

    device = next(base.parameters()).device
    vocab = int(base.config.vocab_size)
    ids = torch.arange(min(8, vocab), device=device).unsqueeze(0) % vocab
    was_training = base.training
    base.eval()
    with tracing_mode(base):
        try:
            dg = tp.DependencyGraph().build_dependency(
                base, example_inputs={"input_ids": ids, "use_cache": False},
                forward_fn=lambda m, x: m(**x).logits, ignored_layers=[base.get_output_embeddings()],
                verbose=False,
            )
        except Exception as exc:
            raise GroupDiscoveryError(f"torch-pruning could not trace {type(base).__name__}: {exc}") from exc
    base.train(was_training)
    names = {id(m): n for n, m in base.named_modules()}
    for lg, layer in zip(groups.layers, decoder_layers(base)):
        _verify_layer(dg, tp, lg, layer, names)
    return ModelGroups(groups.model_type, groups.hidden_size, groups.layers, "torch-pruning DependencyGraph")


def _coupled(dg, fn, module: nn.Module, idxs: list[int], names: dict[int, str]) -> dict[str, tuple[str, list[int]]]:
    found: dict[str, tuple[str, list[int]]] = {}
    for dep, dep_idxs in dg.get_pruning_group(module, fn, idxs):
        target = dep.target.module
        if isinstance(target, nn.Linear):
            handler = getattr(dep.handler, "__name__", str(dep.handler))
            found[names.get(id(target), "?").rsplit(".", 1)[-1]] = (handler, sorted(int(i) for i in dep_idxs))
    return found


def _verify_layer(dg, tp, lg: LayerGroups, layer: Any, names: dict[int, str]) -> None:
    i = lg.index
    # MLP channel 0 and the last one.
    for c in (0, lg.intermediate_size - 1):
        found = _coupled(dg, tp.prune_linear_in_channels, layer.mlp.down_proj, [c], names)
        for name in ("gate_proj", "up_proj"):
            if found.get(name, (None, None))[1] != [c]:
                raise GroupDiscoveryError(
                    f"layer {i}: dependency graph does not couple mlp.down_proj input channel {c} with "
                    f"mlp.{name} output channel {c} (found {sorted(found)}); cannot prune MLP channels"
                )
    # Every query head: its q rows must be coupled with the same o columns (and k, v rows under MHA).
    for h in range(lg.num_heads):
        rows = list(range(lg.head_dim * h, lg.head_dim * (h + 1)))
        found = _coupled(dg, tp.prune_linear_in_channels, layer.self_attn.o_proj, rows, names)
        need = ("q_proj", "k_proj", "v_proj") if not lg.gqa else ("q_proj",)
        for name in need:
            if found.get(name, (None, None))[1] != rows:
                raise GroupDiscoveryError(
                    f"layer {i}: dependency graph does not couple self_attn.o_proj input channels of head {h} "
                    f"with self_attn.{name} rows {rows[0]}..{rows[-1]} (found {sorted(found)}); "
                    f"heads={lg.num_heads}, kv_heads={lg.num_kv_heads}, head_dim={lg.head_dim}"
                )
