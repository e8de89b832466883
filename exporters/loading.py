"""The model to export: a model spec loaded the standard way, or an already loaded model checked for export."""
from __future__ import annotations

import os

from compressor.core.errors import ConfigError, ModelLoadError


def load_for_export(model, tokenizer=None, *, require_fp32_cpu: bool = True, allow_pickle: bool = False,
                    trust_remote_code: bool = False):
    """Return ``(model, tokenizer, spec)`` from a model spec or an already loaded model.

    Args:
        model: anything :func:`compressor.modeling.loading.load_model` accepts (HF folder, ``.gguf`` file, built-in
            name) or a loaded ``PreTrainedModel``.
        tokenizer: the tokenizer to use with a loaded model (ignored for a spec, whose own tokenizer is
            loaded). May be None for a loaded model: the export then has no tokenizer files.
        require_fp32_cpu: refuse a loaded model that is not float32 on the CPU (ONNX export and its fp32
            validation need one; a spec is always loaded that way).
        allow_pickle / trust_remote_code: for a spec, as for :func:`compressor.modeling.loading.load_model` (both off
            by default: pickle weights and a folder's own code can run arbitrary code).

    Raises:
        ModelLoadError: not a model folder / unreadable model.
        UnsupportedArchitectureError: the model type is not in :mod:`compressor.modeling.architectures`.
        ConfigError: ``require_fp32_cpu`` and the loaded model is not float32 on the CPU.
    """
    from compressor.modeling.loading import check_architecture, load_model, resolve_model

    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        resolve_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)  # fast, before torch
        model, tokenizer, _ = load_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        model.eval()
        return model, tokenizer, spec
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "forward"):
        raise ModelLoadError(f"expected a model path or a transformers PreTrainedModel, got {type(model).__name__}")
    check_architecture(config, getattr(config, "_name_or_path", "model") or "model")
    import torch

    param = next(model.parameters(), None)
    if require_fp32_cpu and param is not None and (param.dtype != torch.float32 or param.device.type != "cpu"):
        raise ConfigError(f"export expects a float32 model on the CPU, got {param.dtype} on {param.device}; "
                          f"use model.float().cpu() first")
    model.eval()
    return model, tokenizer, getattr(config, "_name_or_path", "") or type(model).__name__
