"""Resolve and load models: built-in names, local HF folders, ``.gguf`` files, or hub ids.

Supported architectures are listed in :data:`SUPPORTED_MODEL_TYPES`; others get a clear
:class:`UnsupportedArchitectureError` before any work starts.

Folders with per-layer widths written by this project (``model_type`` ``lorapress_<type>``, see
:mod:`compressor.modeling.perlayer`) hold remote code; they are loaded with this package's own copy of those classes,
so no code from the folder runs and no ``trust_remote_code`` is needed. Other remote code is never run.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.core.errors import ModelLoadError, UnsupportedArchitectureError
from compressor.modeling.architectures import get_architecture, supported
from compressor.modeling.held import held_class, hold_projections, source_dtype
from compressor.modeling.safety import (
    PICKLE_WEIGHT_SUFFIXES,
    check_gguf,
    check_no_remote_code,
    check_weight_files,
    remote_code_hint,
)
from compressor.modeling.sizes import is_per_layer, stock_model_type

#: model_type -> model class: a snapshot, at import, of the table in :mod:`compressor.modeling.architectures` (which
#: :func:`check_architecture` reads). The pruning code reads every size from the config.
SUPPORTED_MODEL_TYPES = supported()

#: files of which a model folder needs at least one for AutoTokenizer to load its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")

#: built-in model names -> asset name (see :mod:`compressor.core.assets`).
BUILTIN_MODELS = {"smollm2-135m": "smollm2-135m", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b", "gemma3-270m": "gemma3-270m",
                  "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b"}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from: ``kind`` is ``builtin``, ``folder``, ``gguf`` or ``hub``."""

    spec: str
    kind: str
    path: str
    gguf_file: str | None = None

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(spec: str | os.PathLike | None, allow_pickle: bool = False,
                  trust_remote_code: bool = False) -> ModelSource:
    """Turn a user's model argument into a :class:`ModelSource` without loading weights.

    Raises:
        ModelLoadError: the path does not exist, is not a model folder, only holds pickle weights and
            ``allow_pickle`` is False, or asks to run its own code (``auto_map``) and ``trust_remote_code``
            is False.
    """
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    if spec in BUILTIN_MODELS:
        from compressor.core.assets import fetch_asset

        gguf = fetch_asset(BUILTIN_MODELS[spec])
        return ModelSource(spec, "builtin", str(gguf.parent), gguf.name)
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelLoadError(
                f"model path {spec!r} is a file but not a .gguf file; give a Hugging Face model folder, "
                f"a .gguf file, or a built-in name ({', '.join(BUILTIN_MODELS)})"
            )
        check_gguf(p)
        return ModelSource(spec, "gguf", str(p.parent), p.name)
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise ModelLoadError(f"model folder {spec!r} is not readable")
        if (p / "config.json").is_file():
            files = [f.name for f in p.iterdir()]
            has_safe = any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files)
            has_pickle = any(f.endswith(PICKLE_WEIGHT_SUFFIXES) for f in files)
            if not has_safe and has_pickle and not allow_pickle:
                raise ModelLoadError(
                    f"model folder {spec!r} only has pickle weights (e.g. pytorch_model.bin), which can run "
                    f"arbitrary code when loaded; convert them to safetensors or pass --allow-pickle"
                )
            if not has_safe and not has_pickle:
                raise ModelLoadError(f"model folder {spec!r} has a config.json but no weight files (*.safetensors)")
            if not trust_remote_code:
                check_no_remote_code(p, spec)
            return ModelSource(spec, "folder", str(p))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            check_gguf(ggufs[0])
            return ModelSource(spec, "gguf", str(p), ggufs[0].name)
        raise ModelLoadError(
            f"model folder {spec!r} has no config.json" + (" and several .gguf files" if ggufs else "")
            + "; give a Hugging Face model folder, a .gguf file, or a built-in name "
            f"({', '.join(BUILTIN_MODELS)})"
        )
    looks_like_hub = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and " " not in spec
    if looks_like_hub and p.parent.is_dir():
        # 'models/llama' where ./models exists is a mistyped local path, not a hub id: fail now instead of
        # after the hub's network retries
        raise ModelLoadError(
            f"model folder {spec!r} not found: the folder {str(p.parent)!r} exists but has no {p.name!r}; give an "
            f"existing model folder or .gguf file (a hub id 'org/name' is only tried when no local folder 'org' exists)"
        )
    if looks_like_hub:
        return ModelSource(spec, "hub", spec)
    raise ModelLoadError(
        f"model {spec!r} not found: not a built-in name ({', '.join(BUILTIN_MODELS)}), not an existing "
        f"folder or .gguf file, and not a hub id of the form 'org/name'"
    )


