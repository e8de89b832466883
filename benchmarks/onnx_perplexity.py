"""WikiText-2 perplexity of exported ONNX graphs of any format (optimum, ``--optimize``, onnx-genai fp32 / int4),
run in ONNX Runtime itself, so int4 / int8 graphs get a quality figure next to fp32 (issue #14).

Each window is one teacher-forced prefill through the graph (``exporters.decode.OrtDecoder``, empty KV cache),
with the same protocol as ``compress eval``: the text tokenized whole without special tokens (BOS for models
that need it), the first ``--windows`` non-overlapping windows of ``--seq-len`` tokens, every token but each
window's first scored, ppl = exp(mean NLL). Writes ``benchmarks/results/onnx_perplexity_<name>.json``::

    python benchmarks/onnx_perplexity.py /tmp/fused/p50_onnx-genai /tmp/fused/p50_onnx-genai-int4 --name smollm2-p50
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, machine, write_result  # noqa: E402

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2" / "test.txt"


def folder_perplexity(folder: Path, text: str, windows: int, seq_len: int, threads: int) -> dict:
    import numpy as np
    from transformers import AutoTokenizer

    from compressor.architectures import needs_bos
    from compressor.ort import ort_session
    from exporters.decode import OrtDecoder

    cfg = json.loads((folder / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if needs_bos(cfg) else None
    step = seq_len - (bos is not None)
    n = min(windows, len(ids) // step)
    if n < 1:
        raise SystemExit(f"{folder}: the text has {len(ids)} tokens, fewer than one window of {step}")
    onnx = next(p for p in (folder / "model.onnx", *sorted(folder.glob("*.onnx"))) if p.is_file())
    sess = ort_session(onnx, threads=threads, what="perplexity")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    total, count, t0 = 0.0, 0, time.perf_counter()
    for w in range(n):
        x = ids[w * step:(w + 1) * step]
        x = np.array([([bos] if bos is not None else []) + x], dtype=np.int64)
        logits, _ = OrtDecoder(sess, cfg["num_key_value_heads"], head_dim).step(x, np.ones_like(x))
        lg = logits[0, :-1].astype(np.float64)
        m = lg.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lg - m).sum(-1))
        tgt = x[0, 1:]
        nll = lse - lg[np.arange(len(tgt)), tgt]  # with BOS, its prediction of the first text token counts too
        total += float(nll.sum())
        count += len(nll)
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "windows": n, "seq_len": seq_len, "tokens": count,
            "add_bos": bos is not None, "seconds": round(time.perf_counter() - t0, 1), "onnx": str(onnx)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="exported ONNX folders (any of the ONNX formats)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, default=WIKI if WIKI.is_file() else Path("/work/shared/data/wikitext2/test.txt"))
    args = ap.parse_args()
    text = args.text.read_text()
    res: dict = {"git": git_rev(), "machine": machine(), "text": str(args.text), "results": {}}
    for f in args.folders:
        r = folder_perplexity(f, text, args.windows, args.seq_len, args.threads)
        print(f"{f}: ppl {r['ppl']:.3f} over {r['windows']} x {r['seq_len']} ({r['seconds']} s)", flush=True)
        res["results"][str(f)] = r
    print(write_result(f"onnx_perplexity_{args.name}", res))


if __name__ == "__main__":
    main()
