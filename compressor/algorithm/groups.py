"""Coupled pruning groups of a decoder-only transformer, found with torch-pruning's dependency graph.

Per decoder layer there are two kinds of group:

* **attention heads** — a head's rows in ``q_proj`` and its columns in ``o_proj``. Under MHA
  (``num_key_value_heads == num_attention_heads``) the head's rows in ``k_proj`` and ``v_proj`` belong
  to the same group. Under GQA the KV heads are shared by ``num_attention_heads // num_key_value_heads``
  query heads; we prune **query heads evenly within each KV group** and keep every KV head, so the
  result is again a valid GQA config (``num_attention_heads = kv_heads × kept_per_group``). A KV head is
  never left without a query head.
* **MLP channels** — row ``c`` of ``gate_proj`` and ``up_proj`` and column ``c`` of ``down_proj``.

These are *logical* projections; where they physically live (e.g. Phi-3's fused ``qkv_proj``, whose rows
stack q, k and v, and ``gate_up_proj``) and which per-head norms must stay whole comes from the model
type's entry in :mod:`compressor.modeling.architectures`; the same rows are then found in the fused matrix.

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

from compressor.core.errors import GroupDiscoveryError, UnsupportedArchitectureError
from compressor.modeling.adapters import unwrap  # noqa: F401  (re-exported)
from compressor.modeling.architectures import Architecture, Projection, get_architecture, supported_text
from compressor.modeling.sizes import model_sizes

#: the logical projections (physical names of unfused architectures such as llama)
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

    def part_size(self, part: str) -> int:
        """Rows (``q/k/v/gate/up``) or columns (``o/down``) of the logical projection ``part``."""
        if part in ("q_proj", "o_proj"):
            return self.num_heads * self.head_dim
        if part in ("k_proj", "v_proj"):
            return self.num_kv_heads * self.head_dim
        return self.intermediate_size

    def part_offsets(self, proj: Projection) -> list[tuple[str, int, int]]:
        """``(part, first row, size)`` of each logical projection stacked in ``proj``."""
        out, start = [], 0
        for part in proj.parts:
            n = self.part_size(part)
            out.append((part, start, n))
            start += n
        return out


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

    @property
    def architecture(self) -> Architecture:
        """The per-architecture facts (:mod:`compressor.modeling.architectures`) of ``model_type``."""
        return get_architecture(self.model_type)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a (possibly peft-wrapped) causal LM."""
    base = unwrap(model)
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{type(base).__name__} has no `model.layers` list of decoder layers; supported: {supported_text()}"
        )
    return layers


