"""The LoRA fine-tune of a run: adapters on every prunable projection, AdamW (LoRA+ groups) with warm-up and cosine
decay, the deterministic resumable data order, and one optimizer step's loss over micro-batches."""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import Criterion, get_criterion
from compressor.algorithm.loss import supports_chunked_loss, training_loss
from compressor.core.errors import ConfigError, NonFiniteError
from compressor.modeling.adapters import unwrap
from compressor.modeling.architectures import get_architecture


@dataclass
class StepRecord:
    """What one optimizer step did (one row of the report's ``history``)."""

    step: int
    loss: float
    lr: float
    sparsity: float
    time_s: float
    lm_loss: float | None = None
    scores_skipped: bool = False
    masks_updated: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("lm_loss", "scores_skipped", "masks_updated")}
        if self.lm_loss is not None:
            d["lm_loss"] = self.lm_loss
        if self.scores_skipped:
            d["scores_skipped"] = True
        return d


def wrap_lora(model: nn.Module, cfg: PruneConfig, criterion: Criterion | None = None) -> nn.Module:
    """Wrap every prunable projection (the architecture's physical ones, e.g. Phi-3's ``qkv_proj``) in a LoRA
    adapter (peft). A criterion that needs W's gradient (vanilla Taylor; ``criterion``, default the config's) also
    makes W0 require grad (never updated by the optimizer)."""
    from peft import LoraConfig, get_peft_model

    from compressor.core.quiet import quiet_peft_wrap

    targets = list(get_architecture(unwrap(model).config).prunable)
    torch.manual_seed(cfg.seed)
    alpha: Any = cfg.lora_alpha  # peft types it as int; a float alpha works
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with quiet_peft_wrap():
        pm = get_peft_model(model, lcfg)
    if (criterion or get_criterion(cfg.criterion)).needs_weight_grad:
        for mod in pm.modules():
            base: Any = getattr(mod, "base_layer", None)
            if base is not None and hasattr(mod, "lora_A"):
                w: Any = base.weight
                if not w.dtype.is_floating_point:
                    raise ConfigError(f"criterion 'taylor' needs float base weights; it cannot run with "
                                      f"base_bits={cfg.base_bits}")
                w.requires_grad_(True)
    return pm


