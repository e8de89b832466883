"""``PruneConfig``: a frozen, validated description of one pruning run (JSON/YAML round-trip)."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from compressor.algorithm.config_checks import CONFIG_VERSION, parse_skip_layers, validate  # noqa: F401 - re-exported
from compressor.core.errors import ConfigError

#: Default peak learning rate by ratio (``lr`` None): ``(ratio below, lr)`` pairs, first match wins. The
#: measurements behind the values: docs/why-defaults.md (``--lr``).
LR_BY_RATIO: tuple[tuple[float, float], ...] = ((0.25, 1e-3), (math.inf, 2e-3))

#: Hidden size the :data:`LR_BY_RATIO` values were measured at (SmolLM2-135M). Wider models get the default
#: scaled by ``LR_REF_HIDDEN / hidden_size`` (Adam's per-width rule, as in muP: the update a hidden-layer weight
#: sees grows with fan-in); narrower ones keep it (docs/why-defaults.md, ``--lr`` on wider models).
LR_REF_HIDDEN = 576


def _opt(default: Any, help: str, *, choices: tuple | None = None, cli: bool = True, result: bool = True) -> Any:
    """A config field with the metadata the CLI, YAML and ``--help`` are generated from.

    ``help``: the option's help text; ``choices``: valid values; ``cli``: exposed as ``--name``;
    ``result``: changes what the run computes (part of the run id that guards ``--resume``).
    """
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli, "result": result})


def cli_fields() -> list[dataclasses.Field]:
    """The :class:`PruneConfig` fields exposed as ``compress prune`` options, in declaration order."""
    return [f for f in fields(PruneConfig) if f.metadata.get("cli", False)]


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides what a pruning run does.

    Every field's ``metadata`` holds its help text and choices (:func:`_opt`): ``compress prune``'s options
    (:func:`cli_fields`), the keys of the YAML/JSON file ``--config`` reads, ``docs/cli.md`` and the field list
    below are all generated from it, so the help text is the one place an option is described. ``auto`` and
    ``None`` values are resolved per run: the peak learning rate by :meth:`peak_lr_for`, the device by
    :func:`compressor.core.device.resolve_device`, ``amp`` by :func:`compressor.algorithm.precision.resolve_amp`,
    ``compensate_store`` by :func:`compressor.algorithm.memory_plan.resolve_store`.
    """

    ratio: float = _opt(None, "Fraction of the decoder layers' projection parameters (q,k,v,o,gate,up,down) to "
                            "remove, in (0, 1); embeddings, norms and the LM head are kept. The achieved ratio is "
                            "reported.")
    criterion: str = _opt("activation", "Importance criterion: lora (LoRAPrune Eq. 10), taylor (Eq. 3, needs W's gradient), "
                                  "activation (first-order effect of removing a head/channel, from the input gradient "
                                  "of o_proj/down_proj; no W gradient), residual (the same effect after compensation: "
                                  "scores what compensation cannot replace; needs compensate), magnitude or random.")
    steps: int = _opt(250, "Optimizer steps of the LoRA fine-tune (docs/why-defaults.md).")
    prune_every: int = _opt(10, "Steps between mask updates.")
    prune_start: float = _opt(0.0, "Fraction of the steps that score (and fine-tune) before the first mask update, "
                                   "in [0, 1) (the official LoRAPrune trainer: 0.1).")
    prune_until: float = _opt(0.4, "Fraction of the steps by which the target ratio is reached; the rest only "
                                   "fine-tune.")
    schedule: str = _opt("linear", "How the sparsity rises between prune_start and prune_until: linear, or cubic "
                                   "(fast first, slow near the target, as the official trainer).",
                         choices=("linear", "cubic"))
    lam: float = _opt(0.9, "Moving-average factor λ of the scores (G <- λG + (1-λ)Ĝ), in [0, 1).")
    ema_start: str = _opt("first", "Moving-average start: first (G = the first score) or zero (G = 0, as the "
                                   "official code).", choices=("first", "zero"))
    aggregate: str = _opt("sum-sq", "How element scores form group scores: sum-sq (sum of squares, Eq. 4) or "
                                    "official (|.| summed per group, each projection's group vector L2-normalised "
                                    "before summing projections, as the official code).",
                          choices=("sum-sq", "official"))
    widths: str = _opt("uniform", "uniform (every layer the same widths; a stock config) or adaptive (MLP widths "
                                  "per layer from one ranking across layers; written as a per-layer remote-code "
                                  "folder, docs/deploy.md).",
                       choices=("uniform", "adaptive"))
    min_channels: float = _opt(0.1, "With widths=adaptive: each layer keeps at least this share of its MLP "
                                    "channels, in (0, 1].")
    skip_layers: str = _opt("", "Decoder layers left unpruned: comma-separated indices (negative counts from the "
                                "end), 'official' (first 10 % and the last layer) or '' (none). The others are "
                                "pruned harder so that the total ratio is still met; the output has per-layer "
                                "widths (a remote-code folder, docs/deploy.md).")
    compensate: bool = _opt(True, "At every mask update, fold the least-squares stand-in for the removed "
                                   "heads/channels (regressed on the kept ones over the dense model's calibration "
                                   "inputs) into the kept columns of o_proj/down_proj's W0.")
    compensate_tokens: int | None = _opt(None, "Calibration tokens behind compensation's input statistics (default: "
                                               "64 x the widest compensated input, at most 65,536, e.g. 64 x intermediate_size). The "
                                               "training steps before the first mask update count; the rest are "
                                               "forward passes over further calibration sequences. Fewer tokens than inputs leave "
                                               "the regression under-determined.")
    compensate_stats: str = _opt("dense", "Whose inputs compensation regresses on: 'dense' (statistics of the dense model, "
                                          "collected once before the first mask update) or 'current' (collected "
                                          "afresh before every mask update from the model as it is then: earlier "
                                          "masks applied, LoRA trained so far).", choices=("dense", "current"))
    compensate_store: str = _opt("auto", "Where compensation's statistics (one in x in float32 matrix per layer and "
                                         "projection) are kept: device (the run's device), host (CPU memory, one "
                                         "layer at a time on the device at a fold), disk (one file per layer, "
                                         "collected a group of layers per forward pass at the first mask update) or "
                                         "auto (device when the run fits with them, else host on a GPU with room in "
                                         "host memory, else disk).", choices=("auto", "device", "host", "disk"))
    lora_r: int = _opt(8, "LoRA rank.")
    lora_alpha: float = _opt(16.0, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = _opt(0.0, "LoRA dropout.")
    lora_plus: float = _opt(1.0, "Learning rate of LoRA's B matrices as a multiple of A's (LoRA+; "
                                 "docs/why-defaults.md); 1 = one learning rate for both.")
    lr: float | None = _opt(None, "Peak AdamW learning rate (cosine decay to 0 after warmup_steps). Default: "
                                  "1e-3 below ratio 0.25, 2e-3 from 0.25 on, times 576 / hidden_size on models wider "
                                  "than 576 (docs/why-defaults.md).")
    warmup_steps: int = _opt(0, "Linear learning-rate warm-up steps.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(0.0, "Clip the LoRA gradients' global norm to this before each optimizer step "
                                     "(after scoring); 0 = no clipping.")
    batch_size: int = _opt(4, "Sequences per micro-batch.")
    grad_accum: int = _opt(1, "Micro-batches per optimizer step.")
    seq_len: int = _opt(256, "Tokens per calibration sequence.")
    max_blocks: int | None = _opt(None, "Use at most this many calibration sequences (default: all).")
    base_bits: int | None = _opt(None, "Keep the frozen W0 quantized with bitsandbytes: 8 (LLM.int8, as "
                                       "LoRAPrune-8bit) or 4 (NF4, QLoRA-style); needs --no-compensate.",
                                 choices=(8, 4))
    channel_multiple: int = _opt(8, "Round the kept MLP width to a multiple of this (8 suits matmul kernels).")
    head_policy: str = _opt("mlp-first", "Split of the budget between heads and MLP channels: mlp-first (prune heads "
                                         "only once the MLP keeps 25 %) or balanced (same fraction, as the paper).",
                            choices=("mlp-first", "balanced"))
    joint: bool = _opt(True, "Score during the fine-tune (LoRAPrune); False: one-shot from the first prune_every "
                             "steps' scores, then fine-tune (the 'separate' baseline; CLI: --separate).", cli=False)
    seed: int = _opt(0, "Seed of data order, LoRA init and the random criterion.")
    eval_windows: int = _opt(8, "Perplexity windows before/after on held-out text (0 skips).", result=False)
    eval_seq_len: int = _opt(512, "Tokens per perplexity window.", result=False)
    save_every: int = _opt(0, "Write a resumable checkpoint every N optimizer steps (0: only on Ctrl-C).",
                           result=False)
    device: str = _opt("auto", "Where the run computes: auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda "
                               "or cuda:N.", result=False)
    dtype: str = _opt("float32", "Dtype of the float weights.", choices=("float32", "bfloat16"))
    amp: str = _opt("auto", "Mixed precision of the fine-tune's forward passes (training, teacher, compensation "
                           "statistics): off (float32), bf16 (torch.autocast to bfloat16; the frozen decoder "
                           "projections are held once in bfloat16, embeddings, norms, LoRA, optimizer, scores and "
                           "statistics stay float32) or auto (bf16 where the hardware multiplies bfloat16 natively, a "
                           "CPU with AMX or AVX512-BF16 or a CUDA GPU with bf16, for models at least 256 wide; "
                           "otherwise off). The output is float32, or bfloat16 for a bfloat16 checkpoint held in "
                           "bfloat16.", choices=("off", "bf16", "auto"))
    distill: float = _opt(0.5, "Weight of distillation from the dense model in the fine-tune loss, in [0, 1]: "
                               "(1-w)·CE + w·KL(dense‖pruned). The teacher is the same model with LoRA and masks "
                               "off (no second copy); one more forward pass per step. 0 is the paper's plain "
                               "language-modelling loss.")
    teacher: str = _opt("compensated", "Distillation teacher under --compensate: compensated (the frozen base with "
                                       "compensation's edits of W0 and every group present; docs/why-defaults.md) "
                                       "or dense "
                                       "(the dense model: the edits are swapped out in the teacher pass).",
                        choices=("compensated", "dense"))
    distill_hidden: float = _opt(0.0, "Weight of hidden-state distillation, added to the loss: mean over decoder "
                                      "layers and tokens of |h_pruned - h_dense|^2 / |h_dense|^2 (from the same "
                                      "teacher pass as --distill; 0 turns it off).")
    loss_chunk_tokens: int = _opt(256, "Positions per LM-head/loss chunk (same loss and gradients, no full "
                                       "[batch, seq, vocab] logits); 0 = stock loss. Data-parallel runs always use the "
                                       "stock loss.")
    gradient_checkpointing: bool = _opt(False, "Recompute each decoder layer's activations in the backward pass "
                                               "instead of keeping them: less memory, more time per step "
                                               "(docs/why-defaults.md), same result.")
    version: int = _opt(CONFIG_VERSION, "Config format version.", cli=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def peak_lr(self) -> float:
        """The peak learning rate at the reference width: ``lr``, or when it is ``None`` the one
        :data:`LR_BY_RATIO` gives for ``ratio``. A run on a model uses :meth:`peak_lr_for` with its hidden size."""
        if self.lr is not None:
            return self.lr
        return next(lr for upto, lr in LR_BY_RATIO if self.ratio < upto)

    def peak_lr_for(self, hidden_size: int | None) -> float:
        """The peak learning rate a run on a model of this hidden size uses: an explicit ``lr`` as given; the
        default :attr:`peak_lr` times ``LR_REF_HIDDEN / hidden_size`` when the model is wider than
        :data:`LR_REF_HIDDEN` (unchanged for narrower models, or when the width is unknown)."""
        if self.lr is not None or not hidden_size or hidden_size <= LR_REF_HIDDEN:
            return self.peak_lr
        return self.peak_lr * LR_REF_HIDDEN / hidden_size

    # ---- round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
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
    def from_file(cls, path: str | os.PathLike, defaults: dict[str, Any] | None = None,
                  **overrides: Any) -> PruneConfig:
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

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)


def _field_docs(cls: type) -> str:
    """The ``Args:`` list of ``cls``'s docstring, from its fields' metadata (the help text is the only copy)."""
    lines = ["Args:"]
    for f in fields(cls):
        meta = f.metadata
        notes = [f"default {f.default!r}" if f.name != "ratio" else "required"]
        if meta.get("choices"):
            notes.append("one of " + ", ".join(map(str, meta["choices"])))
        if not meta.get("cli", False):
            notes.append("no CLI option")
        if not meta.get("result", True):
            notes.append("a run setting, not part of the run id")
        head = f"{f.name} ({f.type}; {'; '.join(notes)}): {meta.get('help', '')}"
        lines += textwrap.wrap(head, 108, initial_indent="    ", subsequent_indent="        ",
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


PruneConfig.__doc__ = f"{inspect.cleandoc(PruneConfig.__doc__ or '')}\n\n{_field_docs(PruneConfig)}\n"


#: Named sets of defaults for ``compress prune --recipe``. ``default`` is the dataclass defaults
#: (docs/why-defaults.md); ``paper`` is LoRAPrune as published (Eq. 10 criterion, plain LM loss).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # the paper's Algorithm 1 with its criterion and plain LM loss (this toolkit's first defaults, CHANGELOG.md)
    "paper": {"criterion": "lora", "distill": 0.0, "lr": 2e-4, "compensate": False, "steps": 200, "prune_every": 10,
              "amp": "off",
              "prune_start": 0.0, "prune_until": 0.5, "schedule": "linear", "aggregate": "sum-sq",
              "ema_start": "first", "lora_r": 8, "lora_alpha": 16.0},
    # the paper's criterion with the official code's schedule and aggregation (aim-uofa/LoRAPrune trainer)
    "official": {"criterion": "lora", "distill": 0.0, "lr": 2e-4, "compensate": False, "steps": 200, "amp": "off",
                 "prune_every": 10, "prune_start": 0.1, "prune_until": 0.9, "schedule": "cubic",
                 "aggregate": "official", "ema_start": "zero", "lora_r": 8, "lora_alpha": 16.0},
}
