"""Group scores from the inputs of ``o_proj`` and ``down_proj`` and their gradients (criterion ``activation``).

Removing an MLP channel ``c`` sets ``down_proj``'s input ``x[..., c]`` to 0; removing a query head sets its
``head_dim`` columns of ``o_proj``'s input to 0. To first order the loss then changes by
``−Σₜ Σ_{j∈group} xₜⱼ · ∂L/∂xₜⱼ``: the exact first-order effect of removing the *whole group* (a head's
q, k, v rows included, since its output reaches the residual stream only through ``o_proj``). Per step we
score each group by the squared per-sequence effect summed over the batch (a Fisher-style estimate,
Molchanov et al. 2019): ``Σ_b (Σₜ Σⱼ x_btj g_btj)²``.

Only activations and their gradients are read: no weight gradient, no LoRA factors, no weight-sized memory.
The hooks run after the masking hooks, so masked groups score 0.

With per-layer transforms set (:meth:`ActivationScorer.set_transforms`, criterion ``residual``) the score
reads ``x @ M`` in place of ``x``: the part of each group's input that compensation cannot replace.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.algorithm.groups import ModelGroups, decoder_layers, projection
from compressor.algorithm.scoring import LayerScores


class ActivationScorer:
    """Accumulates per-group first-order scores during backward passes; :meth:`collect` returns and resets."""

    def __init__(self, model: nn.Module, groups: ModelGroups):
        self.groups = groups
        self._handles: list = []
        self._acc: list[dict[str, torch.Tensor | None]] = [{"heads": None, "channels": None} for _ in groups.layers]
        #: per layer and kind, ``M`` with the scored input ``x @ M`` (None: ``x`` itself)
        self.transforms: list[dict[str, torch.Tensor | None]] = [{"heads": None, "channels": None}
                                                                 for _ in groups.layers]
        for i, (layer, lg) in enumerate(zip(decoder_layers(model), groups.layers)):
            self._handles.append(projection(layer, "o_proj").register_forward_pre_hook(self._hook(i, "heads", lg.head_dim)))
            self._handles.append(projection(layer, "down_proj").register_forward_pre_hook(self._hook(i, "channels", 1)))

    def _hook(self, i: int, kind: str, width: int):
        def pre_hook(module, args):
            x = args[0]
            if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
                return None  # teacher pass, evaluation, or a recomputation without autograd
            xd = x.detach()

            def grad_hook(g):
                with torch.no_grad(), torch.autocast(device_type=xd.device.type, enabled=False):
                    m = self.transforms[i][kind]
                    xs = xd.float() if m is None else xd.float() @ m.to(xd.device)
                    prod = (xs * g.float()).sum(dim=-2)  # [batch, features]: sum over positions
                    if width > 1:
                        prod = prod.view(prod.shape[0], -1, width).sum(-1)  # [batch, heads]
                    val = prod.double().pow(2).sum(0)
                    acc = self._acc[i][kind]
                    self._acc[i][kind] = val if acc is None else acc + val
                return None

            x.register_hook(grad_hook)
            return None

        return pre_hook

    def set_transforms(self, transforms: list[dict[str, torch.Tensor | None]]) -> None:
        """Score ``x @ M`` instead of ``x`` (per layer, ``{"heads": M, "channels": M}``; None: ``x``)."""
        self.transforms = transforms

    def collect(self) -> list[LayerScores]:
        out = []
        for acc, lg in zip(self._acc, self.groups.layers):
            h = acc["heads"] if acc["heads"] is not None else torch.zeros(lg.num_heads, dtype=torch.double)
            c = acc["channels"] if acc["channels"] is not None else torch.zeros(lg.intermediate_size, dtype=torch.double)
            out.append(LayerScores(h.cpu(), c.cpu()))
        self.reset()
        return out

    def reset(self) -> None:
        self._acc = [{"heads": None, "channels": None} for _ in self.groups.layers]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.transforms = [{"heads": None, "channels": None} for _ in self.groups.layers]
