"""The fine-tune loss: next-token cross-entropy, optionally mixed with distillation, computed in chunks.

With a 49 k-token vocabulary the logits of one batch (4 × 256 tokens) take 200 MB in float32, and a stock
``model(input_ids, labels=...)`` keeps three such tensors alive (logits, the shifted copy, log-softmax) until
the backward pass. :func:`lm_loss` instead runs the decoder once, then the LM head and the loss over
``chunk_tokens`` positions at a time, forming the gradient w.r.t. the hidden states as it goes, so only one
chunk's logits exist at any moment and nothing is recomputed. The value and the gradients are the same as
the stock loss (tested), to float rounding.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor.modeling.adapters import unwrap


def supports_chunked_loss(model: nn.Module) -> bool:
    """True if ``model`` (a causal LM, possibly peft-wrapped) computes ``logits = lm_head(decoder(x))`` with no
    post-processing, so the loss may be computed from the decoder's hidden states."""
    lm = unwrap(model)
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    return callable(getattr(lm, "get_decoder", None)) and callable(getattr(lm, "get_output_embeddings", None))


class _HeadLoss(torch.autograd.Function):
    """LM head + loss over chunks of positions; the gradient w.r.t. the hidden states is formed chunk by
    chunk in the forward pass (``dlogits = softmax - target``), so no logits are kept and none recomputed.
    The LM head's weights are frozen during pruning (no gradient is produced for them)."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, th, ce_scale, kl_scale, chunk):
        grad_h = torch.empty_like(h)
        ce_sum = h.new_zeros((), dtype=torch.float32)
        kl_sum = h.new_zeros((), dtype=torch.float32)
        for s in range(0, h.shape[0], chunk):
            e = min(s + chunk, h.shape[0])
            z = F.linear(h[s:e], weight, bias).float()  # this chunk's logits; turned into the gradient in place
            yc = y[s:e]
            valid = yc != -100
            tgt = torch.where(valid, yc, 0)
            lse = torch.logsumexp(z, dim=-1)
            ce_sum += ((lse - z.gather(1, tgt[:, None]).squeeze(1)) * valid).sum()
            rows = ce_scale * valid.to(z.dtype)  # each position's weight of CE
            logp = z.sub_(lse[:, None])  # in place
            tp = None
            if th is not None:
                tlogp = F.linear(th[s:e], weight, bias).float()
                tlogp -= torch.logsumexp(tlogp, dim=-1, keepdim=True)
                tp = tlogp.exp()
                kl_sum += torch.dot(tp.view(-1), tlogp.sub_(logp).view(-1))  # KL(t ‖ s)
                del tlogp
            g = logp.exp_()  # softmax p, in place
            # d(ce_scale · CE + kl_scale · KL)/dlogits = ce_scale · (p − onehot) + kl_scale · (p − tp)
            g.mul_((rows + kl_scale)[:, None])
            if tp is not None:
                g.sub_(tp, alpha=kl_scale)
                del tp
            g.scatter_add_(1, tgt[:, None], -rows[:, None])
            grad_h[s:e] = (g.to(weight.dtype) @ weight).to(h.dtype)
            del g, z, logp
        ctx.save_for_backward(grad_h)
        return torch.stack([ce_scale * ce_sum + kl_scale * kl_sum, ce_sum, kl_sum])

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        # only the first output (the loss) is differentiated; the ce/kl sums are for logging
        return grad_h * grad_out[0].to(grad_h.dtype), None, None, None, None, None, None, None


def lm_loss(model: nn.Module, input_ids: torch.Tensor, *, chunk_tokens: int = 256,
            teacher_hidden: torch.Tensor | None = None, distill: float = 0.0,
            teacher_layers: tuple[torch.Tensor, ...] | None = None,
            distill_hidden: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of ``model`` on ``input_ids`` (labels = the inputs shifted by one), logits in chunks.

    Args:
        model: a causal LM (peft-wrapped or not) for which :func:`supports_chunked_loss` is True.
        input_ids: ``[batch, seq]`` token ids (no padding).
        chunk_tokens: positions per LM-head chunk (default 256).
        teacher_hidden: final hidden states of the teacher (``decoder_hidden(teacher, input_ids)``) when
            distilling; the teacher shares the LM head.
        distill: weight of the distillation term: ``(1 - distill) · CE + distill · KL``, CE averaged over the
            ``batch × (seq − 1)`` targets, KL over all ``batch × seq`` positions.
        teacher_layers: the teacher's per-layer hidden states (each decoder layer's output, the last after the
            final norm)
            for hidden-state distillation; ``distill_hidden`` is its weight (:func:`hidden_match`, added).

    Returns:
        ``(loss, ce)``: the loss to minimise, and the plain cross-entropy (detached) for logging.
    """
    lm: Any = unwrap(model)
    use_hidden = teacher_layers is not None and distill_hidden > 0
    hidden, layers = _decoder_states(lm, input_ids, use_hidden)
    head = lm.get_output_embeddings()
    if head.weight.requires_grad:
        raise ValueError("the chunked loss needs a frozen LM head")
    b, t, d = hidden.shape
    y = torch.full_like(input_ids, -100)
    y[:, :-1] = input_ids[:, 1:]
    use_kl = teacher_hidden is not None and distill > 0
    n_ce = max(1, b * (t - 1))
    ce_scale = (1 - distill if use_kl else 1.0) / n_ce
    kl_scale = distill / (b * t) if use_kl else 0.0
    th = teacher_hidden.reshape(b * t, d).detach() if use_kl and teacher_hidden is not None else None
    out = _HeadLoss.apply(hidden.reshape(b * t, d), head.weight, head.bias, y.reshape(b * t), th, ce_scale,
                          kl_scale, int(chunk_tokens))
    loss = out[0]
    if use_hidden and layers is not None and teacher_layers is not None:
        loss = loss + distill_hidden * hidden_match(layers, teacher_layers)
    return loss, (out[1] / n_ce).detach()


