"""WikiText-2 perplexity of exported ONNX graphs of any format (optimum, ``--optimize``, onnx-genai fp32 / int4),
run in ONNX Runtime itself, so int4 / int8 graphs get a quality figure next to fp32 (issue #14).

Each window is one teacher-forced prefill through the graph (``exporters.onnx.decode.OrtDecoder``, empty KV cache),
scored by ``compress eval``'s own :func:`compressor.evaluation.perplexity` (same windows, BOS rule and NLL). Writes ``benchmarks/results/onnx_perplexity_<name>.json``::

    python benchmarks/onnx_perplexity.py /tmp/fused/p50_onnx-genai /tmp/fused/p50_onnx-genai-int4 --name smollm2-p50
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, load_json, machine, rel_path, write_result  # noqa: E402


class _Graph:
    """An exported graph as the callable :func:`compressor.evaluation.perplexity` takes: ``(input_ids,
    attention_mask) -> (logits,)``, each call one prefill with an empty KV cache; ``config`` from the folder."""

    def __init__(self, folder: Path, threads: int) -> None:
        from types import SimpleNamespace

        from compressor.core.ort import ort_session

        cfg = load_json(folder / "config.json")
        self.config = SimpleNamespace(**cfg)
        self.onnx = next(p for p in (folder / "model.onnx", *sorted(folder.glob("*.onnx"))) if p.is_file())
        self.sess = ort_session(self.onnx, threads=threads, what="perplexity")
        self.kv = cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    def __call__(self, input_ids, attention_mask):
        import torch

        from exporters.onnx.decode import OrtDecoder

        logits, _ = OrtDecoder(self.sess, self.kv, self.head_dim).step(input_ids.numpy(), attention_mask.numpy())
        return (torch.from_numpy(logits),)


def folder_perplexity(folder: Path, text: str, windows: int, seq_len: int, threads: int) -> dict:
    from transformers import AutoTokenizer

    from compressor.evaluation.perplexity import default_add_bos, perplexity

    graph = _Graph(folder, threads)
    tok = AutoTokenizer.from_pretrained(folder)
    t0 = time.perf_counter()
    r = perplexity(graph, tok, text, seq_len=seq_len, max_windows=windows, add_bos=default_add_bos(graph, tok))
    return {**{k: r[k] for k in ("ppl", "nll", "windows", "seq_len", "tokens", "add_bos", "protocol")},
            "seconds": round(time.perf_counter() - t0, 1), "onnx": str(graph.onnx)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="exported ONNX folders (any of the ONNX formats)")
    ap.add_argument("--name", default="run")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default="wikitext2",
                    help="evaluation text: wikitext2 (default; found as compress eval finds it), ptb, or a text file")
    args = ap.parse_args()
    from calibration import load_eval_text

    text = load_eval_text(args.text)
    res: dict = {"git": git_rev(), "machine": machine(), "text": rel_path(args.text), "results": {}}
    for f in args.folders:
        r = folder_perplexity(f, text, args.windows, args.seq_len, args.threads)
        print(f"{f}: ppl {r['ppl']:.3f} over {r['windows']} x {r['seq_len']} ({r['seconds']} s)", flush=True)
        res["results"][str(f)] = r
    print(write_result(f"onnx_perplexity_{args.name}", res))


if __name__ == "__main__":
    main()
