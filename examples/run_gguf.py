"""Generate text from a GGUF written by `compress export --format gguf`, in llama.cpp through xllamacpp.

    pip install xllamacpp==2026.10.11549          # or: pip install -e ".[gguf]"
    python examples/run_gguf.py pruned-gguf/model.gguf "The capital of France is"

Nothing here is lorapress-specific: the same file runs in any llama.cpp build recent enough for its
architecture (`deci` for per-layer widths), e.g. `llama-cli -m pruned-gguf/model.gguf -p "..." -n 32`.
"""
from __future__ import annotations

import sys

import xllamacpp


def main(path: str, prompt: str, new_tokens: int = 32) -> str:
    p = xllamacpp.CommonParams()
    p.model.path = path
    p.n_ctx = 512
    p.n_parallel = 1
    p.warmup = False
    p.verbosity = 0  # llama.cpp logs errors only
    server = xllamacpp.Server(p)
    r = server.handle_completions({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0})
    return r["choices"][0]["text"]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print(main(sys.argv[1], sys.argv[2]))
