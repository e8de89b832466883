"""Is a pruned model's gap to dense larger at long context? Perplexity of the dense model and of pruned folders on
the same first WikiText-2 test tokens, cut into 80 windows of 256 tokens or 10 windows of 2048 (non-overlapping).

    python benchmarks/context_length_ratio.py runs/s50 runs/s20

Writes ``benchmarks/results/context_length_ratio.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dense_hf_dir, git_rev, machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="pruned model folders (compress prune outputs)")
    ap.add_argument("--model", default="smollm2-135m", help="the dense built-in model they were pruned from")
    a = ap.parse_args()
    import torch

    from calibration.data import load_eval_text
    from compressor.evaluation.perplexity import default_add_bos, perplexity
    from compressor.modeling.loading import load_model

    text = load_eval_text("wikitext2")
    ppl: dict[str, float] = {}
    for name, path in [("dense", str(dense_hf_dir(a.model)))] + [(Path(f).name, f) for f in a.folders]:
        m, tok, _ = load_model(path)
        for seq, windows in ((256, 80), (2048, 10)):
            with torch.no_grad():
                ppl[f"{name}@{seq}"] = perplexity(m, tok, text, seq_len=seq, max_windows=windows,
                                                  add_bos=default_add_bos(m, tok))["ppl"]
            print(f"{name} @ {seq}: {ppl[f'{name}@{seq}']:.2f}", flush=True)
    ratio = {k: round(v / ppl["dense@" + k.split("@")[1]], 3) for k, v in ppl.items() if not k.startswith("dense@")}
    write_result("context_length_ratio", {"model": a.model, "folders": a.folders, "ppl": ppl, "ratio_to_dense": ratio,
                                          "machine": machine(), "git": git_rev()})


if __name__ == "__main__":
    main()
