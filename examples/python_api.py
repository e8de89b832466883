"""Prune, save, reload with stock transformers, export to ONNX — from Python (an MLOps pipeline step).

    python examples/python_api.py --ratio 0.3 --steps 20 --out runs/api-30
    python examples/python_api.py --model ./my-llama --out runs/my-llama-30     # your own Hugging Face folder
    python examples/python_api.py --model HuggingFaceTB/SmolLM2-135M            # a hub id (downloaded, then cached)
    python examples/python_api.py --eval-data ~/data/wiki.test.raw              # WikiText-2 from your own copy

The calibration text is the built-in ``wiki`` corpus (fetched once into ``$COMPRESS_CACHE``). The perplexity before
and after is measured on ``--eval-data``; WikiText-2 (the default) is read from the shared data folder
(``$COMPRESS_SHARED_DATA``) or through the ``datasets`` library. When neither has it, the example says so and
prunes without the perplexity.
"""
from __future__ import annotations

import argparse
import sys

from compressor import PruneConfig, load_model, prune, save_model_folder
from compressor.job.checkpoint import save_plan


def held_out_text(name: str) -> str | None:
    """The held-out text for the perplexity before/after: ``wikitext2``, ``ptb``, a text file, or ``none`` (None).

    A built-in corpus that no source holds is reported on stderr (with every way to provide it) and gives None."""
    if name == "none":
        return None
    from calibration import EvalDataMissingError, load_eval_text

    try:
        return load_eval_text(name)
    except EvalDataMissingError as exc:
        print(f"no perplexity before/after: {exc}", file=sys.stderr)
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m",
                    help="built-in name, Hugging Face folder, .gguf file or hub id 'org/name' [smollm2-135m]")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/api")
    ap.add_argument("--eval-data", default="wikitext2",
                    help="held-out text for the perplexity before/after: wikitext2, ptb, a text file, or none "
                         "[wikitext2]")
    a = ap.parse_args()

    model, tokenizer, _ = load_model(a.model)
    cfg = PruneConfig(ratio=a.ratio, steps=a.steps, prune_every=min(5, a.steps), eval_windows=2)
    result = prune(model, cfg, "wiki", tokenizer=tokenizer, eval_text=held_out_text(a.eval_data),
                   progress=lambda r: print(f"step {r['step']}/{r['total_steps']} loss {r['loss']:.3f} "
                                            f"sparsity {r['sparsity']:.3f}"))
    save_model_folder(result.model, tokenizer, a.out, force=True, report=result.report,
                      extra=lambda tmp: save_plan(tmp, result))
    before, after = result.report["perplexity_before"], result.report["perplexity_after"]
    print("ratio achieved", result.report["ratio_achieved"],
          f"perplexity {before['ppl']:.2f} -> {after['ppl']:.2f}" if before and after else "(no perplexity)")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(a.out)  # stock loader, no custom code
    tok = AutoTokenizer.from_pretrained(a.out)
    ids = tok("The capital of France is", return_tensors="pt")
    print(tok.decode(reloaded.generate(**ids, max_new_tokens=12, do_sample=False)[0]))

    from exporters import export_onnx

    export_onnx(a.out, a.out + "-onnx", force=True)


if __name__ == "__main__":
    main()
