"""``residual``: first-order effect of removing a whole head or channel *with* least-squares compensation.

With ``compensate=True`` a removed input ``x_j`` of ``down_proj`` (a head's ``head_dim`` inputs of
``o_proj``) is replaced by its regression on the inputs that stay. What is lost is then only the residual
``r_j = x_j − x̂_j``, and to first order the loss changes by ``−Σₜ r_tj · ∂L/∂x_tj``. The ``activation``
criterion scores ``x`` itself, so it keeps channels that the compensation would have replaced almost for
free; this one scores what compensation cannot replace. With ``Λ = G_KK⁻¹`` (the damped second moments of
the kept inputs, the compensator's statistics of the dense model) the residual of every kept channel against
all other kept ones is ``r = Λx / diag(Λ)``; for a head block ``H`` it is ``Λ_HH⁻¹ (Λx)_H``. A group criterion:
its scorer is :class:`compressor.algorithm.activation_scorer.ActivationScorer` with these transforms."""
from __future__ import annotations

import torch

from compressor.algorithm.criteria import GroupCriterion, register_group_criterion

RESIDUAL = register_group_criterion(GroupCriterion("residual", uses_compensation=True))


@torch.no_grad()
def residual_transform(gram: torch.Tensor, kept: torch.Tensor, width: int, damp: float) -> torch.Tensor:
    """The ``[in, in]`` matrix ``M`` with ``x @ M`` = each kept group's residual against the other kept inputs
    (zero for inputs not kept). ``gram``: ``Σ x xᵀ`` of the dense inputs; ``kept``: bool ``[in]``;
    ``width``: inputs per group (1 for MLP channels, ``head_dim`` for heads); ``damp``: the compensator's
    relative damping."""
    n = gram.shape[0]
    K = torch.nonzero(kept).flatten()
    out = torch.zeros(n, n, dtype=torch.float32, device=gram.device)
    if K.numel() == 0:
        return out
    g = gram.double()[K][:, K]
    lam = damp * float(g.diagonal().mean()) + 1e-12
    prec = torch.linalg.inv(g + lam * torch.eye(len(K), dtype=g.dtype, device=g.device))
    if width == 1:
        m = prec / prec.diagonal()[None, :]
    else:
        k = len(K) // width
        blocks = prec.view(k, width, k, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [k, w, w]
        pinv = torch.linalg.inv(blocks)
        cols = prec.view(len(K), k, width).permute(1, 0, 2)  # [k, K, w]: each head's columns of Λ
        m = (cols @ pinv.transpose(1, 2)).permute(1, 0, 2).reshape(len(K), len(K))
    out[K[:, None], K[None, :]] = m.float()
    return out
