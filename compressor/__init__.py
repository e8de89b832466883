"""lorapress: structured LoRAPrune compression for LLaMA-family causal LMs.

Public API::

    from compressor import PruneConfig, prune, load_model, merge_and_slice, discover_groups
    from compressor import Architecture, get_architecture, register_architecture   # the per-model-type table
"""
from __future__ import annotations

import logging as _logging

from compressor.algorithm.config import PruneConfig
from compressor.core.errors import (
    CalibrationError,
    CompressError,
    ConfigError,
    DiskWriteError,
    GroupDiscoveryError,
    ModelLoadError,
    NonFiniteError,
    OutputExistsError,
    OutputLockedError,
    ResumeError,
    UnsupportedArchitectureError,
)
from compressor.core.quiet import drop_messages as _drop_messages
from compressor.core.quiet import install_mistral_regex_filter as _install_mistral_regex_filter
from compressor.modeling.architectures import (
    Architecture,
    Projection,
    get_architecture,
    register_architecture,
)

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional 4-bit kernel package is missing;
# we never use 4-bit CPU kernels, so keep that line out of every command's output.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)


# transformers prints a paragraph on every tokenizer built from a GGUF file (every built-in model) about the
# `legacy` flag of LlamaTokenizer, which says itself it can be ignored for GGUF tokenizers; only that message
# is dropped, every other warning of those loggers stays.
for _name in ("transformers.models.llama.tokenization_llama_fast", "transformers.models.llama.tokenization_llama"):
    _drop_messages(_name, "You are using the default legacy behaviour")

# transformers 5 reads the config of a per-layer-widths folder of ours (model_type lorapress_*, see
# compressor.modeling.perlayer) without running its code as a plain PretrainedConfig when it loads the folder's tokenizer, and
# says the model types differ; only that message, for those model types, is dropped.
_drop_messages("transformers.configuration_utils", "You are using a model of type `lorapress_")

# transformers 5's GGUF loader warns that packed GGUF weights compute fastest in float32 when a run holds its base in
# bfloat16; lorapress loads GGUF weights dequantized (plain Linear layers), so the advice does not apply.
_drop_messages("transformers.quantizers.quantizer_gguf", "Loading a GGUF checkpoint with its weights packed")

# transformers 4.57.3+ warns of a broken Mistral tokenizer regex on every saved folder with a >100k vocabulary
# (every Qwen / Gemma output); dropped only where the folder's model type is not a Mistral one.
_install_mistral_regex_filter()

__all__ = [
    "PruneConfig", "PruneResult", "prune", "load_model", "discover_groups", "merge_and_slice", "evaluate", "perplexity", "EvalReport",
    "save_model_folder", "CompressError", "ConfigError", "ModelLoadError", "UnsupportedArchitectureError",
    "GroupDiscoveryError", "CalibrationError", "OutputExistsError", "NonFiniteError", "ResumeError",
    "OutputLockedError", "DiskWriteError",
    "Architecture", "Projection", "get_architecture", "register_architecture",
]


def __getattr__(name: str):
    # torch-heavy parts are imported lazily so `import compressor` stays cheap
    if name in ("prune", "PruneResult"):
        import importlib

        return getattr(importlib.import_module("compressor.algorithm.api"), name)
    if name in ("save_plan", "load_plan"):
        import importlib

        return getattr(importlib.import_module("compressor.job.checkpoint"), name)
    if name == "load_model":
        from compressor.modeling.loading import load_model

        return load_model
    if name == "discover_groups":
        from compressor.algorithm.groups import discover_groups

        return discover_groups
    if name == "merge_and_slice":
        from compressor.algorithm.merge import merge_and_slice

        return merge_and_slice
    if name == "save_model_folder":
        from compressor.modeling.save import save_model_folder

        return save_model_folder
    if name in ("evaluate", "perplexity", "EvalReport"):
        import importlib

        return getattr(importlib.import_module("compressor.evaluation"), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
