"""compressor.core.optional: a missing optional package is named with the extra that installs it."""
from __future__ import annotations

import sys

import pytest

from compressor.core.errors import DependencyMissingError
from compressor.core.optional import install_line, require


def test_a_missing_optional_package_names_the_extra(monkeypatch):
    for name in ("onnxruntime", "onnxruntime.quantization"):  # import -> ImportError, even if imported before
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DependencyMissingError, match=r'benchmarking needs .*onnxruntime.*pip install "lorapress\[onnx\]"'):
        require("onnxruntime.quantization", "benchmarking")
    assert install_line("lm_eval.tasks") == 'pip install "lorapress[eval]"'
    assert install_line("yaml") == "pip install pyyaml"
