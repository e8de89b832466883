"""``compress export --format onnx`` (default ``--exporter torch``): the causal LM with its KV cache, traced by
torch's own ONNX exporter, no optimum needed.

The Hugging Face model itself is traced (``torch.onnx.export(..., dynamo=False)``, the TorchScript tracer,
opset :data:`DEFAULT_OPSET` unless given), so every registered architecture - and the per-layer-width
``lorapress_*`` classes with their real per-layer shapes - is exported by its own modelling code. A small
wrapper module gives the graph optimum's ``text-generation-with-past`` I/O, so the folder is the same as the
one optimum writes and still loads in ``optimum.onnxruntime.ORTModelForCausalLM`` where optimum is installed:

* inputs ``input_ids`` (batch x sequence), ``attention_mask`` (batch x past+sequence), ``position_ids`` (batch x
  sequence; not for the gemma family, see :data:`NO_POSITION_IDS`) and ``past_key_values.{i}.key`` /
  ``.value`` (batch x KV heads x past x head_dim, one pair per layer);
* outputs ``logits`` (batch x sequence x vocab) and ``present.{i}.key`` / ``.value`` (batch x KV heads x
  past+sequence x head_dim).

The wrapper fills a ``transformers.DynamicCache`` from the flat past tensors (``cache.update(k, v, i)``),
calls the model with ``use_cache=True`` and returns the cache's tensors flat. Each cache layer is a plain full
layer, so the graph's cache keeps every position also for sliding-window layers (Mistral, Gemma 2 / 3): the
window is applied by the model's attention mask, as in optimum's graphs. Attention is traced in its eager
form (the model's attention implementation is restored afterwards; on transformers 4.x, whose mask functions use
``torch.vmap``, with broadcast versions of them, see :func:`traceable_masks`), with a past of
:data:`TRACE_PAST` positions, :data:`TRACE_SEQUENCE` new tokens, batch :data:`TRACE_BATCH` and a left-padded
row, so no length is fixed in the graph.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor.core.errors import ExportError
from compressor.core.quiet import quiet_onnx_export
from compressor.modeling.sizes import stock_model_type

#: opset of ``--exporter torch`` when none is given (the TorchScript exporter's well-tested range ends at 20)
DEFAULT_OPSET = 17
#: model types whose graph has no ``position_ids`` input: optimum-onnx 0.1.0 exports the gemma family as a
#: ``TextDecoderOnnxConfig`` (positions from the cache length); kept so a folder has the same I/O on either path
NO_POSITION_IDS = frozenset({"gemma", "gemma2", "gemma3_text"})
#: shapes of the example inputs the graph is traced with (none is 0 or 1, so the tracer fixes no length)
TRACE_BATCH, TRACE_SEQUENCE, TRACE_PAST = 2, 3, 5

BATCH, SEQUENCE, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


def has_position_ids(config: Any) -> bool:
    """Whether the exported graph of a model with ``config`` takes ``position_ids`` (all but the gemma family)."""
    return stock_model_type(config) not in NO_POSITION_IDS


def io_names(num_layers: int, position_ids: bool) -> tuple[list[str], list[str]]:
    """``(input names, output names)`` of the graph, in order (optimum's names)."""
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
    inputs += [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return inputs, outputs


def dynamic_axes(inputs: list[str], outputs: list[str]) -> dict[str, dict[int, str]]:
    """The symbolic dimensions of every input and output."""
    axes: dict[str, dict[int, str]] = {"input_ids": {0: BATCH, 1: SEQUENCE}, "attention_mask": {0: BATCH, 1: TOTAL},
                                       "position_ids": {0: BATCH, 1: SEQUENCE}, "logits": {0: BATCH, 1: SEQUENCE}}
    for name in inputs:
        if name.startswith("past_key_values."):
            axes[name] = {0: BATCH, 2: PAST}
    for name in outputs:
        if name.startswith("present."):
            axes[name] = {0: BATCH, 2: TOTAL}
    return {k: v for k, v in axes.items() if k in inputs or k in outputs}


def cache_tensors(cache: Any, layer: int) -> tuple[Any, Any]:
    """``(keys, values)`` of ``layer`` of a transformers cache: ``cache.layers[i]`` (transformers >= 4.56), else
    the older ``key_cache`` / ``value_cache`` lists, else a legacy tuple of pairs."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]


def kv_cache_module(model: Any, num_layers: int, position_ids: bool) -> Any:
    """A ``torch.nn.Module`` around ``model`` whose forward takes and returns the graph's flat tensors, in the
    order of :func:`io_names`."""
    import torch
    from transformers import DynamicCache

    class KVCacheLM(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, *rest):
            pos, past = (rest[0], rest[1:]) if position_ids else (None, rest)
            cache = DynamicCache()  # no config: full layers, which keep every position (the mask applies windows)
            for i in range(num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            kw = {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": cache,
                  "use_cache": True, "return_dict": True}
            if pos is not None:
                kw["position_ids"] = pos
            out = self.lm(**kw)
            present = []
            for i in range(num_layers):
                present.extend(cache_tensors(out.past_key_values, i))
            return (out.logits, *present)

    return KVCacheLM(model).eval()


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Inside the block every config of ``model`` asks for eager attention (traceable, and what the parity check
    compares with); the previous implementation is restored afterwards."""
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    old = {k: getattr(c, "_attn_implementation", None) for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            with contextlib.suppress(Exception):
                c._attn_implementation = old[k]


def _broadcast_sdpa_mask(batch_size, cache_position, kv_length, kv_offset=0, mask_function=None, attention_mask=None,
                         local_size=None, allow_is_causal_skip=True, **kwargs):
    """transformers 4.x's boolean ``sdpa_mask`` (True: attend), built by broadcasting the mask function over
    (batch, head, query, key) index grids instead of ``torch.vmap``; never skipped (the graph must hold it)."""
    import torch
    from transformers import masking_utils as mu

    mask_function = mask_function or mu.causal_mask_function
    padding_mask = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if padding_mask is not None:
        mask_function = mu.and_masks(mask_function, mu.padding_mask_function(padding_mask))
    dev = cache_position.device
    b = torch.arange(batch_size, device=dev)[:, None, None, None]
    h = torch.arange(1, device=dev)[None, :, None, None]
    q = cache_position[None, None, :, None]
    kv = (torch.arange(kv_length, device=dev) + kv_offset)[None, None, None, :]
    return mask_function(b, h, q, kv).expand(batch_size, -1, cache_position.shape[0], kv_length)


def _broadcast_eager_mask(*args, dtype=None, **kwargs):
    """transformers 4.x's float ``eager_mask`` (0 where attended, the dtype's minimum elsewhere) from
    :func:`_broadcast_sdpa_mask`."""
    import torch

    dtype = dtype or torch.float32
    kwargs.pop("allow_is_causal_skip", None)
    mask = _broadcast_sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
    return (~mask).to(dtype) * torch.finfo(dtype).min


@contextlib.contextmanager
def traceable_masks() -> Iterator[None]:
    """transformers 4.53 - 4.x build attention masks with ``torch.vmap``, which the TorchScript tracer cannot follow;
    inside the block their ``eager`` and ``sdpa`` mask functions are broadcast versions computing the same masks.
    transformers 5 builds them without vmap already (its ``sdpa_mask`` takes ``use_vmap``, default off): left as is."""
    import inspect

    try:
        from transformers import masking_utils as mu
    except ImportError:
        yield
        return
    registry = getattr(mu, "ALL_MASK_ATTENTION_FUNCTIONS", None)
    if registry is None or not hasattr(mu, "_vmap_for_bhqkv") or \
            "use_vmap" in inspect.signature(mu.sdpa_mask).parameters:
        yield
        return
    old = {k: registry[k] for k in ("eager", "sdpa")}
    registry.register("eager", _broadcast_eager_mask)
    registry.register("sdpa", _broadcast_sdpa_mask)
    try:
        yield
    finally:
        for k, fn in old.items():
            registry.register(k, fn)


def _example_inputs(model: Any, position_ids: bool) -> tuple[Any, ...]:
    """Example tensors for the trace: a short prefill through the model gives every layer's KV shape."""
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    vocab = int(cfg.vocab_size)
    with torch.no_grad():
        probe = model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=True, return_dict=True)
    n_layers = int(cfg.num_hidden_layers)
    past = []
    for i in range(n_layers):
        for t in cache_tensors(probe.past_key_values, i):
            shape = (TRACE_BATCH, int(t.shape[1]), TRACE_PAST, int(t.shape[3]))
            past.append(torch.randn(shape, generator=g, dtype=t.dtype))
    del probe
    total = TRACE_PAST + TRACE_SEQUENCE
    ids = torch.randint(0, vocab, (TRACE_BATCH, TRACE_SEQUENCE), generator=g)
    mask = torch.ones(TRACE_BATCH, total, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, TRACE_PAST:]
    return (ids, mask, *([pos] if position_ids else []), *past)


def export_torch_onnx(model: Any, onnx_path: str | os.PathLike, *, opset: int | None = None) -> dict[str, Any]:
    """Trace ``model`` (a causal LM of :mod:`compressor.modeling.architectures`, float32 on the CPU) into ``onnx_path``.

    A graph over 2 GiB keeps its weights in one ``<name>_data`` file beside it (as optimum writes it).

    Returns:
        ``{"exporter": "torch", "method", "opset", "position_ids", "trace_shapes"}`` for the export report.

    Raises:
        ExportError: the tracer or the ONNX conversion failed.
    """
    import torch

    onnx_path = Path(onnx_path)
    opset = int(opset) if opset is not None else DEFAULT_OPSET
    n_layers = int(model.config.num_hidden_layers)
    with_pos = has_position_ids(model.config)
    inputs, outputs = io_names(n_layers, with_pos)
    scratch = onnx_path.parent / ".torch_onnx_export"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with eager_attention(model), traceable_masks(), torch.no_grad(), quiet_onnx_export():
            args = _example_inputs(model, with_pos)
            torch.onnx.export(kv_cache_module(model, n_layers, with_pos), args, str(scratch / onnx_path.name),
                              input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes(inputs, outputs),
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        _move_graph(scratch, onnx_path)
    except ExportError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError):
            raise  # disk faults: the caller's atomic output names the path and the space needed
        raise ExportError(f"ONNX export (torch.onnx.export, TorchScript tracer, opset {opset}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"exporter": "torch", "method": "torch.onnx.export(dynamo=False), TorchScript tracer", "opset": opset,
            "position_ids": with_pos, "trace_shapes": {"batch": TRACE_BATCH, "sequence": TRACE_SEQUENCE,
                                                       "past": TRACE_PAST}}


def _move_graph(scratch: Path, onnx_path: Path) -> None:
    """Move the exported graph from ``scratch`` to ``onnx_path``; a large graph's weights, which the TorchScript
    exporter writes as one file per tensor, become one ``<name>_data`` file."""
    written = [p for p in scratch.iterdir() if p.is_file()]
    graph = scratch / onnx_path.name
    if not graph.is_file():
        raise ExportError(f"torch.onnx.export wrote no {onnx_path.name} (files: {sorted(p.name for p in written)})")
    if written == [graph]:
        os.replace(graph, onnx_path)
        return
    import onnx

    proto = onnx.load(str(graph), load_external_data=True)
    onnx.save_model(proto, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{onnx_path.name}_data", size_threshold=1024)
