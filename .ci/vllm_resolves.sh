#!/usr/bin/env bash
# lorapress installs beside vLLM 0.33 (transformers >=5.16.1,<5.21, torch==2.14.0): pip resolves both together.
# Metadata only (--dry-run): nothing is installed, no CUDA wheel is unpacked. Usage: bash .ci/vllm_resolves.sh [VLLM]
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM="${1:-vllm==0.33.0}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
err="$(mktemp)"
if ! python3 -m pip install --dry-run --ignore-installed --quiet --report "$report" -e . "$VLLM" 2>"$err"; then
  grep -v "^WARNING: Location" "$err" >&2 || true
  echo "lorapress does not resolve beside $VLLM" >&2
  exit 1
fi
rm -f "$err"
python3 - "$report" "$VLLM" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in rep["install"]}
if "lorapress" not in got or "vllm" not in got:
    sys.exit(f"pip did not resolve lorapress with {sys.argv[2]}")
print("resolves together:", ", ".join(f"{k} {got[k]}" for k in ("lorapress", "vllm", "torch", "transformers", "peft")
                                      if k in got))
PY
