"""Real models beyond SmolLM2 (issue #13): load checks and the user's CLI chain at a tiny budget.

``check NAME``: load the built-in GGUF model with transformers (fp32, dequantized), compare its tokenizer's
ids with llama.cpp's own tokenization of the GGUF (before and after ``save_pretrained`` → reload), compare
next-token log-probabilities with llama.cpp on the original GGUF (``xllamacpp``, if installed), and measure
dense WikiText-2 perplexity on a few windows.

``chain NAME RATIO``: the README's commands, each as a subprocess so its peak RSS is its own:
``python -m compressor.cli prune NAME --ratio R`` (tiny budget) → stock ``AutoModelForCausalLM.from_pretrained``
→ identical logits to the in-process merged model's → ``generate`` → ``python -m compressor.cli export OUT
--format onnx`` (parity + stock ``ORTModelForCausalLM`` greedy) → perplexity after.

``bench NAME RATIO``: ``python -m compressor.cli export NAME --format onnx`` (the dense model, once) and
``python -m compressor.cli bench PRUNED-ONNX --baseline DENSE-ONNX`` on the chain's ONNX export: ONNX Runtime
latency of pruned vs dense, alternating in one run (run it on an idle machine: nothing else may run).

Every figure goes into ``benchmarks/results/real_models.json`` under ``NAME`` (merged with what is there).
A tiny-budget chain proves the code path on the real architecture, nothing about quality.

Usage (one job at a time, on one core)::

    python benchmarks/real_models.py check gemma3-270m
    python benchmarks/real_models.py chain gemma3-270m 0.3 --steps 4
    python benchmarks/real_models.py bench gemma3-270m 0.3 --threads 2 --runs 10
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    CompressFailed,
    CompressRun,
    git_rev,
    load_json,
    machine,
    run_compress,
    write_json_result,
)

RESULT = ROOT / "benchmarks" / "results" / "real_models.json"
PROBES = ["The capital of France is", "def fibonacci(n):\n    return", "  Hello,   world!\n\n\tTabs and  spaces 1234567",
          "Ünïcödé — “quotes” 日本語 🙂", "= Robert Boulter =\n\nRobert Boulter is an English film , television"]


@functools.lru_cache(maxsize=1)
def _wiki() -> str:
    """WikiText-2's test split, found as ``compress eval`` finds it (:func:`calibration.load_eval_text`)."""
    from calibration import load_eval_text

    return load_eval_text("wikitext2")


def _update(name: str, key: str, value: dict) -> None:
    doc = load_json(RESULT) if RESULT.is_file() else {}
    doc.setdefault(name, {})[key] = value
    doc["_about"] = ("issue #13: the real models through the user's commands at a tiny budget (a smoke chain: it says "
                     "nothing about quality); written by benchmarks/real_models.py")
    write_json_result(RESULT, doc)
    print(f"wrote {RESULT} [{name}][{key}]")


