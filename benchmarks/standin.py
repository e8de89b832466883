"""A same-shape stand-in for a model whose weights cannot travel (e.g. to a device machine with no registry).

Two steps, on two machines:

    python benchmarks/standin.py shape smollm2-135m .gpu/smollm2-shape     # here: config + tokenizer, ~3.5 MB
    python benchmarks/standin.py build .gpu/smollm2-shape /tmp/smollm2-standin   # there: seeded random weights

``build`` writes an ordinary Hugging Face folder (safetensors) whose architecture, sizes, dtype and tokenizer are
the real model's and whose weights are random (seed 0). Wall time, peak memory and every code path of
``compress prune`` / ``benchmarks/resources.py`` are the real model's; perplexity and accuracy are not, and the
folder's ``standin.json`` says so, so that no figure measured on it is reported as quality.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".safetensors.index.json", ".bin.index.json")


def shape(spec: str, out: Path) -> None:
    """Write ``spec``'s config and tokenizer (no weights) to ``out``."""
    from common import dense_hf_dir

    from compressor.modeling.loading import BUILTIN_MODELS

    src = dense_hf_dir(spec) if spec in BUILTIN_MODELS else Path(spec)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, out / f.name)
    (out / "standin.json").write_text(json.dumps({"source": spec, "weights": "none: run `standin.py build`"}, indent=1))
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB)")


def build(shape_dir: Path, out: Path, seed: int = 0) -> None:
    """Random weights (seeded) for the config in ``shape_dir``, saved with its tokenizer to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(shape_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    tok = AutoTokenizer.from_pretrained(shape_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    info = json.loads((shape_dir / "standin.json").read_text()) if (shape_dir / "standin.json").is_file() else {}
    info.update({"weights": f"random (torch.manual_seed({seed})): timing and memory only, not quality",
                 "params": sum(p.numel() for p in model.parameters())})
    (out / "standin.json").write_text(json.dumps(info, indent=1))
    print(f"wrote {out}: {info['params'] / 1e6:.1f} M params, random weights")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shape", help="config + tokenizer of a model (built-in name or HF folder)")
    s.add_argument("model")
    s.add_argument("out", type=Path)
    b = sub.add_parser("build", help="a random-weight HF folder from a shape folder")
    b.add_argument("shape_dir", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "shape":
        shape(a.model, a.out)
    else:
        build(a.shape_dir, a.out, a.seed)


if __name__ == "__main__":
    main()
