"""``compress export --format onnx --optimize``: ONNX Runtime's transformer optimizer on optimum's graph.

:func:`optimize_onnx_graph` runs ``onnxruntime.transformers.optimizer.optimize_model`` (model type ``gpt2``,
the decoder-with-past optimizer class that ORT also uses for its ``qwen3`` type; python fusions only,
``opt_level=0``, so the saved graph holds no CPU-specific ORT rewrites and a session still applies
``ORT_ENABLE_ALL`` on load) and writes the fused graph over ``model.onnx``. The folder stays what
``--format onnx`` writes: same inputs and outputs, loadable with ``ORTModelForCausalLM``.

What it fuses on optimum's LLaMA-family graph (onnxruntime 1.32, measured on tiny LLaMAs and SmolLM2):
``RotaryEmbedding`` (2 per layer: q and k) and ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm);
the attention itself is *not* fused (the optimizer's ``FusionRotaryAttention`` matches the graphs of ORT's
own LLaMA exporter, not optimum's), so each layer keeps its MatMul / Softmax attention. Nodes a CPU session
runs for a 2-layer tiny LLaMA: 264 -> 194 (onnxruntime-genai's graph: 29, see :mod:`exporters.genai`).

``num_heads`` / ``hidden_size`` given to the optimizer are the attention's: ``num_attention_heads`` and
``num_attention_heads * head_dim`` (not the model's hidden size, which differs after head pruning); they are
only used by the attention fusions, which do not fire here. Per-layer models are optimized too (the fusions
above do not depend on widths); parity decides, as for every export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.errors import ExportError
from compressor.optional import require
from compressor.sizes import model_sizes

from .graph_ops import op_counts

#: ``optimize_model`` model type used (see the module docstring)
OPTIMIZER_MODEL_TYPE = "gpt2"
#: graphs above this size are saved with external data (protobuf's 2 GiB limit)
_EXTERNAL_DATA_BYTES = 1_800_000_000


def optimize_onnx_graph(onnx_path: Path, config: Any) -> dict[str, Any]:
    """Fuse ``onnx_path`` in place with ONNX Runtime's transformer optimizer; returns what it did.

    Returns:
        ``{"optimizer", "model_type", "opt_level", "num_heads", "hidden_size", "before": op_counts,
        "after": op_counts}`` (see :func:`exporters.graph_ops.op_counts`).

    Raises:
        ExportError: the optimizer failed; ``onnx_path`` is then left as it was.
    """
    require("onnxruntime.transformers.optimizer", "--optimize")
    from onnxruntime.transformers.optimizer import optimize_model

    sizes = model_sizes(config)
    heads = sizes.heads  # the widest layer's for a per-layer model; unused by the fusions that fire
    attn_width = int(heads) * int(sizes.head_dim)
    before = op_counts(onnx_path)
    folder = onnx_path.parent
    graph_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith(onnx_path.name))
    external = graph_bytes > _EXTERNAL_DATA_BYTES
    tmp = folder / (".fused-" + onnx_path.name)
    try:
        fused = optimize_model(str(onnx_path), model_type=OPTIMIZER_MODEL_TYPE, num_heads=int(heads),
                               hidden_size=attn_width, opt_level=0, use_gpu=False)
        fused.save_model_to_file(str(tmp), use_external_data_format=external)
    except Exception as exc:
        for p in folder.glob(tmp.name + "*"):
            p.unlink()
        raise ExportError(f"ONNX Runtime's transformer optimizer failed: {type(exc).__name__}: {exc}") from exc
    del fused
    for p in folder.iterdir():
        if p.name.startswith(onnx_path.name):
            p.unlink()
    os.replace(tmp, onnx_path)
    if external:  # the graph names its data file; keep that name next to it
        for p in folder.glob(tmp.name + "*"):
            os.replace(p, folder / p.name)
    return {"optimizer": "onnxruntime.transformers.optimizer.optimize_model", "model_type": OPTIMIZER_MODEL_TYPE,
            "opt_level": 0, "num_heads": int(heads), "hidden_size": attn_width, "before": before,
            "after": op_counts(onnx_path)}