def projection(layer: nn.Module, name: str) -> nn.Module:
    """The linear layer ``name`` (a physical name, e.g. ``o_proj`` or ``qkv_proj``) of a decoder layer."""
    for block in ("self_attn", "mlp"):
        parent = getattr(layer, block, None)
        mod = getattr(parent, name, None) if parent is not None else None
        if isinstance(mod, nn.Module):
            return mod
    raise AttributeError(f"decoder layer has no self_attn.{name} or mlp.{name}")


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
    arch = get_architecture(cfg, str(getattr(cfg, "_name_or_path", "") or type(base).__name__))
    sizes = model_sizes(cfg)
    hidden, n_heads, n_kv, head_dim, inter = sizes.hidden, sizes.heads, sizes.kv_heads, sizes.head_dim, sizes.intermediate
    if n_heads % n_kv:
        raise GroupDiscoveryError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
    lg_cfg = LayerGroups(0, n_heads, n_kv, head_dim, inter)
    expected = {p.name: ((sum(lg_cfg.part_size(x) for x in p.parts), hidden) if p.row_pruned
                         else (hidden, lg_cfg.part_size(p.parts[0]))) for p in arch.projections}
    blocks = {p.name: p.block for p in arch.projections}
    layers = []
    for i, layer in enumerate(decoder_layers(base)):
        for name, shape in expected.items():
            try:
                mod = getattr(getattr(layer, blocks[name]), name)
            except AttributeError as exc:
                raise GroupDiscoveryError(
                    f"layer {i} has no {blocks[name]}.{name}; {arch.model_type} layers have "
                    f"{', '.join(f'{p.block}.{p.name}' for p in arch.projections)}"
                ) from exc
            got = (_out_features(mod), _in_features(mod))
            if got != shape:
                raise GroupDiscoveryError(
                    f"layer {i} {name} has shape {got}, but the config implies {shape} "
                    f"(heads={n_heads}, kv_heads={n_kv}, head_dim={head_dim}, intermediate={inter})"
                )
        for norm in arch.head_norms:
            w = getattr(getattr(layer.self_attn, norm, None), "weight", None)
            if w is None or tuple(w.shape) != (head_dim,):
                raise GroupDiscoveryError(
                    f"layer {i} self_attn.{norm} has weight shape {None if w is None else tuple(w.shape)}, expected "
                    f"({head_dim},): a per-head norm shared by all heads, which head pruning leaves whole"
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
        model: a causal LM of an architecture in :mod:`compressor.modeling.architectures`, optionally peft-wrapped (not
            yet masked).
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
    # a base held in bfloat16 (compressor.modeling.held.hold_projections) is traced under autocast, as it runs
    from compressor.modeling.held import held_dtype

    held = held_dtype(base)
    cast = torch.autocast(device_type=device.type, dtype=held) if held is not None else contextlib.nullcontext()
    with tracing_mode(base), cast:
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
    arch = groups.architecture
    for lg, layer in zip(groups.layers, decoder_layers(base)):
        _verify_layer(dg, tp, lg, layer, names, arch)
    return ModelGroups(groups.model_type, groups.hidden_size, groups.layers, "torch-pruning DependencyGraph")


def _coupled(dg, fn, module: nn.Module, idxs: list[int], names: dict[int, str]) -> dict[str, tuple[str, list[int]]]:
    found: dict[str, tuple[str, list[int]]] = {}
    for dep, dep_idxs in dg.get_pruning_group(module, fn, idxs):
        target = dep.target.module
        if isinstance(target, nn.Linear):
            handler = getattr(dep.handler, "__name__", str(dep.handler))
            found[names.get(id(target), "?").rsplit(".", 1)[-1]] = (handler, sorted(int(i) for i in dep_idxs))
    return found


def _verify_layer(dg, tp, lg: LayerGroups, layer: Any, names: dict[int, str], arch: Architecture) -> None:
    """MLP channel 0 and the last one, and every query head: the rows the groups own in each row-pruned
    projection (a fused one holds several parts) must be what the graph couples with the columns of
    ``down_proj`` / ``o_proj``. Under GQA only the q rows are checked (see the module docstring)."""
    i = lg.index
    for block, src, what in (("mlp", "down_proj", "input channel"), ("self_attn", "o_proj", "input channels of head")):
        mlp = block == "mlp"
        checks = []
        for proj in arch.projections:
            parts = [(part, start, n) for part, start, n in lg.part_offsets(proj)
                     if proj.row_pruned and proj.block == block and (mlp or part == "q_proj" or not lg.gqa)]
            if parts:
                checks.append((proj, parts))
        cases = [(c, [c]) for c in (0, lg.intermediate_size - 1)] if mlp else [
            (h, list(range(lg.head_dim * h, lg.head_dim * (h + 1)))) for h in range(lg.num_heads)]
        for g, local in cases:
            found = _coupled(dg, tp.prune_linear_in_channels, getattr(getattr(layer, block), src), local, names)
            for proj, parts in checks:
                got = found.get(proj.name, (None, None))[1]
                want = [start + r for _, start, _ in parts for r in local]
                if got is not None:
                    got = [r for r in got if any(start <= r < start + n for _, start, n in parts)]
                if got != want:
                    raise GroupDiscoveryError(
                        f"layer {i}: dependency graph does not couple {block}.{src} {what} {g} with "
                        f"{block}.{proj.name} rows {want[0]}..{want[-1]} ({' + '.join(p for p, _, _ in parts)}; "
                        f"found {sorted(found)}); heads={lg.num_heads}, kv_heads={lg.num_kv_heads}, "
                        f"head_dim={lg.head_dim}; cannot prune {'MLP channels' if mlp else 'attention heads'}"
                    )
