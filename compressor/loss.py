"""The fine-tune loss: next-token cross-entropy, optionally mixed with distillation, computed in chunks.

With a 49 k-token vocabulary the logits of one batch (4 × 256 tokens) take 200 MB in float32, and a stock
``model(input_ids, labels=...)`` keeps three such tensors alive (logits, the shifted copy, log-softmax) until
the backward pass. :func:`lm_loss` instead runs the decoder once, then the LM head and the loss over
``chunk_tokens`` positions at a time under activation checkpointing, so only one chunk's logits exist at
any moment. The value and the gradients are the same as the stock loss (tested), to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def supports_chunked_loss(model: nn.Module) -> bool:
    """True if ``model`` (a causal LM, possibly peft-wrapped) computes ``logits = lm_head(decoder(x))`` with no
    post-processing, so the loss may be computed from the decoder's hidden states."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    return callable(getattr(lm, "get_decoder", None)) and callable(getattr(lm, "get_output_embeddings", None))


def _chunk(lm_head: nn.Module, h: torch.Tensor, y: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
    """``[sum of CE over targets != -100, sum over rows of KL(teacher ‖ student)]`` of one chunk."""
    logits = lm_head(h).float()
    ce = F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")
    if th is None:
        return torch.stack([ce, ce.new_zeros(())])
    with torch.no_grad():
        t = torch.log_softmax(lm_head(th).float(), dim=-1)
    kl = F.kl_div(torch.log_softmax(logits, dim=-1), t, log_target=True, reduction="sum")
    return torch.stack([ce, kl])


def lm_loss(model: nn.Module, input_ids: torch.Tensor, *, chunk_tokens: int = 1024,
            teacher_hidden: torch.Tensor | None = None, distill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of ``model`` on ``input_ids`` (labels = the inputs shifted by one), logits in chunks.

    Args:
        model: a causal LM (peft-wrapped or not) for which :func:`supports_chunked_loss` is True.
        input_ids: ``[batch, seq]`` token ids (no padding).
        chunk_tokens: positions per LM-head chunk (default 1024).
        teacher_hidden: final hidden states of the teacher (``decoder_hidden(teacher, input_ids)``) when
            distilling; the teacher shares the LM head.
        distill: weight of the distillation term: ``(1 - distill) · CE + distill · KL``, CE averaged over the
            ``batch × (seq − 1)`` targets, KL over all ``batch × seq`` positions.

    Returns:
        ``(loss, ce)``: the loss to minimise, and the plain cross-entropy (detached) for logging.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    lm_head = lm.get_output_embeddings()
    b, t, d = hidden.shape
    y = torch.full_like(input_ids, -100)
    y[:, :-1] = input_ids[:, 1:]
    h, y = hidden.reshape(b * t, d), y.reshape(b * t)
    th = teacher_hidden.reshape(b * t, d) if teacher_hidden is not None else None
    sums = hidden.new_zeros(2, dtype=torch.float32)
    for s in range(0, b * t, chunk_tokens):
        e = min(s + chunk_tokens, b * t)
        part = checkpoint(_chunk, lm_head, h[s:e], y[s:e], None if th is None else th[s:e], use_reentrant=False)
        sums = sums + part
    ce = sums[0] / max(1, b * (t - 1))
    if teacher_hidden is None or distill == 0:
        return ce, ce.detach()
    kl = sums[1] / (b * t)
    return (1 - distill) * ce + distill * kl, ce.detach()


def decoder_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the last norm) of ``model``'s decoder, without gradients."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        return lm.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
