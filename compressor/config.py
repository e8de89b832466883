"""``PruneConfig``: a frozen, validated description of one pruning run (JSON/YAML round-trip)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

CONFIG_VERSION = 1


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides what a pruning run does.

    Args:
        ratio: fraction of the parameters of the decoder layers' prunable projections
            (q, k, v, o, gate, up, down) to remove, in (0, 1). Embeddings, norms and the LM head are kept.
        criterion: importance criterion: ``lora`` (LoRAPrune Eq. 10, default), ``taylor`` (Eq. 3, needs W's
            gradient), ``magnitude`` or ``random``.
        steps: optimizer steps of the LoRA fine-tune (pruning happens during the first ``prune_until``).
        prune_every: optimizer steps between two mask updates (Algorithm 1's frequency).
        prune_until: fraction of ``steps`` by which the target ratio is reached (linear schedule);
            the remaining steps only fine-tune.
        lam: moving-average factor λ of Eq. 11 (``G ← λG + (1−λ)Ĝ``), in [0, 1).
        lora_r, lora_alpha, lora_dropout: LoRA rank, alpha (scaling = alpha / r) and dropout.
        lr: peak AdamW learning rate (cosine decay to 0 after ``warmup_steps``).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        batch_size: sequences per micro-batch; ``grad_accum`` micro-batches per optimizer step.
        seq_len: tokens per calibration sequence.
        max_blocks: use at most this many calibration sequences (None: all).
        base_bits: ``8`` keeps W0 in 8-bit (bitsandbytes; LoRAPrune-8bit), ``None`` float.
        channel_multiple: round the kept MLP width to a multiple of this (8: friendly to matmul kernels).
        head_policy: how the budget is split between heads and MLP channels: ``mlp-first`` (default: keep
            heads while the MLP keeps >= 25 % of its channels) or ``balanced`` (same fraction for both).
        joint: True (default) scores during the fine-tune (LoRAPrune); False prunes one-shot from the
            scores of the first ``prune_every`` steps, then fine-tunes ("separate" baseline).
        seed: seed of data order, LoRA init and the random criterion.
        eval_windows, eval_seq_len: perplexity before/after on held-out text (0 windows: skip).
        save_every: write a resumable checkpoint every this many optimizer steps (0: only on Ctrl-C).
        dtype: dtype of the float weights (``float32``, ``bfloat16``).
        distill: weight of a distillation term in the fine-tune loss, in [0, 1]:
            ``(1 - distill) · CE + distill · KL(dense ‖ pruned)`` per token. The teacher is the same model with
            LoRA and masks switched off (no second copy of the weights; one more forward pass per step).
            0 (default) is the paper's plain language-modelling loss.
        loss_chunk_tokens: compute the LM head and the loss this many positions at a time (same loss and
            gradients, without the full ``[batch, seq, vocab]`` logits in memory); 0 uses the stock
            ``model(input_ids, labels=...)`` loss. Data-parallel runs always use the stock loss.
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass instead of
            keeping them (less memory, about a third more time per step; results are unchanged).
    """

    ratio: float
    criterion: str = "lora"
    steps: int = 200
    prune_every: int = 10
    prune_until: float = 0.5
    lam: float = 0.9
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lr: float = 2e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 256
    max_blocks: Optional[int] = None
    base_bits: Optional[int] = None
    channel_multiple: int = 8
    head_policy: str = "mlp-first"
    joint: bool = True
    seed: int = 0
    eval_windows: int = 8
    eval_seq_len: int = 512
    save_every: int = 0
    dtype: str = "float32"
    distill: float = 0.0
    loss_chunk_tokens: int = 256
    gradient_checkpointing: bool = False
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _check_types(self)
        from .criteria import get_criterion

        def bad(name: str, valid: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is not valid; {valid}")

        if not (math.isfinite(self.ratio) and 0.0 < self.ratio < 1.0):
            raise bad("ratio", "give a number in the open interval (0, 1)")
        get_criterion(self.criterion)
        if self.steps < 1:
            raise bad("steps", "need at least 1")
        if self.prune_every < 1:
            raise bad("prune_every", "need at least 1")
        if self.steps < self.prune_every:
            raise ConfigError(f"steps={self.steps} is smaller than prune_every={self.prune_every}: no pruning step "
                              f"would run; give steps >= prune_every")
        if not (0.0 < self.prune_until <= 1.0):
            raise bad("prune_until", "give a fraction in (0, 1]")
        if not (0.0 <= self.lam < 1.0):
            raise bad("lam", "λ must be in [0, 1)")
        if self.lora_r < 1:
            raise bad("lora_r", "the LoRA rank must be >= 1")
        if not (self.lora_alpha > 0):
            raise bad("lora_alpha", "must be > 0")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.loss_chunk_tokens < 0:
            raise bad("loss_chunk_tokens", "use a positive number of positions per chunk, or 0 for the stock loss")
        if not (0.0 <= self.distill <= 1.0):
            raise bad("distill", "must be in [0, 1] (0: language-modelling loss only, 1: distillation only)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "must be > 0")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise bad(name, "need at least 1")
        if self.seq_len < 2:
            raise bad("seq_len", "need at least 2 tokens")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise bad("max_blocks", "need at least 1 (or None for all)")
        if self.base_bits not in (None, 8):
            raise bad("base_bits", "use 8 (bitsandbytes 8-bit base) or None (float)")
        from .schedule import HEAD_POLICIES

        if self.head_policy not in HEAD_POLICIES:
            raise bad("head_policy", f"use one of {', '.join(HEAD_POLICIES)}")
        if self.channel_multiple < 1:
            raise bad("channel_multiple", "need at least 1")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps and self.steps > 1 and self.warmup_steps:
            raise bad("warmup_steps", f"must be in [0, steps={self.steps})")
        for name in ("eval_windows", "save_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.eval_seq_len < 2:
            raise bad("eval_seq_len", "need at least 2 tokens")
        if self.dtype not in ("float32", "bfloat16"):
            raise bad("dtype", "use float32 or bfloat16")
        if self.version != CONFIG_VERSION:
            raise bad("version", f"this toolkit reads config version {CONFIG_VERSION}")

    # ---- round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneConfig":
        """Build from a mapping; unknown keys and wrong types are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"a prune config must be a mapping of option names to values, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(names))}")
        if "ratio" not in data:
            raise ConfigError("the config has no 'ratio' (fraction of prunable parameters to remove, in (0, 1))")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], defaults: Optional[dict[str, Any]] = None,
                  **overrides: Any) -> "PruneConfig":
        """Read a YAML or JSON file; ``overrides`` (e.g. CLI options the user set) win over the file, which wins
        over ``defaults`` (e.g. the CLI's own defaults)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise ConfigError(f"config file {str(p)!r} cannot be parsed: {exc}") from exc
        data = dict(data or {}) if isinstance(data, dict) or data is None else data
        if isinstance(data, dict):
            data = {**(defaults or {}), **data, **overrides}
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "PruneConfig":
        return dataclasses.replace(self, **changes)


def _check_types(cfg: PruneConfig) -> None:
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        val = getattr(cfg, f.name)
        typ = hints[f.name]
        allowed = get_args(typ) if get_origin(typ) is Union else (typ,)
        ok = False
        for t in allowed:
            if t is type(None) and val is None:
                ok = True
            elif t is float and isinstance(val, (int, float)) and not isinstance(val, bool):
                object.__setattr__(cfg, f.name, float(val))
                ok = True
            elif t is int and isinstance(val, int) and not isinstance(val, bool):
                ok = True
            elif t is bool and isinstance(val, bool):
                ok = True
            elif t is str and isinstance(val, str):
                ok = True
        if not ok:
            names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"config value {f.name}={val!r} has type {type(val).__name__}; expected {names}")
