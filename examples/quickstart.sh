#!/usr/bin/env bash
# The main job on the built-in default model (SmolLM2-135M-Instruct, Apache-2.0, from PyPI):
# set up -> prune 50 % with LoRAPrune -> export pruned and dense to ONNX (validated) -> benchmark side by side.
# Usage: bash examples/quickstart.sh            (RATIO=0.5 OUT=runs by default; STEPS=N overrides the default budget)
# Runs in the active virtualenv if there is one (keeping its torch / transformers), else in ./.venv (made here).
set -euo pipefail
cd "$(dirname "$0")/.."
RATIO="${RATIO:-0.5}"; STEPS="${STEPS:-}"; OUT="${OUT:-runs}"
TAG="smollm2-$(python3 -c "print(int(round(float('$RATIO')*100)))")"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  # an active environment is used as it is: a torch / transformers already there are kept
  python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
  python -c "import compressor, onnxruntime, onnxscript" 2>/dev/null || pip install -q -e ".[onnx,plots]"
else
  if [ ! -x .venv/bin/compress ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q torch==2.13.0        # the CPU wheel (a plain `torch` would pull a CUDA build)
    .venv/bin/pip install -q -e ".[onnx,plots]"   # the core + ONNX export and bench + the report pictures
  fi
  . .venv/bin/activate
fi
compress prune smollm2-135m --ratio "$RATIO" ${STEPS:+--steps "$STEPS"} --out "$OUT/$TAG" --force
compress export "$OUT/$TAG" --format onnx --out "$OUT/$TAG-onnx" --force
[ -f "$OUT/dense-onnx/model.onnx" ] || compress export smollm2-135m --format onnx --out "$OUT/dense-onnx" --force
compress bench "$OUT/$TAG-onnx" --baseline "$OUT/dense-onnx" --out "$OUT/bench-$TAG" --force
