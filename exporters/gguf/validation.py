"""Validation of a GGUF file in llama.cpp against the PyTorch model and the Hugging Face tokenizer.

Next-token log-probabilities (:func:`validate_logprobs`): for each prompt (token ids used as given, no BOS
added; random ids of a few lengths plus the tokenized check prompts) llama.cpp's full next-token
log-probabilities (log-softmax of its logits over the whole vocabulary) are compared with PyTorch's
``log_softmax`` of the model's float32 logits at the last position. Gates per ``--type``
(:data:`TOLERANCES`):

* ``f32``: ``max |lp_llama - lp_torch| <= 1e-3`` over every prompt and every vocabulary entry;
* ``f16``: ``max |diff| <= 5e-2``;
* ``q8_0``: mean KL(torch || llama) over the prompts ``<= 0.02`` nats and greedy (argmax) agreement on every
  prompt whose PyTorch top-2 margin is at least ``0.05`` nats (near-ties are counted, not gated).

All figures (max and mean abs diff, KL, agreement, margins) are reported for every type.

Tokenizer (:func:`validate_tokenizer`): llama.cpp's tokenization of :data:`CHECK_TEXTS` with the GGUF's embedded
tokenizer equals the Hugging Face tokenizer's ids, without special tokens and with them (BOS/EOS as the GGUF's
``add_bos_token`` says).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compressor.core.errors import ValidationError

#: per ``--type`` gates (see module docstring)
TOLERANCES: dict[str, dict[str, float]] = {
    "f32": {"max_abs_diff": 1e-3},
    "f16": {"max_abs_diff": 5e-2},
    "q8_0": {"mean_kl": 0.02, "min_margin_for_argmax": 0.05},
}

#: texts whose llama.cpp tokenization must equal the Hugging Face tokenizer's
CHECK_TEXTS = (
    "Hello world! The capital of France is Paris.",
    "Once upon a time, a small cat said: 'I've 3 apples & 12 pears.'",
    "def add(a, b):\n    return a + b  # 2024-01-05\n",
    "  leading spaces,\ttabs and\n\nnew lines   ",
    "Ünïcödé: naïve café, 日本語, emoji 🦙🚀.",
)

#: lengths of the random token-id prompts
RANDOM_PROMPT_LENGTHS = (1, 6, 17, 40)


def prompt_ids(tokenizer, vocab: int, texts: Sequence[str] = CHECK_TEXTS[:3], seed: int = 0) -> list[list[int]]:
    """Random id prompts of :data:`RANDOM_PROMPT_LENGTHS` plus ``texts`` tokenized without special tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = [rng.integers(0, vocab, size=n).tolist() for n in RANDOM_PROMPT_LENGTHS]
    if tokenizer is not None:
        for t in texts:
            ids = list(tokenizer.encode(t, add_special_tokens=False))
            if ids:
                out.append([int(i) for i in ids])
    return out


def torch_logprobs(model, ids: list[int]):
    """float64 ``log_softmax`` of the model's float32 logits after ``ids`` (numpy, vocab entries)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def compare_logprobs(ref, got) -> dict[str, float]:
    """Figures for one prompt: max/mean abs diff, KL(ref || got), argmax of each, PyTorch's top-2 margin."""
    import numpy as np

    d = np.abs(got - ref)
    p = np.exp(ref)
    kl = float(np.sum(p * (ref - got)))
    top2 = np.sort(ref)[-2:] if ref.size > 1 else np.array([ref[0], -np.inf])
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "kl": max(kl, 0.0),
            "argmax_torch": int(np.argmax(ref)), "argmax_llama": int(np.argmax(got)),
            "margin": float(top2[1] - top2[0])}


