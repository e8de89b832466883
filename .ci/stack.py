"""Print the library versions a CI job tests (and check the transformers range it is meant to test)."""
from __future__ import annotations

import argparse
import sys
from importlib import metadata

from packaging.specifiers import SpecifierSet

PACKAGES = ("torch", "transformers", "peft", "accelerate", "torch-pruning", "huggingface-hub", "optimum",
            "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-genai", "lm-eval", "xllamacpp", "bitsandbytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--expect-transformers", default="", help="a version specifier, e.g. '<4.58'")
    args = ap.parse_args()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    print("stack: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    spec = SpecifierSet(args.expect_transformers)
    if args.expect_transformers and versions["transformers"] not in spec:
        sys.exit(f"this job must test transformers {spec}, got {versions['transformers']}")


if __name__ == "__main__":
    main()
