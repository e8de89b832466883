#!/usr/bin/env bash
# GPU check (issue #14, item 4): one prepared script for a lent device machine, under 10 minutes in all.
#
# Measures, each step under its own time limit, each log and report kept in $WORK (default benchmarks/results/gpu):
#   0. env.json        : python, torch / CUDA / GPU name, which of our dependencies import (nothing else runs
#                        when torch has no CUDA: the file says what is missing)
#   gpu-tests, scale   : the `gpu` tests (tests/, marker gpu); benchmarks/scale.py on Llama-3.2-1B and
#                        Llama-3.1-8B-shaped stand-ins (peak per phase, predicted vs measured, scale_cuda.json)
#   1. prune-bf16      : `compress prune MODEL --ratio 0.5 --dtype bfloat16` on CUDA, short budget (40 steps)
#   2. prune-8bit      : the same with `--base-bits 8` (LoRAPrune-8bit; needs bitsandbytes with CUDA)
#   3. prune-default   : the default command (`compress prune MODEL --ratio 0.5`, 150 steps, float32) on CUDA: the
#                        wall time of what takes ~13 min on 2 CPU cores
#   4. resources       : benchmarks/resources.py on CUDA: LoRA-guided vs vanilla Taylor vs LoRA-8bit (+ checkpointing),
#                        peak GPU memory and step time of the scoring step (where the paper's 0.47x memory should show)
#   5. bench-cuda      : ONNX export of step 1's model and `compress bench --device cuda` vs the dense export, only
#                        where onnxruntime has the CUDA provider and optimum imports (else recorded as skipped)
#   summary.json       : rc and seconds of every step (and why a step was skipped).
#
# The device machine reaches no registry and takes at most 64 MiB of files, so the caller prepares (here, see
# docs/results.md, "On a GPU"):
#   .whl/                 wheels of the pinned versions the image lacks (transformers 4.57, tokenizers, hub, peft,
#                         torch-pruning, gguf, bitsandbytes trimmed to its CUDA 13 libraries); installed to /tmp/site
#   .gpu/smollm2-shape/   `python benchmarks/standin.py shape smollm2-135m .gpu/smollm2-shape` (config + tokenizer);
#                         with STANDIN_SHAPE set, MODEL is a random-weight folder of that shape built there:
#                         timing and memory are the real model's, perplexities are NOT quality figures
#   .gpu/cache/, .gpu/data/  the calibration asset and WikiText-2 (COMPRESS_CACHE, COMPRESS_SHARED_DATA)
# Usage (device tool):  STANDIN_SHAPE=.gpu/smollm2-shape bash benchmarks/gpu_check.sh
# With $OUT set (the device tool's return folder) the JSON reports and a tarball of logs come back there (8 files).
set -u
cd "$(dirname "$0")/.."
WORK="${GPU_CHECK_DIR:-benchmarks/results/gpu}"
mkdir -p "$WORK"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$WORK/pip.log" 2>&1 || { echo "wheel install failed:"; tail -n 5 "$WORK/pip.log"; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/cache ] && export COMPRESS_CACHE="$PWD/.gpu/cache"
[ -d .gpu/data ] && export COMPRESS_SHARED_DATA="$PWD/.gpu/data"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
declare -A RC SECS NOTE

# GPU_CHECK_BUDGET_S: the whole script's budget (default 540 s): each step's limit is cut to what is left, so the
# reports are written before a caller's own time limit kills the script.
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-540} - 20 ))
step() {  # step NAME LIMIT_S CMD...
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s)
  local left=$(( DEADLINE - t0 ))
  if [ "$left" -lt 15 ]; then NOTE[$name]="skipped: the script's budget (GPU_CHECK_BUDGET_S) was spent"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  RC[$name]=$?; SECS[$name]=$(( $(date +%s) - t0 ))
  echo "   rc=${RC[$name]} ${SECS[$name]}s (log: $WORK/$name.log)"; tail -n 3 "$WORK/$name.log"
}

"$PY" - "$WORK/env.json" <<'EOF'
import importlib, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("torch", "transformers", "tokenizers", "peft", "torch_pruning", "bitsandbytes", "accelerate", "gguf",
            "onnxruntime", "optimum", "click", "compressor"):
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
  echo "no CUDA-enabled torch here: nothing else runs (see $WORK/env.json)"
  [ -n "${OUT:-}" ] && cp -f "$WORK/env.json" "$OUT/"
  exit 0
fi

