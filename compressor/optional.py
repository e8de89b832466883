"""Import an optional dependency, or fail with a :class:`DependencyMissingError` naming what to install.

Example:
    >>> ort = require("onnxruntime", "benchmarking", extra="onnxruntime")   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DependencyMissingError

#: top-level import name -> the pip requirement that provides it (when the two differ)
PIP_NAMES = {"optimum": "optimum[onnxruntime]", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def require(module: str, what: str, *, extra: str | None = None, error: type[Exception] = DependencyMissingError,
            hint: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or raise ``error`` saying ``what`` needs it and how to install it.

    Args:
        module: dotted module name (``"onnxruntime.quantization"``).
        what: what needs it, for the message (``"ONNX export"``, ``"--int8"``).
        extra: the pip requirement to name (default: the top-level package, see :data:`PIP_NAMES`).
        error: the exception class (a :class:`DependencyMissingError` subclass, e.g. calibration's).
        hint: a sentence appended to the message (alternatives to installing).

    Raises:
        ``error`` (default :class:`DependencyMissingError`) chained to the ImportError.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pip_name = extra or PIP_NAMES.get(top, top)
        raise error(
            f"{what} needs the Python package {top!r}, which cannot be imported ({exc}); pip install {pip_name}"
            + (f"; {hint}" if hint else "")
        ) from exc
