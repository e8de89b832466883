"""Zero-shot multiple choice as lm-evaluation-harness (v0.4) scores it.

Each choice is scored by the summed log-probability of its continuation given the context; ``acc`` takes
the argmax of that sum, ``acc_norm`` the argmax of the sum divided by the choice's length in characters
(``len(choice)`` as lm-eval computes it; equal to the UTF-8 byte length for ASCII text).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import CalibrationError, ConfigError
from .eval_model import (
    EvalMode,
    accepts,
    forward_logits,
    max_positions,
    model_device,
    progress_bar,
    torch_module,
)
from .eval_tasks import DEFAULT_MC_BATCH, MCDoc


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``encode_pair``: trailing context spaces move to the continuation; the
    continuation tokens are those of ``context + continuation`` after the context's tokens."""
    from calibration import tokenize_text

    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenize_text(tokenizer, context + continuation)
    ctx = tokenize_text(tokenizer, context)
    return ctx, whole[len(ctx):]


def loglikelihoods(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *, batch_size: int = DEFAULT_MC_BATCH,
                   max_length: int | None = None, progress: bool = False) -> list[float]:
    """Summed log-probability (nats) of each continuation given its context.

    Tokenization as lm-evaluation-harness: no special tokens; an empty context is replaced by the BOS
    (else EOS) token; ``context + continuation`` is left-truncated to ``max_length + 1`` tokens.

    Args:
        model: a Hugging Face causal LM (or ORTModelForCausalLM).
        tokenizer: its tokenizer.
        requests: ``(context, continuation)`` pairs.
        batch_size: sequences per forward pass (right-padded, sorted by length; default 8).
        max_length: longest input; default ``min(2048, max_position_embeddings)``.
        progress: show a progress bar.

    Returns:
        One float per request, in request order.

    Example:
        >>> loglikelihoods(model, tok, [("The capital of France is", " Paris")])   # doctest: +SKIP
    """
    torch = torch_module()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} is not valid; use a positive integer")
    if max_length is None:
        mp = max_positions(model)
        max_length = min(2048, mp) if mp else 2048
    prefix = getattr(tokenizer, "bos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "eos_token_id", None)
    encoded = []
    for i, (ctx, cont) in enumerate(requests):
        if ctx == "":
            if prefix is None:
                raise ConfigError("an empty context needs a tokenizer with a BOS or EOS token")
            c_ids, k_ids = [prefix], encode_pair(tokenizer, "", cont)[1]
        else:
            c_ids, k_ids = encode_pair(tokenizer, ctx, cont)
        if not k_ids:
            raise CalibrationError(f"request {i}: continuation {cont!r} has no tokens")
        full = (c_ids + k_ids)[-(max_length + 1):]
        inp = full[:-1]
        cont_ids = k_ids[-len(inp):] if len(k_ids) > len(inp) else k_ids  # only if the continuation alone is too long
        encoded.append((i, inp, cont_ids))
    order = sorted(range(len(encoded)), key=lambda j: -len(encoded[j][1]))
    out = [0.0] * len(encoded)
    device = model_device(model)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else pad
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with EvalMode(model):
        for batch in progress_bar(batches, len(batches), "loglikelihood", progress):
            items = [encoded[j] for j in batch]
            P = max(len(inp) for _, inp, _ in items)
            x = torch.full((len(items), P), pad, dtype=torch.long)
            mask = torch.zeros((len(items), P), dtype=torch.long)
            for r, (_, inp, _) in enumerate(items):
                x[r, :len(inp)] = torch.tensor(inp, dtype=torch.long)
                mask[r, :len(inp)] = 1
            # logits at position p predict token p+1: continuation of row r is predicted at
            # positions len(inp) - len(cont) .. len(inp) - 1
            first = min(len(inp) - len(cont) for _, inp, cont in items)
            keep = P - first
            logits = forward_logits(model, x.to(device), mask.to(device), logits_to_keep=keep)
            offset = P - logits.shape[1]
            for r, (idx, inp, cont) in enumerate(items):
                start = len(inp) - len(cont) - offset
                lp = torch.log_softmax(logits[r, start:start + len(cont)], dim=-1)
                tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                out[idx] = float(lp.gather(-1, tgt[:, None]).sum().double())
    return out


def mean_stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _supports_shared_context(model: Any) -> bool:
    torch = torch_module()
    return (isinstance(model, torch.nn.Module) and accepts(model, "past_key_values")
            and accepts(model, "use_cache") and accepts(model, "attention_mask"))


def multiple_choice_loglikelihoods(model: Any, tokenizer: Any, docs: Sequence[MCDoc], *,
                                   batch_size: int = DEFAULT_MC_BATCH, max_length: int | None = None,
                                   share_context: bool = True, progress: bool = False) -> list[list[float]]:
    """Log-likelihood of every choice of every doc (``result[doc][choice]``, nats).

    With ``share_context`` (default) and a Hugging Face torch model that takes ``past_key_values``, a doc
    whose choices share one context runs that context once and scores all continuations from its KV cache
    (one forward for the context, one batched forward for the continuations). The numbers are those of
    :func:`loglikelihoods` up to float rounding; other docs (winogrande, truncated inputs, models without
    a cache) go through :func:`loglikelihoods`.
    """
    torch = torch_module()
    if max_length is None:
        mp = max_positions(model)
        max_length = min(2048, mp) if mp else 2048
    out: list[list[float | None]] = [[None] * len(d.continuations) for d in docs]
    plain: list[tuple[int, int, str, str]] = []
    shared: list[tuple[int, list[int], list[list[int]]]] = []
    use_shared = share_context and _supports_shared_context(model)
    for di, d in enumerate(docs):
        pairs = [encode_pair(tokenizer, c, k) for c, k in zip(d.contexts, d.continuations)] if use_shared else []
        if (use_shared and len(set(d.contexts)) == 1 and d.contexts[0] and pairs[0][0]
                and all(p[0] == pairs[0][0] and p[1] for p in pairs)
                and len(pairs[0][0]) + max(len(p[1]) for p in pairs) <= max_length + 1):
            shared.append((di, pairs[0][0], [p[1] for p in pairs]))
        else:
            plain.extend((di, ci, c, k) for ci, (c, k) in enumerate(zip(d.contexts, d.continuations)))
    if plain:
        lls = loglikelihoods(model, tokenizer, [(c, k) for _, _, c, k in plain], batch_size=batch_size,
                             max_length=max_length, progress=progress)
        for (di, ci, _, _), v in zip(plain, lls):
            out[di][ci] = v
    if shared:
        device = model_device(model)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = 0 if pad is None else pad
        keep_last = accepts(model, "logits_to_keep")
        with EvalMode(model):
            for di, ctx, conts in progress_bar(shared, len(shared), "multiple choice", progress):
                x = torch.tensor([ctx], dtype=torch.long, device=device)
                kw = {"logits_to_keep": 1} if keep_last else {}
                o1 = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, **kw)
                first = torch.log_softmax(o1.logits[0, -1].float(), dim=-1)
                past = o1.past_key_values
                n = len(conts)
                longest = max(len(k) for k in conts) - 1
                rest = None
                if longest > 0:
                    if not hasattr(past, "batch_repeat_interleave"):
                        for ci in range(len(conts)):
                            out[di][ci] = loglikelihoods(model, tokenizer, [(docs[di].contexts[ci],
                                                         docs[di].continuations[ci])], max_length=max_length)[0]
                        continue
                    past.batch_repeat_interleave(n)
                    x2 = torch.full((n, longest), pad, dtype=torch.long)
                    m2 = torch.zeros((n, len(ctx) + longest), dtype=torch.long)
                    m2[:, :len(ctx)] = 1
                    for ci, k in enumerate(conts):
                        x2[ci, :len(k) - 1] = torch.tensor(k[:-1], dtype=torch.long)
                        m2[ci, len(ctx):len(ctx) + len(k) - 1] = 1
                    o2 = model(input_ids=x2.to(device), attention_mask=m2.to(device), past_key_values=past,
                               use_cache=True)
                    rest = torch.log_softmax(o2.logits.float(), dim=-1)
                for ci, k in enumerate(conts):
                    v = float(first[k[0]].double())
                    if len(k) > 1:
                        assert rest is not None  # longest > 0 whenever a continuation has 2+ tokens
                        tgt = torch.tensor(k[1:], dtype=torch.long, device=rest.device)
                        v += float(rest[ci, :len(k) - 1].gather(-1, tgt[:, None]).sum().double())
                    out[di][ci] = v
    return out  # type: ignore[return-value]


