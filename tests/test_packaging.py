"""The package's dependencies: a small core with extras (pyproject.toml), version ranges that admit today's stack
(transformers 5, torch 2.11-2.15, vLLM 0.33's pins) and the floor CI tests (transformers 4.57), an install line that
names the extra when an optional package is missing, and a report that says when its picture was skipped."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from compressor.core.optional import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = {Requirement(r).name: Requirement(r) for r in PROJECT["dependencies"]}
EXTRA_REQS = PROJECT["optional-dependencies"]

#: packages a user who only prunes must not have to install
OPTIONAL = ("optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir", "onnxscript",
            "bitsandbytes", "matplotlib", "lm-eval", "xllamacpp")


def _names(reqs: list[str]) -> set[str]:
    return {Requirement(r).name for r in reqs}


def test_the_core_holds_no_optional_package():
    assert not set(CORE) & set(OPTIONAL), sorted(set(CORE) & set(OPTIONAL))
    for name in ("torch", "transformers", "peft", "accelerate", "torch-pruning", "safetensors", "click", "tqdm"):
        assert name in CORE, name


@pytest.mark.parametrize("version", ["2.11.0", "2.13.0", "2.14.0", "2.14.1", "2.15.0"])
def test_torch_range_admits_every_release_users_have(version):
    assert CORE["torch"].specifier.contains(version, prereleases=True)


@pytest.mark.parametrize("version", ["4.57.6", "5.16.1", "5.20.2", "5.23.0"])
def test_transformers_range_admits_the_floor_vllms_range_and_the_latest(version):
    assert CORE["transformers"].specifier.contains(version)


def test_the_optimum_extra_is_the_floor_stack():
    reqs = {Requirement(r).name: Requirement(r) for r in EXTRA_REQS["optimum"]}
    assert {"optimum", "optimum-onnx"} <= set(reqs)
    assert reqs["transformers"].specifier.contains("4.57.6")
    assert not reqs["transformers"].specifier.contains("5.0.0")


def test_every_extra_a_message_names_exists_and_installs_its_module():
    pip_of = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
              "onnxruntime_genai": "onnxruntime-genai", "onnx_ir": "onnx-ir", "xllamacpp": "xllamacpp",
              "lm_eval": "lm-eval", "bitsandbytes": "bitsandbytes", "matplotlib": "matplotlib", "optimum": "optimum"}
    assert set(EXTRAS) == set(pip_of)

    def closure(extra: str) -> set[str]:  # an extra's packages, following lorapress[...] references
        out: set[str] = set()
        for r in EXTRA_REQS[extra]:
            req = Requirement(r)
            if req.name == "lorapress":
                for e in req.extras:
                    out |= closure(e)
            else:
                out.add(req.name)
        return out

    for module, extra in EXTRAS.items():
        assert extra in EXTRA_REQS, extra
        assert pip_of[module] in closure(extra), (module, extra)
    # "all" and "test" install everything but the floor-only optimum extra and the CUDA builds
    assert closure("all") >= {pip_of[m] for m, e in EXTRAS.items() if e != "optimum"}
    assert "optimum" not in closure("test") and "optimum-onnx" not in closure("test")


def test_importing_the_packages_and_the_cli_pulls_no_optional_package():
    code = ("import sys, compressor, exporters, calibration, compressor.cli\n"
            f"bad = [m for m in {OPTIONAL_MODULES!r} if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


OPTIONAL_MODULES = ("optimum", "onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir", "bitsandbytes", "matplotlib",
                    "lm_eval", "xllamacpp")


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    start = readme.index("**Tests**:")
    block = readme[start:].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert "pytest" in block and block in ci.splitlines()