def validate_logprobs(model, lc, gguf_type: str, prompts: list[list[int]], *,
                      tolerances: dict[str, float] | None = None, safe_token: int | None = None,
                      raise_on_fail: bool = True) -> dict[str, Any]:
    """Compare llama.cpp (``lc``, a :class:`exporters.gguf.llamacpp.LlamaCpp`) with PyTorch on ``prompts``.

    ``safe_token``: see :meth:`exporters.gguf.llamacpp.LlamaCpp.next_token_logprobs`.

    Returns:
        ``{"type", "tolerance", "prompts": [{"len", figures...}], "max_abs_diff", "mean_abs_diff", "mean_kl",
        "argmax_agreement", "argmax_gated", "near_ties", "passed"}``.

    Raises:
        ValidationError: outside the gates of ``gguf_type`` (the message has the measured figures).
    """
    import numpy as np

    tol = dict(TOLERANCES[gguf_type] if tolerances is None else tolerances)
    vocab = int(model.config.vocab_size)
    rows = []
    for ids in prompts:
        ref = torch_logprobs(model, ids)
        got = lc.next_token_logprobs(ids, vocab, safe_token)
        rows.append({"len": len(ids), **compare_logprobs(ref, got)})
    margin_min = tol.get("min_margin_for_argmax", 0.0)
    gated = [r for r in rows if r["margin"] >= margin_min]
    res: dict[str, Any] = {
        "type": gguf_type, "tolerance": tol, "prompts": rows,
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in rows])),
        "mean_kl": float(np.mean([r["kl"] for r in rows])),
        "argmax_agreement": float(np.mean([r["argmax_torch"] == r["argmax_llama"] for r in rows])),
        "argmax_gated": len(gated), "near_ties": len(rows) - len(gated),
    }
    fails = []
    if "max_abs_diff" in tol and res["max_abs_diff"] > tol["max_abs_diff"]:
        fails.append(f"max |log-prob diff| {res['max_abs_diff']:.3g} > {tol['max_abs_diff']:g}")
    if "mean_kl" in tol and res["mean_kl"] > tol["mean_kl"]:
        fails.append(f"mean KL {res['mean_kl']:.3g} > {tol['mean_kl']:g}")
    if "min_margin_for_argmax" in tol:
        bad = [r for r in gated if r["argmax_torch"] != r["argmax_llama"]]
        if bad:
            fails.append(f"greedy token differs on {len(bad)}/{len(gated)} prompts with a top-2 margin >= "
                         f"{margin_min:g} (" + "; ".join(f"len {r['len']}: torch {r['argmax_torch']} llama.cpp "
                                                         f"{r['argmax_llama']}" for r in bad[:4]) + ")")
    res["passed"] = not fails
    if raise_on_fail and fails:
        raise ValidationError(
            f"llama.cpp's next-token log-probabilities of the {gguf_type} GGUF differ from PyTorch: " + "; ".join(fails)
            + f" (over {len(rows)} prompts; max |diff| {res['max_abs_diff']:.3g}, mean |diff| "
            f"{res['mean_abs_diff']:.3g}, mean KL {res['mean_kl']:.3g}, argmax agreement {res['argmax_agreement']:.2f})."
            " The file was not kept; pass --no-validate (validate=False) to keep it anyway.")
    return res


def validate_tokenizer(lc, tokenizer, texts: Sequence[str] = CHECK_TEXTS, *, raise_on_fail: bool = True
                       ) -> dict[str, Any]:
    """llama.cpp's ``/tokenize`` of ``texts`` == the Hugging Face tokenizer's ids (without, then with specials).

    Raises:
        ValidationError: any text tokenizes differently (the message shows the first mismatch).
    """
    results = []
    for text in texts:
        for special in (False, True):
            hf = [int(i) for i in tokenizer.encode(text, add_special_tokens=special)]
            lcpp = lc.tokenize(text, add_special=special)
            results.append({"text": text, "add_special": special, "equal": hf == lcpp, "n_tokens": len(hf),
                            **({} if hf == lcpp else {"hf": hf, "llama_cpp": lcpp})})
    bad = [r for r in results if not r["equal"]]
    res = {"texts": len(texts), "checks": len(results), "passed": not bad, "results": results}
    if raise_on_fail and bad:
        r = bad[0]
        first = next((i for i, (a, b) in enumerate(zip(r["hf"], r["llama_cpp"])) if a != b),
                     min(len(r["hf"]), len(r["llama_cpp"])))
        raise ValidationError(
            f"llama.cpp tokenizes {len(bad)}/{len(results)} check texts differently from the Hugging Face tokenizer; "
            f"first: {r['text']!r} (add_special={r['add_special']}) differs at token {first}: HF {r['hf'][:first + 4]} "
            f"vs llama.cpp {r['llama_cpp'][:first + 4]}. Is the pre-tokenizer right? (pass --tokenizer-pre to set it)."
            " The file was not kept.")
    return res
