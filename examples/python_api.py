"""Prune, save, reload with stock transformers, export to ONNX — from Python (an MLOps pipeline step).

    python examples/python_api.py --ratio 0.3 --steps 20 --out runs/api-30
"""
from __future__ import annotations

import argparse

from compressor import PruneConfig, load_model, prune, save_model_folder
from compressor.pruning import save_plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/api")
    a = ap.parse_args()

    model, tokenizer, _ = load_model(a.model)
    cfg = PruneConfig(ratio=a.ratio, steps=a.steps, prune_every=5, eval_windows=2)
    from calibration import load_eval_text

    result = prune(model, cfg, "wiki", tokenizer=tokenizer, eval_text=load_eval_text("wikitext2"),
                   progress=lambda r: print(f"step {r['step']}/{r['total_steps']} loss {r['loss']:.3f} "
                                            f"sparsity {r['sparsity']:.3f}"))
    save_model_folder(result.model, tokenizer, a.out, force=True, report=result.report,
                      extra=lambda tmp: save_plan(tmp, result))
    print("ratio achieved", result.report["ratio_achieved"], "ppl", result.report["perplexity_after"])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(a.out)  # stock loader, no custom code
    tok = AutoTokenizer.from_pretrained(a.out)
    ids = tok("The capital of France is", return_tensors="pt")
    print(tok.decode(reloaded.generate(**ids, max_new_tokens=12, do_sample=False)[0]))

    from exporters import export_onnx

    export_onnx(a.out, a.out + "-onnx", force=True)


if __name__ == "__main__":
    main()
