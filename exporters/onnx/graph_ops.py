"""Which operators an ONNX graph holds, as stored and as ONNX Runtime runs it (after its own graph fusions).

ONNX Runtime pays a fixed cost per executed node, so the number of nodes it runs per decoder layer is what
graph fusion is meant to bring down. :func:`op_counts` reports both the stored graph's node count and op
types and, with ``session_optimized=True``, those of the graph a CPU session runs after
``ORT_ENABLE_ALL`` (written by ORT to a temporary file through ``SessionOptions.optimized_model_filepath``,
its weights to an external-data file next to it, then deleted).

Measured on a 2-layer tiny LLaMA (GQA, head_dim 16, tied embeddings), nodes ORT runs: optimum graph 264,
the same after ``--optimize`` (ONNX Runtime's transformer optimizer) 194, onnxruntime-genai's graph 29.
"""
from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from typing import Any

#: ONNX Runtime's fused operators that the fused exports aim for (counted separately in the report).
FUSED_OPS = ("GroupQueryAttention", "MultiHeadAttention", "Attention", "RotaryEmbedding",
             "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "MatMulNBits", "FusedMatMul",
             "QuickGelu")


def _counts(proto) -> dict[str, Any]:
    c = collections.Counter(n.op_type for n in proto.graph.node)
    return {"nodes": int(sum(c.values())), "op_types": dict(c.most_common()),
            "fused": {k: int(c[k]) for k in FUSED_OPS if c.get(k)}}


def op_counts(onnx_path: str | os.PathLike, *, session_optimized: bool = True) -> dict[str, Any]:
    """Node count and op types of ``onnx_path``: ``{"stored": {...}, "ort_optimized": {...}}``.

    Each part is ``{"nodes", "op_types": {op: count}, "fused": {fused op: count}}``; ``ort_optimized`` (the
    graph a CPU session runs after ``ORT_ENABLE_ALL``) is left out when ``session_optimized`` is False.
    """
    import onnx

    from compressor.core.ort import import_ort

    out = {"stored": _counts(onnx.load(str(onnx_path), load_external_data=False))}
    if not session_optimized:
        return out
    ort = import_ort("counting ONNX Runtime's fused graph")
    with tempfile.TemporaryDirectory(prefix="ort-optimized-") as d:
        dest = Path(d) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(dest)
        so.log_severity_level = 3
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        del sess
        out["ort_optimized"] = _counts(onnx.load(str(dest), load_external_data=False))
    return out


def matmulnbits_settings(proto) -> dict[str, Any]:
    """The attributes (bits, block_size, accuracy_level) of the ``MatMulNBits`` nodes of a loaded graph, and
    how many there are; several values of one attribute are listed sorted."""
    import onnx

    nodes = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    out: dict[str, Any] = {"matmulnbits_nodes": len(nodes)}
    for key in ("bits", "block_size", "accuracy_level"):
        vals = sorted({onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == key})
        out[key] = vals[0] if len(vals) == 1 else vals
    out["matmul_nodes_left_fp32"] = sum(n.op_type == "MatMul" for n in proto.graph.node)
    return out