def hidden_match(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Hidden-state distillation term: the mean over layers and tokens of ``‖h_s − h_t‖² / ‖h_t‖²`` (each
    token's error relative to the dense model's own norm, so layers and outlier tokens weigh alike)."""
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} hidden-state layers, teacher {len(teacher)}")
    terms = [((s.float() - t.float().detach()) ** 2).sum(-1).div((t.float() ** 2).sum(-1).clamp_min(1e-6)).mean()
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def _decoder_states(lm: Any, input_ids: torch.Tensor,
                    all_layers: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Hidden states after the decoder's last norm (what the LM head reads) and, with ``all_layers``, every
    decoder layer's output (the last one after the final norm)."""
    out = lm.get_decoder()(input_ids=input_ids, use_cache=False, output_hidden_states=all_layers)
    return out.last_hidden_state, (tuple(out.hidden_states[1:]) if all_layers else None)


def decoder_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the last norm) of ``model``'s decoder, without gradients."""
    with torch.no_grad():
        return _decoder_states(unwrap(model), input_ids)[0]


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``KL(teacher ‖ student)`` of the next-token distributions (temperature 1)."""
    v = student_logits.shape[-1]
    s = torch.log_softmax(student_logits.float().reshape(-1, v), dim=-1)
    t = torch.log_softmax(teacher_logits.float().reshape(-1, v), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def training_loss(model: nn.Module, input_ids: torch.Tensor, *, distill: float = 0.0, chunk_tokens: int = 0,
                  teacher=None, forward: nn.Module | None = None,
                  distill_hidden: float = 0.0) -> tuple[torch.Tensor, float]:
    """The pruning fine-tune's loss on one micro-batch: the one place that owns its branches.

    Args:
        model: the peft-wrapped model being pruned.
        input_ids: ``[batch, seq]``.
        distill: weight of ``KL(dense ‖ pruned)``; the teacher's outputs come from running ``model`` inside the
            ``teacher()`` context (LoRA and masks off), so no second copy of the weights exists.
        chunk_tokens: > 0 computes the LM head and loss in chunks (:func:`lm_loss`); 0 uses the stock
            ``forward(input_ids, labels=...)`` loss (needed under DDP).
        teacher: a callable returning a context manager that switches ``model`` to the dense teacher.
        forward: the module to call for the stock loss (the DDP wrapper when data-parallel; default ``model``).
        distill_hidden: weight of the hidden-state term :func:`hidden_match` (per-layer outputs of the same
            teacher pass).

    Returns:
        ``(loss, lm_loss)``: the differentiable objective and the plain cross-entropy (a float, for logging).
    """
    use_hidden = distill_hidden > 0
    if (distill > 0 or use_hidden) and teacher is None:
        raise ValueError("distillation needs a teacher context")
    if chunk_tokens > 0:
        th, tl = None, None
        if distill > 0 or use_hidden:
            with torch.no_grad(), teacher():
                th, tl = _decoder_states(unwrap(model), input_ids, use_hidden)
        chunk_loss, ce = lm_loss(model, input_ids, chunk_tokens=chunk_tokens, teacher_hidden=th, distill=distill,
                                 teacher_layers=tl, distill_hidden=distill_hidden)
        return chunk_loss, float(ce)
    out = (forward or model)(input_ids=input_ids, labels=input_ids, output_hidden_states=use_hidden)
    loss: torch.Tensor = out.loss
    ce_value = float(loss.detach())
    if distill > 0 or use_hidden:
        with torch.no_grad(), teacher():
            t_out = model(input_ids=input_ids, output_hidden_states=use_hidden)
        if distill > 0:
            loss = (1 - distill) * loss + distill * distill_loss(out.logits, t_out.logits)
        if use_hidden:
            loss = loss + distill_hidden * hidden_match(tuple(out.hidden_states[1:]), tuple(t_out.hidden_states[1:]))
    return loss, ce_value