def score_multiple_choice(model: Any, tokenizer: Any, docs: Sequence[MCDoc], *, metrics: Sequence[str] = ("acc", "acc_norm"),
                          batch_size: int = DEFAULT_MC_BATCH, max_length: int | None = None,
                          share_context: bool = True, progress: bool = False) -> dict[str, float]:
    """Accuracy of ``model`` on multiple-choice ``docs``.

    ``acc``: the choice with the largest summed log-probability is the prediction. ``acc_norm``: the
    largest log-probability divided by ``len(choice)`` (characters, as lm-evaluation-harness). Ties go to
    the first choice (``argmax``). Also returns ``<metric>_stderr`` (sample standard error of the mean).

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        docs: items built with :func:`build_doc` (or by hand).
        metrics: any of ``acc``, ``acc_norm``.
        batch_size: sequences per forward on the plain path (default 8).
        max_length: longest input (default ``min(2048, max_position_embeddings)``).
        share_context: run a shared context once and score the choices from its KV cache (default True).
        progress: show a progress bar.

    Example:
        >>> score_multiple_choice(model, tok, [build_doc("piqa", row) for row in rows])   # doctest: +SKIP
        {'acc': 0.62, 'acc_stderr': 0.011, 'acc_norm': 0.61, 'acc_norm_stderr': 0.011}
    """
    all_lls = multiple_choice_loglikelihoods(model, tokenizer, docs, batch_size=batch_size, max_length=max_length,
                                             share_context=share_context, progress=progress)
    per_metric: dict[str, list[float]] = {m: [] for m in metrics}
    for d, ll in zip(docs, all_lls):
        if "acc" in per_metric:
            per_metric["acc"].append(float(argmax(ll) == d.gold))
        if "acc_norm" in per_metric:
            normed = [v / max(len(c), 1) for v, c in zip(ll, d.choices)]
            per_metric["acc_norm"].append(float(argmax(normed) == d.gold))
    result: dict[str, float] = {}
    for m, vals in per_metric.items():
        result[m] = sum(vals) / len(vals) if vals else float("nan")
        result[f"{m}_stderr"] = mean_stderr(vals)
    return result


def argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best