class LlamaCpp:
    """The original GGUF in llama.cpp (xllamacpp): its tokenizer and its next-token log-probabilities."""

    def __init__(self, gguf: str, n_ctx: int = 512) -> None:
        import xllamacpp

        p = xllamacpp.CommonParams()
        p.model.path = gguf
        p.n_ctx = n_ctx
        p.n_parallel = 1
        p.cpuparams.n_threads = 1
        p.cpuparams_batch.n_threads = 1
        p.warmup = False
        self.server = xllamacpp.Server(p)
        self.url = f"http://{self.server.listening_address}".replace("http://http://", "http://")

    def tokenize(self, text: str) -> list[int]:
        req = urllib.request.Request(self.url + "/tokenize", data=json.dumps({"content": text, "add_special": False}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return list(json.loads(r.read())["tokens"])

    def logprobs(self, ids: list[int], vocab: int):
        import torch

        r = self.server.handle_completions({"prompt": ids, "max_tokens": 1, "temperature": 0.0, "n_probs": vocab,
                                            "cache_prompt": False})
        top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        out = torch.full((vocab,), float("-inf"), dtype=torch.float64)
        for t in top:
            out[t["id"]] = t["logprob"]
        return out


def check(name: str, windows: int, seq_len: int) -> None:
    import torch

    from compressor.evaluation.perplexity import perplexity
    from compressor.modeling.loading import load_model
    from compressor.modeling.save import save_model_folder

    t0 = time.time()
    model, tok, source = load_model(name)
    model.eval()
    cfg = model.config
    gguf = str(Path(source.path) / source.gguf_file)
    res: dict = {"gguf": gguf, "gguf_bytes": os.path.getsize(gguf), "load_s": round(time.time() - t0, 1),
                 "model_type": cfg.model_type, "class": type(model).__name__,
                 "params": sum(p.numel() for p in model.parameters()),
                 "config": {k: getattr(cfg, k, None) for k in (
                     "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "intermediate_size", "vocab_size", "tie_word_embeddings", "sliding_window", "layer_types",
                     "query_pre_attn_scalar", "rope_theta", "max_position_embeddings")},
                 "machine": machine(), "git": git_rev()}
    # the tokenizer: rebuilt from the GGUF, and saved then reloaded (the Qwen regex warning)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        save_model_folder(model, tok, Path(tmp) / "m", force=True)
        tok2 = AutoTokenizer.from_pretrained(Path(tmp) / "m")
        texts = PROBES + [_wiki()[:20000]]
        ids_gguf = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        ids_saved = [tok2(t, add_special_tokens=False)["input_ids"] for t in texts]
    tokres: dict = {"texts": len(texts), "chars": sum(len(t) for t in texts),
                    "saved_equals_gguf_tokenizer": ids_saved == ids_gguf}
    cpp = None
    try:
        cpp = LlamaCpp(gguf)
    except ImportError:
        tokres["llama_cpp"] = "xllamacpp not installed"
    if cpp is not None:
        ids_cpp = [cpp.tokenize(t) for t in texts]
        tokres["equals_llama_cpp"] = ids_cpp == ids_gguf
        tokres["mismatching_texts"] = [i for i, (a, b) in enumerate(zip(ids_cpp, ids_gguf)) if a != b]
        # logits: the same token ids in both (BOS first where the GGUF adds one)
        bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
        prompts = [bos + ids_gguf[-1][:n] for n in (16, 127)] + [bos + ids_gguf[0]]
        rows = []
        for ids in prompts:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].double()
            ours = torch.log_softmax(logits, -1)
            theirs = cpp.logprobs(ids, logits.numel())
            top = torch.topk(ours, 10).indices
            rows.append({"prompt_tokens": len(ids), "top1_equal": int(ours.argmax()) == int(theirs.argmax()),
                         "top10_overlap": len(set(top.tolist()) & set(torch.topk(theirs, 10).indices.tolist())),
                         "max_abs_logprob_diff_top10": float((ours[top] - theirs[top]).abs().max()),
                         "max_abs_logprob_diff_all": float((ours - theirs).abs().max())})
        res["vs_llama_cpp"] = {"what": "next-token log-softmax, transformers fp32 (dequantized) vs llama.cpp on the "
                                       "Q4_K_M GGUF (quantized matmuls)", "prompts": rows}
    res["tokenizer"] = tokres
    text = _wiki()
    for add_bos in (False, True) if tok.bos_token_id is not None else (False,):
        r = perplexity(model, tok, text, seq_len=seq_len, max_windows=windows, add_bos=add_bos)
        res[f"ppl_wikitext2{'_bos' if add_bos else ''}"] = {k: r[k] for k in ("ppl", "windows", "seq_len", "tokens")}
    res["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(res, indent=1, default=str))
    _update(name, "check", res)


def _run(args: list) -> tuple[CompressRun, float]:
    """Run ``compress ARGS`` (output captured); returns the run and the peak RSS (GiB) of the largest child so far."""
    try:
        run = run_compress(args, capture=True)
    except CompressFailed as exc:
        raise SystemExit(str(exc)) from None
    return run, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def chain(name: str, ratio: float, steps: int, work: Path, extra: list[str], windows: int, seq_len: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor.evaluation.perplexity import perplexity

    out = work / f"{name}-{int(ratio * 100)}"
    onnx = work / f"{name}-{int(ratio * 100)}-onnx"
    res: dict = {"ratio_asked": ratio, "steps": steps, "machine": machine(), "git": git_rev()}
    run, rss = _run(["prune", name, "--ratio", ratio, "--steps", steps, "--prune-every", 1, *extra, "--out", out,
                     "--force", "--quiet"])
    rep = load_json(out / "compression_report.json")
    res["prune"] = {"command": run.command, "wall_s": round(run.seconds, 1), "peak_rss_gib": round(rss, 2),
                    "ratio_achieved": rep.get("ratio_achieved"), "params_before": rep.get("params_before"),
                    "params_after": rep.get("params_after"), "widths_before": rep.get("widths_before"),
                    "widths_after": rep.get("widths_after"),
                    "report_perplexity": {k: rep.get(k) for k in ("perplexity_before", "perplexity_after", "eval")
                                          if k in rep}}
    # stock reload (no lorapress code): logits equal the project loader's, finite; it generates
    from compressor.modeling.loading import load_model

    m1 = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    m2, _, _ = load_model(str(out))
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        l1, l2 = m1(**ids).logits, m2.eval()(**ids).logits
        gen = m1.generate(**ids, max_new_tokens=8, do_sample=False)
    # the project loader picks eager attention, stock transformers SDPA: equal up to float rounding, not bit-equal
    res["reload"] = {"stock_from_pretrained": True, "max_abs_logit_diff_vs_lorapress_loader": float((l1 - l2).abs().max()),
                     "logit_scale": float(l1.abs().max()),
                     "finite": bool(torch.isfinite(l1).all()), "generated": tok.decode(gen[0, ids["input_ids"].shape[1]:]),
                     "config": {k: getattr(m1.config, k, None) for k in ("num_attention_heads", "num_key_value_heads",
                                                                         "head_dim", "intermediate_size")}}
    del m2
    for add_bos in (False, True) if tok.bos_token_id is not None else (False,):
        r = perplexity(m1, tok, _wiki(), seq_len=seq_len, max_windows=windows, add_bos=add_bos)
        res[f"ppl_wikitext2_after{'_bos' if add_bos else ''}"] = {k: r[k] for k in ("ppl", "windows", "seq_len", "tokens")}
    run, rss = _run(["export", out, "--format", "onnx", "--out", onnx, "--force"])
    rep_file = next(iter(sorted(onnx.glob("*report*.json"))), None)
    res["export_onnx"] = {"command": run.command, "wall_s": round(run.seconds, 1),
                          "peak_rss_gib_max_child": round(rss, 2), "report": load_json(rep_file) if rep_file else None,
                          "log_tail": run.output[-1500:]}
    # greedy next tokens vs PyTorch: stock ORTModelForCausalLM where optimum is installed, else plain ONNX Runtime
    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError:
        from exporters.onnx.validation import validate_generate

        g = validate_generate(m1, onnx, tok, prompts=["The capital of France is"], max_new_tokens=8, runner="onnxruntime",
                              raise_on_fail=False)
        res["ort_greedy_runner"] = "onnxruntime"
        res["ort_greedy_equals_torch"] = bool(g["all_equal"])
        res["ort_generated"] = tok.decode(g["results"][0]["ort"])
    else:
        ort = ORTModelForCausalLM.from_pretrained(onnx)
        g_ort = ort.generate(**ids, max_new_tokens=8, do_sample=False)
        res["ort_greedy_runner"] = "optimum"
        res["ort_greedy_equals_torch"] = bool(torch.equal(g_ort, gen))
        res["ort_generated"] = tok.decode(g_ort[0, ids["input_ids"].shape[1]:])
    print(json.dumps(res, indent=1, default=str))
    _update(name, f"chain_{int(ratio * 100)}", res)


def export_dense(name: str, work: Path) -> tuple[Path, dict]:
    """The dense built-in model exported to ONNX under ``work`` (validated); reused when already there."""
    dense = work / f"{name}-dense-onnx"
    if (dense / "model.onnx").is_file():
        return dense, {"reused": str(dense)}
    run, rss = _run(["export", name, "--format", "onnx", "--out", dense, "--force"])
    return dense, {"command": run.command, "wall_s": round(run.seconds, 1), "peak_rss_gib_max_child": round(rss, 2),
                   "log_tail": run.output[-800:]}


def bench(name: str, ratio: float, work: Path, threads: int, runs: int) -> None:
    pruned = work / f"{name}-{int(ratio * 100)}-onnx"
    if not (pruned / "model.onnx").is_file():
        raise SystemExit(f"{pruned} has no model.onnx: run `python benchmarks/real_models.py chain {name} {ratio}` first")
    dense, dense_info = export_dense(name, work)
    out = work / f"bench-{name}-{int(ratio * 100)}"
    run, _ = _run(["bench", pruned, "--baseline", dense, "--threads", threads, "--runs", runs, "--out", out, "--force"])
    log = run.output
    rep = load_json(out / "bench_report.json")
    res = {"command": run.command, "wall_s": round(run.seconds, 1), "dense_export": dense_info, "machine": machine(),
           "git": git_rev(), "ratios": rep.get("ratios"), "settings": rep.get("settings"),
           "model": {k: rep["model"].get(k) for k in ("latency", "flops_per_token", "params", "file_bytes", "peak_rss_mb")},
           "baseline": {k: rep["baseline"].get(k) for k in ("latency", "flops_per_token", "params", "file_bytes",
                                                            "peak_rss_mb")},
           "table": log[-2500:]}
    print(log[-2500:])
    _update(name, f"bench_{int(ratio * 100)}", res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("name")
    c.add_argument("--windows", type=int, default=4)
    c.add_argument("--seq-len", type=int, default=512)
    ch = sub.add_parser("chain")
    ch.add_argument("name")
    ch.add_argument("ratio", type=float)
    ch.add_argument("--steps", type=int, default=4)
    ch.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorapress-real")
    ch.add_argument("--windows", type=int, default=4)
    ch.add_argument("--seq-len", type=int, default=512)
    b = sub.add_parser("bench")
    b.add_argument("name")
    b.add_argument("ratio", type=float)
    b.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorapress-real")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=10)
    a, extra = ap.parse_known_args()  # chain: unknown options (after --) go to compress prune
    if extra and a.cmd != "chain":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    a.extra = [e for e in extra if e != "--"]
    if a.cmd == "check":
        check(a.name, a.windows, a.seq_len)
    elif a.cmd == "bench":
        bench(a.name, a.ratio, a.work, a.threads, a.runs)
    else:
        a.work.mkdir(parents=True, exist_ok=True)
        chain(a.name, a.ratio, a.steps, a.work, a.extra, a.windows, a.seq_len)


if __name__ == "__main__":
    main()
