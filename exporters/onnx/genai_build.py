"""Child-process entry that runs onnxruntime-genai's model builder on a saved Hugging Face folder.

Run by :func:`exporters.onnx.genai.build_genai_graph` as ``python genai_build.py SRC OUT PRECISION CACHE [KEY=VALUE
...]`` (by file path, so it imports nothing from this project and cannot pick up another checkout's copy).
It is a separate process because the builder appends its own folder to ``sys.path`` (top-level modules
named ``builders`` and ``quantization``) and needs the two adjustments below, neither of which belongs in
the exporting process.

Compatibility with the transformers this project pins (4.57), both checked against onnxruntime-genai 0.18:

* ``builders/base.py`` imports ``Qwen3_5ForConditionalGeneration`` and ``Qwen3_5MoeForConditionalGeneration``
  from ``transformers`` at module level (they exist from transformers 5); they are only used for Qwen3.5
  vision models. When missing, placeholders that raise on use are set so the import succeeds.
* the builder reads RoPE settings from ``config.rope_parameters`` (transformers 5) or, failing that, iterates
  ``config.rope_scaling``, which transformers 4.57 sets to None for plain RoPE. The builder's in-memory copy
  of the config then gets ``rope_scaling = {"rope_type": "default"}``, the meaning of None. Any other RoPE
  type is passed through (the builder supports default, linear and yarn, and raises for the rest).

Exit status 0 on success; on failure the builder's traceback is on stderr, which the parent reports.
"""
from __future__ import annotations

import os
import sys

# Run by path, Python puts this folder first on sys.path, where exporters/safetensors.py would shadow the
# safetensors package: drop it before anything is imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _shim_transformers() -> None:
    import transformers

    class _NotInThisTransformers:
        def __init__(self, *args, **kwargs):
            raise ImportError(f"{type(self).__name__} needs a newer transformers than {transformers.__version__}")

    for name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
        if not hasattr(transformers, name):
            setattr(transformers, name, type(name, (_NotInThisTransformers,), {}))


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: genai_build.py SRC OUT PRECISION CACHE [KEY=VALUE ...]", file=sys.stderr)
        return 2
    src, out, precision, cache, *extra = argv
    _shim_transformers()
    from onnxruntime_genai.models import builder

    options = builder.parse_extra_options(None, src, out, precision, "cpu", cache, extra)
    config = options["hf_details"]["hf_config"]
    if getattr(config, "rope_scaling", None) is None and not isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_scaling = {"rope_type": "default"}
    builder.create_model(None, src, out, precision, "cpu", cache, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
