"""Least-squares compensation of removed groups (``compensate=True``).

When MLP channels (or query heads) are removed, ``down_proj`` (``o_proj``) loses the contribution of their
input columns. Over calibration inputs ``x`` the best linear stand-in from the columns that stay is

    W_K' = W_K + W_R · G_RK · G_KK⁻¹,        G = Σ x xᵀ  (the inputs' second moments)

(the removed inputs regressed on the kept ones; the same closed form as OBS / SlimGPT for a structured
removal). :class:`Compensator` accumulates ``G`` per layer from the inputs of ``o_proj`` and ``down_proj``
while the model is still dense (the training steps before the first mask update, topped up by forward
passes over further calibration sequences to ``compensate_tokens``: with fewer tokens than inputs the
regression is under-determined and its stand-in fits the calibration batches, not the text), and at every
mask update folds the correction for the newly removed groups into the frozen base weight ``W0`` of the kept
columns (``W = W0 + BA`` is what is regressed; only ``W0`` changes, LoRA keeps training). The masked model,
the sliced model and the merged model still compute the same function.

Memory: one ``in × in`` float32 matrix per projection and layer (SmolLM2-135M: 30 × (1536² + 576²) floats,
0.32 GiB), freed after the last mask update.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import lora_parts
from .errors import ConfigError
from .groups import ModelGroups, decoder_layers, projection

KINDS = (("channels", "down_proj"), ("heads", "o_proj"))

#: Default calibration tokens behind the statistics (``compensate_tokens`` None): this many per input of the widest
#: compensated projection, at most :data:`TOKENS_CAP`. Measured on SmolLM2-135M at 50 % (60-step grid,
#: benchmarks/results/screen_50_60_v5.json, v6): 6,144 tokens (4 per input) 107.0, 24,576 (16) 96.2, 65,536 (43)
#: 92.7 WikiText-2 perplexity; fewer tokens than inputs fit the calibration batches, not the text. The cap bounds the
#: extra forward passes on wide models (Qwen2.5-0.5B: 4,864 inputs, 13 per input at the cap).
TOKENS_PER_INPUT = 64
TOKENS_CAP = 65_536


def _inputs_kept(mask: tuple[torch.Tensor, torch.Tensor], kind: str, head_dim: int) -> torch.Tensor:
    """Which inputs of the compensated projection of ``kind`` a layer's ``(heads, channels)`` masks keep."""
    return mask[1] if kind == "channels" else mask[0].repeat_interleave(head_dim)


