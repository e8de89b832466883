"""Import an optional dependency, or fail with a :class:`DependencyMissingError` naming what to install.

Example:
    >>> ort = require("onnxruntime", "benchmarking", extra="onnxruntime")   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from types import ModuleType

from compressor.core.errors import DependencyMissingError

#: top-level import name -> the pip requirement that provides it (when the two differ)
PIP_NAMES = {"optimum": "optimum[onnxruntime]", "sklearn": "scikit-learn", "yaml": "pyyaml"}
#: top-level import name -> the lorapress extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "onnxruntime_genai": "genai",
          "onnx_ir": "genai", "xllamacpp": "gguf", "lm_eval": "eval", "bitsandbytes": "quant",
          "matplotlib": "plots", "optimum": "optimum"}


def install_line(module: str) -> str:
    """The pip command that provides top-level ``module``: ``pip install "lorapress[onnx]"`` for a module an extra
    installs, else ``pip install <requirement>``."""
    top = module.split(".")[0]
    if top in EXTRAS:
        return f'pip install "lorapress[{EXTRAS[top]}]"'
    return f"pip install {PIP_NAMES.get(top, top)}"


def require(module: str, what: str, *, extra: str | None = None, error: type[Exception] = DependencyMissingError,
            hint: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or raise ``error`` saying ``what`` needs it and how to install it.

    Args:
        module: dotted module name (``"onnxruntime.quantization"``).
        what: what needs it, for the message (``"ONNX export"``, ``"--int8"``).
        extra: what to name after ``pip install`` (default: the lorapress extra that installs the module, see
            :data:`EXTRAS`, else the package, see :data:`PIP_NAMES`).
        error: the exception class (a :class:`DependencyMissingError` subclass, e.g. calibration's).
        hint: a sentence appended to the message (alternatives to installing).

    Raises:
        ``error`` (default :class:`DependencyMissingError`) chained to the ImportError.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        line = f"pip install {extra}" if extra else install_line(module)
        raise error(
            f"{what} needs the Python package {top!r}, which cannot be imported ({exc}); {line}"
            + (f"; {hint}" if hint else "")
        ) from exc
