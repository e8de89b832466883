"""Perplexity with non-overlapping windows, the protocol of the pruning papers (SparseGPT, LLM-Pruner, LoRAPrune).

The whole test file is tokenized once without special tokens, cut into non-overlapping ``seq_len``-token
windows (the incomplete tail is dropped), every token but the first of each window is scored, and
``ppl = exp(mean NLL over all scored tokens)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from compressor.core.errors import CalibrationError, ConfigError, NonFiniteError
from compressor.evaluation.model import (
    EvalMode,
    forward_logits,
    max_positions,
    model_device,
    progress_bar,
    torch_module,
)


def default_add_bos(model: Any, tokenizer: Any) -> bool:
    """Whether perplexity windows of ``model`` start with BOS by default: for models that need it (Gemma, see
    :func:`compressor.modeling.architectures.needs_bos`) whose tokenizer has one; the papers' no-BOS protocol otherwise."""
    from compressor.modeling.architectures import needs_bos

    config = getattr(model, "config", None) or {}
    return needs_bos(config) and getattr(tokenizer, "bos_token_id", None) is not None


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
    torch = torch_module()
    import torch.nn.functional as F

    from calibration import check_seq_len, tokenize_text

    max_pos = max_positions(model)
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

    device = model_device(model)
    total_nll = 0.0
    total_tok = 0
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    with EvalMode(model):
        for bi, batch in enumerate(progress_bar(batches, len(batches), "perplexity", progress)):
            lens = {len(w) for w in batch}
            groups = [batch] if len(lens) == 1 else [[w] for w in batch]  # a short tail goes alone
            for group in groups:
                x = torch.tensor(group, dtype=torch.long, device=device)
                logits = forward_logits(model, x)
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