def checkpointing(model: Any, enable: bool, kwargs: dict[str, Any] | None = None) -> None:
    """Turn activation checkpointing of ``model`` on (with ``torch.utils.checkpoint`` ``kwargs``) or off:
    transformers 5's ``activation_checkpointing_enable`` / ``_disable``, else (4.x) ``gradient_checkpointing_*``,
    the names transformers 5 deprecates."""
    if enable:
        on = getattr(model, "activation_checkpointing_enable", None)
        if on is not None:
            on(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        off = getattr(model, "activation_checkpointing_disable", None)
        (off or model.gradient_checkpointing_disable)()


class DataOrder:
    """Deterministic, resumable order over calibration blocks: a fresh seeded permutation each epoch."""

    def __init__(self, blocks: torch.Tensor, seed: int):
        self.blocks, self.seed = blocks, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.blocks.shape[0], generator=g)}
        return self._cache[epoch]

    def take(self, pos: int, count: int) -> torch.Tensor:
        n = self.blocks.shape[0]
        idx = [int(self._perm((pos + i) // n)[(pos + i) % n]) for i in range(count)]
        return self.blocks[idx]


def lr_lambda(cfg: PruneConfig, total: int):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def param_groups(lora: list[tuple[str, nn.Parameter]], cfg: PruneConfig, peak_lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups over the trainable LoRA tensors ``lora`` (name, parameter): one group, or
    with ``lora_plus`` != 1 the A matrices at the peak learning rate and the B matrices at ``lora_plus`` times it
    (LoRA+)."""
    if cfg.lora_plus == 1.0:
        return [{"params": [p for _, p in lora]}]
    b = [p for n, p in lora if "lora_B" in n]
    rest = [p for n, p in lora if "lora_B" not in n]
    return [{"params": rest, "lr": peak_lr}, {"params": b, "lr": peak_lr * cfg.lora_plus}]


class FineTune:
    """The fine-tune of one run: :func:`wrap_lora` on construction, the optimizer from :meth:`start` on.

    Args:
        model: the plain causal LM (wrapped in place).
        cfg: the run's config (``lora_*``, ``lr``, ``warmup_steps``, ``weight_decay``, ``max_grad_norm``,
            ``batch_size``, ``grad_accum``, ``distill*``, ``loss_chunk_tokens``, ``gradient_checkpointing``).
        criterion: the run's criterion (W0 requires grad when it needs W's gradient).
        peak_lr: the resolved peak learning rate.
        amp: forward passes under bfloat16 autocast.
        device: the run's device.
        accelerator: data-parallel runs (DDP-wrapped model, reduced loss).
    """

    def __init__(self, model: nn.Module, cfg: PruneConfig, *, criterion: Criterion, peak_lr: float, amp: bool,
                 device: torch.device, accelerator: Any = None):
        self.cfg, self.model, self.peak_lr, self.amp, self.device, self.acc = cfg, model, peak_lr, amp, device, accelerator
        self.pm = wrap_lora(model, cfg, criterion)
        if cfg.gradient_checkpointing:
            # non-reentrant: LoRA weights get gradients although the embeddings' outputs do not require grad
            checkpointing(model, True, {"use_reentrant": False})
        self.train_model: Any = self.pm
        self.trainable: list[nn.Parameter] = []
        self.chunked = False

    def start(self) -> None:
        """Build the optimizer and schedule over the trainable LoRA tensors (after masks and a plan are applied)."""
        cfg = self.cfg
        lora = [(n, p) for n, p in self.pm.named_parameters() if "lora_" in n and p.requires_grad]
        self.trainable = [p for _, p in lora]
        self.opt = torch.optim.AdamW(param_groups(lora, cfg, self.peak_lr), lr=self.peak_lr,
                                     weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, cfg.steps))
        if self.acc is not None:
            self.train_model, self.opt = self.acc.prepare(self.pm, self.opt)
        # LM head + loss in chunks (same value and gradients, far less memory); data-parallel runs keep the stock
        # forward, which DDP needs to synchronise gradients
        self.chunked = cfg.loss_chunk_tokens > 0 and self.acc is None and supports_chunked_loss(self.pm)
        self.train_model.train()

    def autocast(self):
        """Context for a forward pass under the run's mixed precision (a no-op when ``amp`` is off)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def backward(self, mine: torch.Tensor, teacher: Any, step: int) -> tuple[float, float]:
        """Loss and backward pass over this rank's share ``mine`` of a batch, in ``grad_accum`` micro-batches;
        ``teacher`` gives the dense teacher's context. Returns ``(loss, lm_loss)`` (loss reduced over ranks)."""
        cfg = self.cfg
        total_loss = lm_loss = 0.0
        for m in range(cfg.grad_accum):
            mb = mine[m * cfg.batch_size:(m + 1) * cfg.batch_size].to(self.device)
            with self.autocast():
                loss, ce = training_loss(self.pm, mb, distill=cfg.distill, distill_hidden=cfg.distill_hidden,
                                         chunk_tokens=cfg.loss_chunk_tokens if self.chunked else 0,
                                         teacher=teacher, forward=self.train_model)
            lm_loss += ce / cfg.grad_accum
            loss = loss / cfg.grad_accum
            if not torch.isfinite(loss):
                raise NonFiniteError(f"loss became {loss.item()} at step {step}")
            (self.acc.backward(loss) if self.acc is not None else loss.backward())
            total_loss += float(loss.detach())
        if self.acc is not None:
            total_loss = float(self.acc.reduce(torch.tensor([total_loss], device=self.device), "mean"))
        return total_loss, lm_loss

    def optimizer_step(self) -> None:
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()

    def zero_grad(self) -> None:
        self.train_model.zero_grad(set_to_none=True)
        self.pm.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        return {"lora": {n: p.detach().clone() for n, p in self.pm.named_parameters() if "lora_" in n},
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        named = dict(self.pm.named_parameters())
        with torch.no_grad():
            for n, t in st["lora"].items():
                named[n].copy_(t)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])

    def finish(self) -> None:
        """Turn activation checkpointing off again (before the merge)."""
        if self.cfg.gradient_checkpointing:
            checkpointing(self.model, False)
