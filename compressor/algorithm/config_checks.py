"""The checks a :class:`~compressor.algorithm.config.PruneConfig` passes when it is built: every value in range,
of its field's type, and no combination that cannot run; a refusal names the value and what would be valid."""
from __future__ import annotations

import math
import re
import types
from dataclasses import fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from compressor.core.errors import ConfigError

CONFIG_VERSION = 1


def parse_skip_layers(spec: str, num_layers: int | None) -> list[int]:
    """Layer indices named by ``skip_layers`` (see :class:`PruneConfig`); ``num_layers=None`` only checks syntax."""
    spec = (spec or "").strip()
    if not spec:
        return []
    if spec == "official":
        if num_layers is None:
            return []
        return sorted(set(range(int(math.ceil(0.1 * num_layers)))) | {num_layers - 1})
    out = []
    for part in spec.split(","):
        try:
            i = int(part.strip())
        except ValueError:
            raise ConfigError(f"skip_layers={spec!r} is not valid; give comma-separated layer indices (e.g. '0,1,-1'), "
                              f"'official' or ''") from None
        if num_layers is not None:
            if not -num_layers <= i < num_layers:
                raise ConfigError(f"skip_layers={spec!r}: layer {i} does not exist; the model has {num_layers} "
                                  f"layers (0..{num_layers - 1})")
            i %= num_layers
        out.append(i)
    if num_layers is not None and len(set(out)) >= num_layers:
        raise ConfigError(f"skip_layers={spec!r} skips every layer; leave at least one to prune")
    return sorted(set(out))


def validate(cfg: Any) -> None:
    """Refuse a config with a value out of range or a combination that cannot run, naming the value and what is
    valid (:class:`~compressor.core.errors.ConfigError`); called when a :class:`PruneConfig` is built."""
    if cfg.ratio is None:
        raise ConfigError("ratio is required: the fraction of the prunable parameters to remove, in (0, 1), e.g. 0.5")
    _check_types(cfg)
    from compressor.algorithm.criteria import get_criterion

    def bad(name: str, valid: str) -> ConfigError:
        return ConfigError(f"{name}={getattr(cfg, name)!r} is not valid; {valid}")

    if not (math.isfinite(cfg.ratio) and 0.0 < cfg.ratio < 1.0):
        raise bad("ratio", "give a number in the open interval (0, 1)")
    get_criterion(cfg.criterion)
    if cfg.steps < 1:
        raise bad("steps", "need at least 1")
    if cfg.prune_every < 1:
        raise bad("prune_every", "need at least 1")
    if cfg.steps < cfg.prune_every:
        raise ConfigError(f"steps={cfg.steps} is smaller than prune_every={cfg.prune_every}: no pruning step "
                          f"would run; give steps >= prune_every")
    if not (0.0 < cfg.prune_until <= 1.0):
        raise bad("prune_until", "give a fraction in (0, 1]")
    if not (0.0 <= cfg.prune_start < cfg.prune_until):
        raise bad("prune_start", f"give a fraction in [0, prune_until={cfg.prune_until})")
    for f in fields(cfg):
        ch = f.metadata.get("choices")
        if ch and getattr(cfg, f.name) not in ch and not (getattr(cfg, f.name) is None and f.name == "base_bits"):
            raise bad(f.name, f"use one of {', '.join(map(str, ch))}")
    if not (0.0 < cfg.min_channels <= 1.0):
        raise bad("min_channels", "give a share in (0, 1]")
    if not (math.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm >= 0):
        raise bad("max_grad_norm", "must be >= 0 (0: no clipping)")
    parse_skip_layers(cfg.skip_layers, None)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device).strip().lower()):
        raise bad("device", "use auto, cpu, cuda or cuda:N")
    if get_criterion(cfg.criterion).uses_compensation and not cfg.compensate:
        raise ConfigError("criterion='residual' scores what compensation cannot replace and needs compensate=True; "
                          "drop --no-compensate, or use criterion 'activation'")
    if cfg.compensate_stats == "current" and not cfg.compensate:
        raise ConfigError("compensate_stats='current' chooses compensation's statistics and needs compensate=True; "
                          "drop --no-compensate, or leave compensate_stats at 'dense'")
    if cfg.amp == "bf16" and (cfg.base_bits or cfg.dtype != "float32"):
        raise ConfigError(f"amp='bf16' mixes bfloat16 into float32 weights; it cannot run with "
                          f"{f'base_bits={cfg.base_bits}' if cfg.base_bits else f'dtype={cfg.dtype!r}'}: use amp='off' or "
                          f"'auto'")
    if cfg.compensate and cfg.base_bits:
        raise ConfigError("compensate=True (the default) changes W0 and needs float base weights; it cannot run "
                          f"with base_bits={cfg.base_bits}: add --no-compensate (compensate=False)")
    if not (0.0 <= cfg.lam < 1.0):
        raise bad("lam", "λ must be in [0, 1)")
    if cfg.lora_r < 1:
        raise bad("lora_r", "the LoRA rank must be >= 1")
    if not (cfg.lora_alpha > 0):
        raise bad("lora_alpha", "must be > 0")
    if not (0.0 <= cfg.lora_dropout < 1.0):
        raise bad("lora_dropout", "must be in [0, 1)")
    if not (math.isfinite(cfg.lora_plus) and cfg.lora_plus > 0):
        raise bad("lora_plus", "must be a finite number > 0 (1: B and A share one learning rate)")
    if cfg.loss_chunk_tokens < 0:
        raise bad("loss_chunk_tokens", "use a positive number of positions per chunk, or 0 for the stock loss")
    if not (0.0 <= cfg.distill <= 1.0):
        raise bad("distill", "must be in [0, 1] (0: language-modelling loss only, 1: distillation only)")
    if not (math.isfinite(cfg.distill_hidden) and cfg.distill_hidden >= 0):
        raise bad("distill_hidden", "must be a finite number >= 0 (0 turns hidden-state distillation off)")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad("lr", "must be a finite number > 0 (or null: chosen from the ratio)")
    for name in ("batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise bad(name, "need at least 1")
    if cfg.seq_len < 2:
        raise bad("seq_len", "need at least 2 tokens")
    if cfg.max_blocks is not None and cfg.max_blocks < 1:
        raise bad("max_blocks", "need at least 1 (or None for all)")
    if cfg.compensate_tokens is not None and cfg.compensate_tokens < 1:
        raise bad("compensate_tokens", "need at least 1 token (or None for 64 x the widest compensated input, at most 65,536)")
    if cfg.channel_multiple < 1:
        raise bad("channel_multiple", "need at least 1")
    if cfg.warmup_steps < 0 or cfg.warmup_steps >= cfg.steps and cfg.steps > 1 and cfg.warmup_steps:
        raise bad("warmup_steps", f"must be in [0, steps={cfg.steps})")
    for name in ("eval_windows", "save_every", "weight_decay"):
        if getattr(cfg, name) < 0:
            raise bad(name, "must be >= 0")
    if cfg.eval_seq_len < 2:
        raise bad("eval_seq_len", "need at least 2 tokens")
    if cfg.version != CONFIG_VERSION:
        raise bad("version", f"this toolkit reads config version {CONFIG_VERSION}")


def _check_types(cfg: Any) -> None:
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        val = getattr(cfg, f.name)
        typ = hints[f.name]
        allowed = get_args(typ) if get_origin(typ) in (Union, types.UnionType) else (typ,)
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