MODEL="${MODEL:-smollm2-135m}"
if [ -n "${STANDIN_SHAPE:-}" ]; then
  step standin 60 "$PY" benchmarks/standin.py build "$STANDIN_SHAPE" /tmp/standin-model
  MODEL=/tmp/standin-model
fi
CLI=("$PY" -m compressor.cli)
# issue #39 first: the CUDA paths (held base, host statistics, plan on the GPU) and the scale benchmark: an 8B-shaped
# stand-in built on the GPU in bfloat16 with the options its plan picks, predicted beside measured
step gpu-tests 120 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
step scale 300 "$PY" benchmarks/scale.py --sizes llama-3.2-1b,llama-3.1-8b --device cuda --steps 4 \
  --name scale_cuda --tmp /tmp/scale
cp -f benchmarks/results/scale_cuda.json "$WORK/scale_cuda.json" 2>/dev/null || true
step prune-bf16 120 "${CLI[@]}" prune "$MODEL" --ratio 0.5 --steps 40 --dtype bfloat16 --eval-windows 4 \
  --out "$WORK/smollm2-50-bf16" --force
step prune-8bit 100 "${CLI[@]}" prune "$MODEL" --ratio 0.5 --steps 40 --base-bits 8 --no-compensate \
  --eval-windows 4 --out "$WORK/smollm2-50-8bit" --force
step prune-default 150 "${CLI[@]}" prune "$MODEL" --ratio 0.5 --eval-windows 4 --out "$WORK/smollm2-50-default" --force
step resources 200 "$PY" benchmarks/resources.py --model "$MODEL" --steps 4 \
  --modes lora,taylor,lora-8bit,lora-gc,taylor-gc --name resources_cuda
cp -f benchmarks/results/resources_cuda.json "$WORK/resources_cuda.json" 2>/dev/null || true
if "$PY" -c "import onnxruntime as o, optimum; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null \
   && [ -d "$WORK/smollm2-50-bf16" ]; then
  step export-pruned 120 "${CLI[@]}" export "$WORK/smollm2-50-bf16" --format onnx --out "$WORK/onnx-50" --force
  step export-dense 120 "${CLI[@]}" export "$MODEL" --format onnx --out "$WORK/onnx-dense" --force
  step bench-cuda 120 "${CLI[@]}" bench "$WORK/onnx-50" --baseline "$WORK/onnx-dense" --device cuda --runs 10 \
    --out "$WORK/bench-cuda"
else
  NOTE[bench-cuda]="skipped: onnxruntime has no CUDAExecutionProvider here or optimum is missing (see env.json)"
fi

"$PY" - "$WORK/summary.json" <<EOF
import json, os, sys
rc = {$(for k in "${!RC[@]}"; do printf '"%s": [%s, %s], ' "$k" "${RC[$k]}" "${SECS[$k]}"; done)}
notes = {$(for k in "${!NOTE[@]}"; do printf '"%s": "%s", ' "$k" "${NOTE[$k]}"; done)}
out = {k: {"rc": v[0], "seconds": v[1]} for k, v in rc.items()}
out.update({k: {"note": v} for k, v in notes.items()})
out["model"] = os.path.basename("$MODEL".rstrip("/")) + (" (random-weight stand-in of ${STANDIN_SHAPE:-}: timing and memory only)" if "${STANDIN_SHAPE:-}" else "")
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out))
EOF

if [ -n "${OUT:-}" ] && [ "$OUT" != "$WORK" ]; then  # the device tool returns at most 8 files: JSONs + one tarball
  cp -f "$WORK/summary.json" "$WORK/env.json" "$OUT/" 2>/dev/null
  cp -f "$WORK/resources_cuda.json" "$WORK/scale_cuda.json" "$OUT/" 2>/dev/null
  for r in bf16 8bit default; do  # compacted, paths made relative (benchmarks/common.py copy_prune_report)
    [ -f "$WORK/smollm2-50-$r/compression_report.json" ] && "$PY" -c \
      'import sys; sys.path.insert(0, "benchmarks"); import common; common.copy_prune_report(*sys.argv[1:])' \
      "$WORK/smollm2-50-$r/compression_report.json" "$OUT/prune-$r.compression_report.json"
  done
  tar -czf "$OUT/gpu_check_logs.tgz" -C "$WORK" --exclude='*.safetensors' --exclude='*.onnx' --exclude='*.onnx_data' \
    --exclude='*.pt' --exclude='*.bin' . 2>/dev/null
fi