def _in_backward() -> bool:
    """Whether autograd is running a backward pass (gradient checkpointing re-runs forwards there: those
    inputs were already counted)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() >= 0


class Compensator:
    """Second moments of the inputs of ``o_proj`` / ``down_proj``, and the least-squares fold-in."""

    def __init__(self, model: nn.Module, groups: ModelGroups, damp: float = 0.01):
        self.groups, self.damp = groups, float(damp)
        self.model = model
        self.collecting = True
        self.forced = False  # collect in no-grad passes too (see collect_from)
        #: tokens behind the statistics so far (every projection sees the same tokens)
        self.tokens = 0
        self.gram: list[dict[str, torch.Tensor | None]] = [{"channels": None, "heads": None} for _ in groups.layers]
        self._handles: list = []
        for i, layer in enumerate(decoder_layers(model)):
            for kind, name in KINDS:
                self._handles.append(projection(layer, name).register_forward_pre_hook(self._hook(i, kind)))

    def _hook(self, i: int, kind: str):
        def pre_hook(module, args):
            # training forward passes only (the teacher and evaluation run without gradients)
            if not self.collecting or not (torch.is_grad_enabled() or self.forced) or _in_backward():
                return None
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if i == 0 and kind == KINDS[0][0]:
                self.tokens += x.shape[0]
            with torch.autocast(device_type=x.device.type, enabled=False):  # float32 sums under --amp too
                g = x.t() @ x
            cur = self.gram[i][kind]
            self.gram[i][kind] = g if cur is None else cur.add_(g)
            return None

        return pre_hook

    @torch.no_grad()
    def collect_from(self, model: nn.Module, batches: list[torch.Tensor]) -> None:
        """Collect the statistics from forward passes over ``batches`` (no training step), e.g. before a saved
        plan masks the model at once."""
        self.forced = True
        try:
            for b in batches:
                model(input_ids=b)
        finally:
            self.forced = False

    def widest_input(self) -> int:
        """The largest input width of a compensated projection (``intermediate_size`` or ``heads·head_dim``)."""
        return max(max(lg.intermediate_size, lg.num_heads * lg.head_dim) for lg in self.groups.layers)

    def stop_collecting(self, accelerator: Any = None) -> None:
        """End collection; data-parallel runs average the statistics over ranks so every rank folds the same
        correction."""
        if self.collecting and accelerator is not None:
            for g in self.gram:
                for k, v in g.items():
                    if v is not None:
                        g[k] = accelerator.reduce(v.to(accelerator.device), "mean").cpu()
        self.collecting = False

    def _clear(self) -> None:
        self.gram = [{"channels": None, "heads": None} for _ in self.groups.layers]
        self.tokens = 0

    def restart(self) -> None:
        """Forget the statistics and collect afresh (``compensate_stats='current'``: before every mask update)."""
        self._clear()
        self.collecting = True

    def release(self) -> None:
        """Drop the statistics and the hooks (after the last mask update)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._clear()
        self.collecting = False

    @torch.no_grad()
    def fold(self, old: list[tuple[torch.Tensor, torch.Tensor]], new: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Fold the correction for groups kept in ``old`` but not in ``new`` (per layer ``(heads, channels)``
        bool masks) into ``W0``. Returns the number of projections changed."""
        changed = 0
        for i, (layer, lg) in enumerate(zip(decoder_layers(self.model), self.groups.layers)):
            for kind, name in KINDS:
                k_old, k_new = _inputs_kept(old[i], kind, lg.head_dim), _inputs_kept(new[i], kind, lg.head_dim)
                removed = k_old & ~k_new
                g = self.gram[i][kind]
                if not bool(removed.any()) or not bool(k_new.any()) or g is None:
                    continue
                mod = projection(layer, name)
                base: Any = getattr(mod, "base_layer", mod)
                w0 = base.weight
                if not w0.dtype.is_floating_point:
                    raise ConfigError("compensate needs float base weights; it cannot run with base_bits=8")
                w = w0.detach().float().clone()
                A, B, s = lora_parts(mod)
                if A is not None:
                    w += (B.detach().float() @ A.detach().float()) * s
                K = torch.nonzero(k_new).flatten()
                R = torch.nonzero(removed).flatten()
                gd = g.double()
                gkk = gd[K][:, K]
                lam = self.damp * float(gkk.diagonal().mean()) + 1e-12
                gkk = gkk + lam * torch.eye(len(K), dtype=gd.dtype, device=gd.device)
                x = torch.linalg.solve(gkk, gd[K][:, R])  # [K, R] = G_KK⁻¹ G_KR
                delta = w[:, R].double() @ x.t().to(w.device)  # [out, K] (statistics may sit on another device)
                # in float32, rounded once to W0's dtype (a base held in bfloat16 under autocast)
                w0[:, K] = (w0[:, K].float() + delta.float()).to(w0.dtype)
                changed += 1
        return changed

    @torch.no_grad()
    def residual_transforms(self, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor | None]]:
        """Per layer, the transforms of criterion ``residual`` (:func:`compressor.criteria.residual.residual_transform`)
        for the kept ``(heads, channels)`` masks, from these statistics."""
        from .criteria.residual import residual_transform

        out: list[dict[str, torch.Tensor | None]] = []
        for i, lg in enumerate(self.groups.layers):
            d: dict[str, torch.Tensor | None] = {}
            for kind, _ in KINDS:
                g = self.gram[i][kind]
                if g is None:
                    d[kind] = None
                    continue
                width = 1 if kind == "channels" else lg.head_dim
                d[kind] = residual_transform(g, _inputs_kept(kept[i], kind, lg.head_dim), width, self.damp)
            out.append(d)
        return out

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"collecting": self.collecting, "tokens": self.tokens,
                "gram": [{k: v for k, v in g.items() if v is not None} for g in self.gram]}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.collecting = sd["collecting"]
        self.tokens = int(sd.get("tokens", 0))
        self.gram = [{"channels": g.get("channels"), "heads": g.get("heads")} for g in sd["gram"]]
        if len(self.gram) != self.groups.num_layers:
            self.gram = [{"channels": None, "heads": None} for _ in self.groups.layers]


def base_weights(model: nn.Module, groups: ModelGroups) -> dict[str, Any]:
    """The base weights compensation may change (``o_proj`` and ``down_proj`` of every layer), by name."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        for _, name in KINDS:
            mod = projection(layer, name)
            out[f"{i}.{name}"] = getattr(mod, "base_layer", mod).weight
    return out
