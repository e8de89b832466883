"""``compress export --format onnx --optimize``: ONNX Runtime's transformer optimizer on the exported graph.

:func:`optimize_onnx_graph` runs ``onnxruntime.transformers.optimizer.optimize_model`` (model type ``gpt2``,
the decoder-with-past optimizer class that ORT also uses for its ``qwen3`` type; python fusions only,
``opt_level=0``, so the saved graph holds no CPU-specific ORT rewrites and a session still applies
``ORT_ENABLE_ALL`` on load) and writes the fused graph over ``model.onnx``. The folder stays what
``--format onnx`` writes: same inputs and outputs, loadable with ``ORTModelForCausalLM``.

What it fuses on optimum's LLaMA-family graph (onnxruntime 1.32, measured on tiny LLaMAs and SmolLM2):
``RotaryEmbedding`` (2 per layer: q and k) and ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm);
the attention itself is *not* fused (the optimizer's ``FusionRotaryAttention`` matches the graphs of ORT's
own LLaMA exporter, not optimum's), so each layer keeps its MatMul / Softmax attention. Nodes a CPU session
runs for a 2-layer tiny LLaMA: 264 -> 194 (onnxruntime-genai's graph: 29, see :mod:`exporters.onnx.genai`).

``num_heads`` / ``hidden_size`` given to the optimizer are the attention's: ``num_attention_heads`` and
``num_attention_heads * head_dim`` (not the model's hidden size, which differs after head pruning); they are
only used by the attention fusions, which do not fire here. Per-layer models are optimized too (the fusions
above do not depend on widths); parity decides, as for every export.

transformers 5 computes the rotary frequencies as a broadcast product, ``position_ids[..., None].float() *
inv_freq``, where 4.x traced ``(inv_freq[:, None] @ position_ids[:, None, :].float()).transpose(1, 2)``; the
optimizer's ``RotaryEmbedding`` fusion only knows the second form. :func:`rope_as_matmul` rewrites the first into
it before the optimizer runs (the same numbers: each element is one product either way).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.core.errors import ExportError
from compressor.core.optional import require
from compressor.modeling.sizes import model_sizes
from exporters.onnx.graph_ops import op_counts

#: ``optimize_model`` model type used (see the module docstring)
OPTIMIZER_MODEL_TYPE = "gpt2"
#: graphs above this size are saved with external data (protobuf's 2 GiB limit)
_EXTERNAL_DATA_BYTES = 1_800_000_000


def optimize_onnx_graph(onnx_path: Path, config: Any) -> dict[str, Any]:
    """Fuse ``onnx_path`` in place with ONNX Runtime's transformer optimizer; returns what it did.

    Returns:
        ``{"optimizer", "model_type", "opt_level", "num_heads", "hidden_size", "before": op_counts,
        "after": op_counts}`` (see :func:`exporters.onnx.graph_ops.op_counts`).

    Raises:
        ExportError: the optimizer failed; ``onnx_path`` is then left as it was.
    """
    require("onnxruntime.transformers.optimizer", "--optimize")
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    sizes = model_sizes(config)
    heads = sizes.heads  # the widest layer's for a per-layer model; unused by the fusions that fire
    attn_width = int(heads) * int(sizes.head_dim)
    before = op_counts(onnx_path)
    folder = onnx_path.parent
    graph_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(onnx_path.name))
    external = graph_bytes > _EXTERNAL_DATA_BYTES
    tmp = folder / (".fused-" + onnx_path.name)
    rope_in = folder / (".rope-" + onnx_path.name)  # beside the graph: its external data keeps its relative name
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
        rewritten = rope_as_matmul(proto)
        if rewritten:
            onnx.save_model(proto, str(rope_in))
        del proto
        fused = optimize_model(str(rope_in if rewritten else onnx_path), model_type=OPTIMIZER_MODEL_TYPE,
                               num_heads=int(heads), hidden_size=attn_width, opt_level=0, use_gpu=False)
        fused.save_model_to_file(str(tmp), use_external_data_format=external)
    except Exception as exc:
        for p in folder.glob(tmp.name + "*"):
            p.unlink()
        raise ExportError(f"ONNX Runtime's transformer optimizer failed: {type(exc).__name__}: {exc}") from exc
    finally:
        rope_in.unlink(missing_ok=True)
    del fused
    for p in folder.iterdir():
        if p.name.startswith(onnx_path.name):
            p.unlink()
    os.replace(tmp, onnx_path)
    if external:  # the graph names its data file; keep that name next to it
        for p in folder.glob(tmp.name + "*"):
            os.replace(p, folder / p.name)
    return {"optimizer": "onnxruntime.transformers.optimizer.optimize_model", "model_type": OPTIMIZER_MODEL_TYPE,
            "opt_level": 0, "num_heads": int(heads), "hidden_size": attn_width, "rope_as_matmul": rewritten,
            "before": before, "after": op_counts(onnx_path)}


def _constant(graph_inits: dict, producer: dict, name: str):
    """The value of ``name`` when it is an initializer or a ``Constant`` node's output, else None."""
    from onnx import numpy_helper

    if name in graph_inits:
        return numpy_helper.to_array(graph_inits[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def rope_as_matmul(proto) -> int:
    """Rewrite the rotary frequencies ``Mul(Cast(Unsqueeze(positions, -1)), inv_freq)`` that feed
    ``Concat(freqs, freqs)`` (transformers 5) into ``Transpose(MatMul(inv_freq[:, None], Cast(Unsqueeze(positions,
    1))))`` (what transformers 4.x traces, and what ORT's ``RotaryEmbedding`` fusion matches), in place.

    Returns:
        the number of rewritten products (one per model: the rotary tables are computed once per forward).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    done = 0
    for concat in [n for n in g.node if n.op_type == "Concat" and len(n.input) == 2 and n.input[0] == n.input[1]]:
        mul = producer.get(concat.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        for a, b in ((0, 1), (1, 0)):
            freq = _constant(inits, producer, mul.input[b])
            node = producer.get(mul.input[a])
            while node is not None and node.op_type == "Cast":
                node = producer.get(node.input[0])
            if freq is None or freq.ndim != 1 or node is None or node.op_type != "Unsqueeze" or len(node.input) < 2:
                continue
            axes = _constant(inits, producer, node.input[1])
            if axes is None or [int(x) for x in np.asarray(axes).reshape(-1)] not in ([-1], [2]):
                continue
            base = f"{mul.name or mul.output[0]}/rope_as_matmul"
            col, ax = f"{base}/inv_freq_column", f"{base}/axes"
            g.initializer.append(numpy_helper.from_array(freq.astype(np.float32).reshape(-1, 1), col))
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), ax))
            new = [helper.make_node("Unsqueeze", [node.input[0], ax], [f"{base}/positions"], name=f"{base}/Unsqueeze"),
                   helper.make_node("Cast", [f"{base}/positions"], [f"{base}/positions_float"], name=f"{base}/Cast",
                                    to=TensorProto.FLOAT),
                   helper.make_node("MatMul", [col, f"{base}/positions_float"], [f"{base}/freqs_t"],
                                    name=f"{base}/MatMul"),
                   helper.make_node("Transpose", [f"{base}/freqs_t"], [f"{base}/freqs"], name=f"{base}/Transpose",
                                    perm=[0, 2, 1])]
            at = list(g.node).index(mul)
            for i, n in enumerate(new):
                g.node.insert(at + i, n)
            concat.input[0] = concat.input[1] = f"{base}/freqs"
            _drop_unused(g, mul)
            done += 1
            break
    return done


def _drop_unused(g, node) -> None:
    """Remove ``node`` and then its producers, as long as nothing else reads their outputs."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    if any(o in used for o in node.output):
        return
    producer = {o: n for n in g.node for o in n.output}
    g.node.remove(node)
    for name in node.input:
        parent = producer.get(name)
        if parent is not None and parent in g.node:
            _drop_unused(g, parent)
