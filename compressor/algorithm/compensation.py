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
0.32 GiB; Llama-3.1-8B: 26.5 GiB), freed after the last mask update. Where they are kept (``store``):

- ``device``: on the model's device, summed from the training passes before the first mask update and topped
  up by forward passes;
- ``host``: the same sums moved to host memory after each pass; a fold moves one layer's matrix to the model's
  device for its solve;
- ``disk``: one file per layer, collected at the first mask update by forward passes that each stop after the
  last layer of a group of layers (a group's matrices in memory at a time), read back one layer at a time at each
  fold. Nothing of the training passes is summed: every token comes from those passes.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.algorithm.groups import ModelGroups, decoder_layers, projection
from compressor.core.errors import ConfigError
from compressor.modeling.adapters import lora_parts

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


#: where :class:`Compensator` keeps its statistics
STORES = ("device", "host", "disk")


class _StopForward(Exception):
    """Raised by a hook to end a statistics pass after the last layer it needs."""


class Compensator:
    """Second moments of the inputs of ``o_proj`` / ``down_proj``, and the least-squares fold-in.

    Args:
        model, groups: the (LoRA-wrapped) model and its groups.
        damp: ridge term of the solve, as a share of the mean diagonal.
        store: ``device``, ``host`` or ``disk`` (see the module doc).
        folder: ``disk``: where the per-layer files go (default a temporary folder, removed by :meth:`release`).
        layers_per_pass: ``disk``: layers whose statistics one pass collects (default all).
    """

    def __init__(self, model: nn.Module, groups: ModelGroups, damp: float = 0.01, *, store: str = "device",
                 folder: str | Path | None = None, layers_per_pass: int | None = None):
        if store not in STORES:
            raise ConfigError(f"compensation store {store!r} is not valid; use one of {', '.join(STORES)}")
        self.groups, self.damp = groups, float(damp)
        self.model = model
        self.store = store
        self.collecting = True
        self.forced = False  # collect in no-grad passes too (see collect_from)
        #: tokens behind the statistics so far (every projection sees the same tokens)
        self.tokens = 0
        self.gram: list[dict[str, torch.Tensor | None]] = [{"channels": None, "heads": None} for _ in groups.layers]
        #: ``disk``: the layers the hooks collect now (none during training passes)
        self.active: set[int] = set() if store == "disk" else set(range(groups.num_layers))
        self.layers_per_pass = max(1, int(layers_per_pass or groups.num_layers))
        self._own_folder = folder is None
        self.folder = Path(folder) if folder is not None else None
        self._handles: list = []
        for i, layer in enumerate(decoder_layers(model)):
            for kind, name in KINDS:
                self._handles.append(projection(layer, name).register_forward_pre_hook(self._hook(i, kind)))

    def _hook(self, i: int, kind: str):
        def pre_hook(module, args):
            # training forward passes only (the teacher and evaluation run without gradients)
            if not self.collecting or not (torch.is_grad_enabled() or self.forced) or _in_backward() \
                    or i not in self.active:
                return None
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if i == min(self.active) and kind == KINDS[0][0] and self._counting:
                self.tokens += x.shape[0]
            with torch.autocast(device_type=x.device.type, enabled=False):  # float32 sums under --amp too
                g = x.t() @ x
            if self.store == "host":
                g = g.cpu()
            cur = self.gram[i][kind]
            self.gram[i][kind] = g if cur is None else cur.add_(g)
            return None

        return pre_hook

    #: whether passes now count their tokens (a ``disk`` collection counts them in its first group only)
    _counting = True

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

    @torch.no_grad()
    def collect_grouped(self, model: nn.Module, batches: list[torch.Tensor]) -> None:
        """``disk``: the statistics of ``batches`` (forward passes, no training step), :attr:`layers_per_pass`
        layers at a time: each pass stops after the last layer of its group, whose matrices are then written to
        :attr:`folder` and dropped from memory."""
        if self.store != "disk":
            self.collect_from(model, batches)
            return
        layers = decoder_layers(model)
        n = len(layers)
        folder = self._folder()
        for start in range(0, n, self.layers_per_pass):
            group = range(start, min(n, start + self.layers_per_pass))
            self.active, self._counting = set(group), start == 0

            def stop(module, args, output):
                raise _StopForward

            handle = layers[group[-1]].register_forward_hook(stop) if group[-1] < n - 1 else None
            try:
                for b in batches:
                    try:
                        self.collect_from(model, [b])
                    except _StopForward:
                        pass
            finally:
                if handle is not None:
                    handle.remove()
            for i in group:
                self._write(folder, i)
        self.active, self._counting = set(), True

    def _folder(self) -> Path:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="lorapress-compensation-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def _write(self, folder: Path, i: int) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.cpu().contiguous() for k, v in self.gram[i].items() if v is not None}
        tmp = folder / f".layer{i}.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(folder / f"layer{i}.safetensors")
        self.gram[i] = {"channels": None, "heads": None}

    def _layer_gram(self, i: int) -> dict[str, torch.Tensor | None]:
        """Layer ``i``'s matrices, from memory or (``disk``) read from its file."""
        if self.store != "disk" or self.collecting:
            return self.gram[i]
        from safetensors.torch import load_file

        path = self._folder() / f"layer{i}.safetensors"
        if not path.is_file():
            raise ConfigError(f"compensation statistics of layer {i} are missing ({str(path)!r}); they are written "
                              f"at the first mask update: start the run again with --force")
        d = load_file(str(path))
        return {"channels": d.get("channels"), "heads": d.get("heads")}

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
        """Drop the statistics and the hooks (after the last mask update). ``disk``: a temporary folder is removed;
        a given folder keeps its files (a checkpoint taken before the last mask update still needs them; the job
        removes them with its checkpoint folder)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._clear()
        self.collecting = False
        if self.store == "disk" and self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @torch.no_grad()
    def fold(self, old: list[tuple[torch.Tensor, torch.Tensor]], new: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Fold the correction for groups kept in ``old`` but not in ``new`` (per layer ``(heads, channels)``
        bool masks) into ``W0``. Returns the number of projections changed."""
        changed = 0
        for i, (layer, lg) in enumerate(zip(decoder_layers(self.model), self.groups.layers)):
            gram = self._layer_gram(i)
            for kind, name in KINDS:
                k_old, k_new = _inputs_kept(old[i], kind, lg.head_dim), _inputs_kept(new[i], kind, lg.head_dim)
                removed = k_old & ~k_new
                g = gram[kind]
                if not bool(removed.any()) or not bool(k_new.any()) or g is None:
                    continue
                mod = projection(layer, name)
                base: Any = getattr(mod, "base_layer", mod)
                w0 = base.weight
                if not w0.dtype.is_floating_point:
                    raise ConfigError("compensate needs float base weights; it cannot run with a quantized base "
                                      "(base_bits)")
                w = w0.detach().float().clone()
                A, B, s = lora_parts(mod)
                if A is not None:
                    w += (B.detach().float() @ A.detach().float()) * s
                # one layer's matrix where the model runs (host/disk stores); only the K rows in float64:
                # about 10·in² bytes at 50 % (not a float64 copy of the whole matrix)
                K = torch.nonzero(k_new).flatten().to(w0.device)
                R = torch.nonzero(removed).flatten().to(w0.device)
                g_k = g.to(w0.device).index_select(0, K)
                gkk, gkr = g_k.index_select(1, K).double(), g_k.index_select(1, R).double()
                del g_k
                lam = self.damp * float(gkk.diagonal().mean()) + 1e-12
                gkk.diagonal().add_(lam)
                x = torch.linalg.solve(gkk, gkr)  # [K, R] = G_KK⁻¹ G_KR
                del gkk, gkr
                delta = w[:, R].double() @ x.t()  # [out, K]
                # in float32, rounded once to W0's dtype (a base held in bfloat16 under autocast)
                w0[:, K] = (w0[:, K].float() + delta.float()).to(w0.dtype)
                changed += 1
        return changed

    @torch.no_grad()
    def residual_transforms(self, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor | None]]:
        """Per layer, the transforms of criterion ``residual`` (:func:`compressor.algorithm.criteria.residual.residual_transform`)
        for the kept ``(heads, channels)`` masks, from these statistics."""
        from compressor.algorithm.criteria.residual import residual_transform

        out: list[dict[str, torch.Tensor | None]] = []
        for i, lg in enumerate(self.groups.layers):
            d: dict[str, torch.Tensor | None] = {}
            gram = self._layer_gram(i)
            for kind, _ in KINDS:
                g = gram[kind]
                if g is None:
                    d[kind] = None
                    continue
                width = 1 if kind == "channels" else lg.head_dim
                d[kind] = residual_transform(g, _inputs_kept(kept[i], kind, lg.head_dim), width, self.damp)
            out.append(d)
        return out

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The statistics (``disk``: the tokens only; the per-layer files stay in :attr:`folder`)."""
        gram = [] if self.store == "disk" else [{k: v for k, v in g.items() if v is not None} for g in self.gram]
        return {"collecting": self.collecting, "tokens": self.tokens, "store": self.store, "gram": gram}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("store", "device") == "disk" and self.store != "disk":
            raise ConfigError("this checkpoint keeps compensation's statistics on disk; resume it with "
                              "--compensate-store disk")
        self.collecting = sd["collecting"]
        self.tokens = int(sd.get("tokens", 0))
        if self.store == "disk":
            self.gram = [{"channels": None, "heads": None} for _ in self.groups.layers]
            if not self.collecting:
                for i in range(self.groups.num_layers):  # refuse now, not at the next fold
                    self._layer_gram(i)
            return
        dev = torch.device("cpu") if self.store == "host" else None
        self.gram = [{"channels": _to(g.get("channels"), dev), "heads": _to(g.get("heads"), dev)} for g in sd["gram"]]
        if len(self.gram) != self.groups.num_layers:
            self.gram = [{"channels": None, "heads": None} for _ in self.groups.layers]


def _to(t: torch.Tensor | None, device: torch.device | None) -> torch.Tensor | None:
    return t if t is None or device is None else t.to(device)


def base_weights(model: nn.Module, groups: ModelGroups) -> dict[str, Any]:
    """The base weights compensation may change (``o_proj`` and ``down_proj`` of every layer), by name."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        for _, name in KINDS:
            mod = projection(layer, name)
            out[f"{i}.{name}"] = getattr(mod, "base_layer", mod).weight
    return out
