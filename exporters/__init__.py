"""Export pruned LLaMA-family models (ONNX with KV cache, int8 ONNX, plain safetensors) and benchmark them.

Public API:

* :func:`export_onnx` -> :class:`ExportResult`: ONNX decoder with KV cache, validated against PyTorch.
* :func:`export_safetensors` -> :class:`ExportResult`: plain Hugging Face folder (e.g. from a GGUF file).
* :func:`export_gguf` -> :class:`ExportResult`: a GGUF file for llama.cpp, validated in llama.cpp.
* :func:`bench` -> :class:`BenchReport`: ONNX Runtime latency / memory / FLOPs, optionally vs a baseline.

Importing this package is cheap: torch, transformers, optimum and onnxruntime are imported when used.

Example:
    >>> from exporters import export_onnx, bench                         # doctest: +SKIP
    >>> export_onnx("pruned_hf", "pruned_onnx")                          # doctest: +SKIP
    >>> print(bench("pruned_onnx", baseline_dir="dense_onnx").table())   # doctest: +SKIP
"""
from exporters.gguf.export import export_gguf
from exporters.measure.ort import BenchReport, ModelBench, bench
from exporters.onnx.export import ExportResult, export_onnx
from exporters.safetensors import export_safetensors

__all__ = ["BenchReport", "ExportResult", "ModelBench", "bench", "export_gguf", "export_onnx", "export_safetensors"]
