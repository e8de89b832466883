#!/usr/bin/env bash
# GPU check (issue #14, item 4): one prepared script for a lent device machine, ~10 minutes in all.
#
# Measures, each step under its own time limit and each written to $OUT (default benchmarks/results/gpu):
#   0. env.json        : python, torch / CUDA / GPU name, which of our dependencies import (nothing else runs
#                        when torch has no CUDA: the file says what is missing)
#   1. prune-bf16      : `compress prune smollm2-135m --ratio 0.5 --dtype bfloat16` on CUDA, short budget
#                        (40 steps), its compression_report.json (wall time, peak memory, perplexity)
#   2. prune-8bit      : the same with `--base-bits 8` (LoRAPrune-8bit; needs bitsandbytes with CUDA)
#   3. resources.json  : benchmarks/resources.py, LoRA-guided vs vanilla Taylor peak memory and step time on
#                        CUDA (where the paper's 0.47x memory should show; on CPU activations dominate)
#   4. bench-cuda      : `compress export --format onnx` of step 1's model and `compress bench --provider cuda`
#                        vs the dense export (needs onnxruntime-gpu)
#   summary.json       : rc and seconds of every step.
# Usage (device tool):  bash benchmarks/gpu_check.sh          (writes under $OUT when set)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
declare -A RC SECS

step() {  # step NAME LIMIT_S CMD...
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  RC[$name]=$?; SECS[$name]=$(( $(date +%s) - t0 ))
  echo "   rc=${RC[$name]} ${SECS[$name]}s (log: $OUT/$name.log)"; tail -n 3 "$OUT/$name.log"
}

"$PY" - "$OUT/env.json" <<'EOF'
import importlib, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("torch", "transformers", "peft", "torch_pruning", "bitsandbytes", "onnxruntime", "optimum", "click"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "?")
    except Exception as e:  # noqa: BLE001 - the point is to record what is missing
        info[mod] = f"missing: {type(e).__name__}: {e}"[:200]
try:
    import torch
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    try:
        import onnxruntime as ort
        info["ort_providers"] = ort.get_available_providers()
    except Exception:
        pass
except Exception:
    info["cuda"] = False
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
sys.exit(0 if info["cuda"] else 3)
EOF
if [ $? -ne 0 ]; then
  echo "no CUDA-enabled torch here: nothing else runs (see $OUT/env.json)"; exit 0
fi

CLI=("$PY" -m compressor.cli)
step prune-bf16 240 "${CLI[@]}" prune smollm2-135m --ratio 0.5 --steps 40 --dtype bfloat16 --eval-windows 4 \
  --out "$OUT/smollm2-50-bf16" --force
step prune-8bit 200 "${CLI[@]}" prune smollm2-135m --ratio 0.5 --steps 40 --base-bits 8 --no-compensate \
  --eval-windows 4 --out "$OUT/smollm2-50-8bit" --force
step resources 120 "$PY" benchmarks/resources.py --steps 4
if [ -d "$OUT/smollm2-50-bf16" ]; then
  step export-pruned 120 "${CLI[@]}" export "$OUT/smollm2-50-bf16" --format onnx --out "$OUT/onnx-50" --force
  step export-dense 120 "${CLI[@]}" export smollm2-135m --format onnx --out "$OUT/onnx-dense" --force
  step bench-cuda 120 "${CLI[@]}" bench "$OUT/onnx-50" --baseline "$OUT/onnx-dense" --provider cuda --runs 10 \
    --out "$OUT/bench-cuda"
fi
cp -f benchmarks/results/resources.json "$OUT/resources.json" 2>/dev/null || true

"$PY" - "$OUT/summary.json" <<EOF
import json, sys
rc = {$(for k in "${!RC[@]}"; do printf '"%s": [%s, %s], ' "$k" "${RC[$k]}" "${SECS[$k]}"; done)}
json.dump({k: {"rc": v[0], "seconds": v[1]} for k, v in rc.items()}, open(sys.argv[1], "w"), indent=1)
print(json.dumps(rc))
EOF