def _per_layer_config_class(source: ModelSource):
    """The in-package config class of a local per-layer-widths folder, or None for any other source."""
    import json


    path = Path(source.path) / "config.json"
    if source.kind != "folder" or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of model {source.spec!r}: {exc}") from exc
    if not isinstance(d, dict) or not is_per_layer(d):
        return None
    from compressor.modeling.remote_code.configuration_lorapress import CONFIGS

    cls = CONFIGS.get(stock_model_type(d) or "")
    if cls is None or cls.model_type != d.get("model_type"):
        raise UnsupportedArchitectureError(
            f"{source.spec!r} has model_type {d.get('model_type')!r}, which this version of lorapress does not know; "
            f"per-layer model types: {', '.join(c.model_type for c in CONFIGS.values())}")
    return cls


def load_config(source: ModelSource, *, trust_remote_code: bool = False):
    """Load and check the config of ``source``; raises for unsupported architectures."""
    from transformers import AutoConfig

    per_layer = _per_layer_config_class(source)
    try:
        # a per-layer-widths folder of ours is built from the in-package class (its own copy is never run)
        cfg = (per_layer.from_pretrained(source.path) if per_layer is not None
               else AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code,
                                               **source.load_kwargs()))
    except Exception as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(f"model {source.spec!r} needs its own Python code to load (auto_map); it is only "
                                 f"run with --trust-remote-code (trust_remote_code=True)") from exc
        if source.kind == "hub":
            raise ModelLoadError(f"model {source.spec!r} is not a local file or folder, and reading it as a Hugging "
                                 f"Face hub id failed: {exc}") from exc
        raise ModelLoadError(f"cannot read the config of model {source.spec!r}: {exc}") from exc
    check_architecture(cfg, source.spec)
    return cfg


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is a folder holding at least one ``*.onnx`` file (an exported model)."""
    p = Path(folder).expanduser()
    return p.is_dir() and any(p.glob("*.onnx"))


def check_architecture(cfg, spec: str = "model") -> None:
    """Raise :class:`UnsupportedArchitectureError` unless ``cfg``'s model type is in
    :mod:`compressor.modeling.architectures` (the message lists the supported ones); a per-layer-widths
    ``lorapress_<type>`` counts as its stock type."""
    get_architecture(cfg, spec)


def load_model(spec: str | os.PathLike | ModelSource | None = None, *, dtype: str = "float32",
               base_bits: int | None = None, allow_pickle: bool = False, attn_implementation: str = "eager",
               trust_remote_code: bool = False, linear_dtype: str | None = None, device: Any = None,
               config: Any = None):
    """Load a causal LM and its tokenizer.

    Args:
        spec: built-in name (default ``smollm2-135m``; see :data:`BUILTIN_MODELS`), HF folder, ``.gguf`` file, or hub id;
            or the :class:`ModelSource` :func:`resolve_model` made of one.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        base_bits: ``8`` or ``4`` to load the linear weights quantized with bitsandbytes, else None.
        allow_pickle: allow ``pytorch_model.bin``-style weights (they can execute code when loaded).
        attn_implementation: attention kernel; ``eager`` is needed for dependency tracing.
        trust_remote_code: allow a folder's own Python code (``auto_map``) to run (default False: such a
            folder is refused with :class:`ModelLoadError`; see :func:`check_no_remote_code`).
        linear_dtype: ``bfloat16`` loads the linear layers in bfloat16 and the embeddings, LM head and norms in
            float32 (``dtype``): the frozen base of a run under bfloat16 autocast, held once.
        device: load straight onto this device (e.g. ``cuda:0``; default: the CPU).
        config: the model's config as :func:`load_config` read it (a copy is used), when the caller has it.

    Returns:
        ``(model, tokenizer, source)``. GGUF weights are dequantized and ``quantization_config`` is
        removed so the model saves as a plain safetensors checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else \
        resolve_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    cfg = copy.deepcopy(config) if config is not None else load_config(source, trust_remote_code=trust_remote_code)
    if source.kind == "folder":
        check_weight_files(source, cfg)
    if source.kind == "folder" and not any((Path(source.path) / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {source.spec!r} has no tokenizer ({', '.join(TOKENIZER_FILES)} are all "
                             f"missing); save it next to the weights with tokenizer.save_pretrained(folder)")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        from compressor.core.errors import ConfigError

        raise ConfigError(f"dtype {dtype!r} is not valid; use float32, bfloat16 or float16")
    kwargs: dict[str, Any] = dict(source.load_kwargs(), dtype=torch_dtype, attn_implementation=attn_implementation,
                                  trust_remote_code=trust_remote_code)
    if base_bits is not None:
        from transformers import BitsAndBytesConfig

        from compressor.core.optional import require

        if base_bits in (8, 4):
            require("bitsandbytes", f"--base-bits {base_bits}")
        if base_bits == 8:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
        elif base_bits == 4:  # NF4 with double quantization (QLoRA); products in bfloat16 on a GPU, float32 on a CPU
            on_gpu = device is not None and torch.device(device).type == "cuda"
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if on_gpu else torch.float32, llm_int8_skip_modules=["lm_head"])
        else:
            from compressor.core.errors import ConfigError

            raise ConfigError(f"base_bits {base_bits!r} is not valid; use 8, 4 or None")
        kwargs["dtype"] = torch.float32
    if linear_dtype is not None and base_bits is None:
        if linear_dtype != "bfloat16" or dtype != "float32":
            from compressor.core.errors import ConfigError

            raise ConfigError(f"linear_dtype {linear_dtype!r} with dtype {dtype!r} is not valid; use "
                              f"linear_dtype='bfloat16' with dtype='float32', or linear_dtype=None")
        # a GGUF file is dequantized whole in float32 anyway, and transformers would dequantize the float32-kept
        # modules through bfloat16: load it in float32 and hold the projections afterwards (below)
        if not source.gguf_file:
            kwargs["dtype"] = torch.bfloat16
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": str(torch.device(device))}
    if not allow_pickle:
        kwargs["use_safetensors"] = None if source.kind == "gguf" or source.kind == "builtin" else True
    loader: Any = AutoModelForCausalLM

    if is_per_layer(cfg):  # our own per-layer class, not the folder's copy of it
        from compressor.modeling.perlayer import per_layer_model_class

        loader = per_layer_model_class(cfg)
        kwargs["config"] = cfg
    if kwargs["dtype"] == torch.bfloat16 and linear_dtype is not None:
        if loader is AutoModelForCausalLM:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

            loader = MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]
        loader = held_class(loader, cfg)
    try:
        model: Any = loader.from_pretrained(source.path, **kwargs)
    except Exception as exc:
        hint = ("; its weight files look corrupt or incomplete (re-download or re-save the model)"
                if "safetensor" in type(exc).__name__.lower() or isinstance(exc, (EOFError, OSError))
                else remote_code_hint(exc))
        raise ModelLoadError(f"cannot load model {source.spec!r}: {type(exc).__name__}: {exc}{hint}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code,
                                                  **source.load_kwargs())
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of model {source.spec!r}: {exc}{remote_code_hint(exc)}") from exc
    if source.gguf_file:  # transformers' Gemma GGUF tokenizer splits words apart: tokenize as llama.cpp does
        from compressor.modeling.gguf_tokenizer import fix_gguf_tokenizer

        fix_gguf_tokenizer(tokenizer, Path(source.path) / source.gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if source.gguf_file and base_bits is None:
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config._name_or_path = source.spec
    model.config.use_cache = True
    if linear_dtype is not None and base_bits is None:
        hold_projections(model, torch.bfloat16)  # a GGUF model, and whatever a folder load left in another dtype
    if linear_dtype is not None or base_bits is not None:
        model.lorapress_source_dtype = source_dtype(cfg)  # what the checkpoint holds, not the held copy
    return model, tokenizer, source


