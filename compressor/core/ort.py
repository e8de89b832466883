"""The one factory of ONNX Runtime inference sessions (validation, benchmark, memory probe)."""
from __future__ import annotations

import os
from typing import Any

from compressor.core.errors import ConfigError, DependencyMissingError, ModelLoadError
from compressor.core.optional import require

#: ``--provider`` name -> ONNX Runtime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def import_ort(what: str = "ONNX Runtime") -> Any:
    """``onnxruntime``, or a :class:`DependencyMissingError` that says how to install it."""
    return require("onnxruntime", what, hint='pip install "lorapress[gpu]" for --provider cuda')


def providers_for(ort: Any, provider: str) -> list[str]:
    """Execution providers for ``provider`` (``cpu``, ``cuda``; CUDA falls back to CPU for unsupported ops).

    Raises:
        ConfigError: unknown provider name.
        DependencyMissingError: this onnxruntime build lacks the provider.
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"provider {provider!r} is not valid; use one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise DependencyMissingError(
            f"--device {provider} needs {name}, which this onnxruntime {ort.__version__} lacks "
            f"(available: {', '.join(available)}); install onnxruntime-gpu and a matching CUDA/cuDNN"
            if provider == "cuda" else f"{name} is not available in this onnxruntime (available: {available})"
        )
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


def ort_session(path: str | os.PathLike, *, provider: str = "cpu", threads: int | None = None,
                spinning: bool = True, what: str = "ONNX Runtime",
                load_error: type[Exception] = ModelLoadError) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path``: all graph optimizations, warnings off.

    Args:
        path: the ``.onnx`` file.
        provider: ``cpu`` or ``cuda`` (see :func:`providers_for`).
        threads: intra-op threads (then one inter-op thread); None leaves ORT's defaults.
        spinning: let idle intra-op threads spin-wait (ORT's default). Off for timing two sessions alternately,
            where one session's spinning threads steal the cores of the other (measured on 2 cores: decode 3x
            slower).
        what: what needs onnxruntime, for the missing-dependency message.
        load_error: exception raised when ORT cannot load the graph (ModelLoadError, or ExportError while
            validating an export).

    Raises:
        DependencyMissingError: no onnxruntime, or no usable CUDA provider for ``provider="cuda"``.
        ConfigError: unknown provider.
        ``load_error``: ONNX Runtime cannot load the graph.
    """
    ort = import_ort(what)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers_for(ort, provider)
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        raise load_error(f"ONNX Runtime cannot load {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if provider == "cuda" and PROVIDERS["cuda"] not in sess.get_providers():
        raise DependencyMissingError(
            f"onnxruntime could not start CUDAExecutionProvider for {str(path)!r} (session providers: "
            f"{sess.get_providers()}); check that CUDA and cuDNN libraries matching onnxruntime-gpu are installed"
        )
    return sess
