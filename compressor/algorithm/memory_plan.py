"""Predicted peak memory of a prune, per phase, from the model's config alone (``compress prune --dry-run``).

:func:`plan_memory` builds the model on the meta device (no weights are read), counts what a run of
:class:`~compressor.algorithm.config.PruneConfig` holds in each phase and returns a :class:`MemoryPlan`:

- **load**: the frozen base as it is held (float32; bfloat16 projections with float32 embeddings and norms under
  bfloat16 autocast; 8-/4-bit projections), plus a float32 copy of every weight for a GGUF file (transformers
  dequantizes the whole file before casting);
- **steps**: the base, autocast's bfloat16 copies of float32 projections kept for the backward pass, LoRA with its
  gradients and AdamW state, compensation's ``in × in`` float32 statistics per layer (on the run's device or in
  host memory or on disk, :func:`resolve_store`), the dense teacher's copy of the compensated weights, the activations a
  backward pass keeps (all layers; one layer's plus each layer's input with gradient checkpointing) and the
  LM head's logits;
- **fold**: the steps' state without activations, plus one layer's matrix and its float64 solve;
- **merge**: the base, shrinking layer by layer, and the output as it grows (:func:`compressor.algorithm.merge.merge_and_slice`);
- **save**: the output.

On a CPU the figures include :data:`CPU_PROCESS_BYTES` for the process itself (libraries, tokenizer, data);
on CUDA they are what torch allocates (``max_memory_allocated``), to which the CUDA context adds a few hundred MiB.
The activation term is an estimate calibrated on SmolLM2-135M and Qwen2.5-0.5B (``benchmarks/scale.py`` prints
predicted beside measured for every size it runs). :func:`check_fits` refuses a run whose peak exceeds the free
memory of its device, before any weight is read, naming the options that would fit with their peaks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.precision import Precision, precision_for
from compressor.core.errors import ConfigError

GiB = 2**30
#: resident memory of the Python process before any weight (torch, transformers, tokenizer, calibration text),
#: measured as the ``texts`` phase of CPU runs (430-450 MiB)
CPU_PROCESS_BYTES = int(0.45 * GiB)
#: the prediction must stay under this share of the free memory (allocator slack, fragmentation)
FIT_SHARE = 0.92


class InsufficientMemoryError(ConfigError):
    """The predicted peak of a run exceeds the free memory of its device."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes the memory plan needs, read from a meta-device instance of a config."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    #: parameters of the linear layers inside the decoder layers (what pruning slices and LoRA wraps)
    linear_params: int
    #: every other parameter, tied ones once (embeddings, LM head, norms)
    other_params: int
    #: per decoder layer: (in, out) of each linear layer
    projections: tuple[tuple[int, int], ...] = ()

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


def model_shape(config: Any) -> ModelShape:
    """Count ``config``'s parameters on the meta device (no memory, no weights read)."""
    from torch import nn

    from compressor.modeling.sizes import is_per_layer

    if is_per_layer(config):
        from compressor.modeling.perlayer import per_layer_model_class

        cls: Any = per_layer_model_class(config)
    else:
        from transformers import AutoModelForCausalLM

        cls = AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config) if cls is AutoModelForCausalLM else cls._from_config(config)
    seen: set[int] = set()
    linear = other = 0
    projections: list[tuple[int, int]] = []
    first_layer: str | None = None
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(mod, nn.Linear) and ".layers." in f".{name}":
                linear += p.numel()
            else:
                other += p.numel()
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}":
            layer = name.split(".layers.")[1].split(".")[0]
            first_layer = first_layer or layer
            if layer == first_layer:
                projections.append((mod.in_features, mod.out_features))
    head, emb = getattr(model, "lm_head", None), model.get_input_embeddings()
    if getattr(config, "tie_word_embeddings", False) and head is not None and head.weight is not emb.weight:
        other -= head.weight.numel()  # tied once loaded (the meta instance may not tie them)
    text = getattr(config, "text_config", None) or config

    def widest(name: str, default: Any = None) -> Any:  # per-layer configs list a value per layer
        v = getattr(text, name, None)
        v = default if v is None else v
        return max(v) if isinstance(v, (list, tuple)) else v

    heads, hidden = int(widest("num_attention_heads")), int(widest("hidden_size"))
    return ModelShape(model_type=str(getattr(config, "model_type", "?")), layers=int(text.num_hidden_layers),
                      hidden=hidden, intermediate=int(widest("intermediate_size")), heads=heads,
                      kv_heads=int(widest("num_key_value_heads", heads)),
                      head_dim=int(widest("head_dim", hidden // heads)), vocab=int(text.vocab_size),
                      linear_params=linear, other_params=other, projections=tuple(projections))


@dataclass
class MemoryPlan:
    """Predicted bytes per phase and per part of a run, and the free memory of its device."""

    device: str
    held: str
    phases: dict[str, int]
    parts: dict[str, int]
    free: int | None
    #: where compensation's statistics go (None: no compensation) and, on disk, the layers per pass
    store: str | None = None
    layers_per_pass: int | None = None
    host_parts: dict[str, int] = field(default_factory=dict)
    disk_parts: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    @property
    def fits(self) -> bool | None:
        """Whether the peak stays under :data:`FIT_SHARE` of the free memory (None where that is unknown)."""
        return None if self.free is None else self.peak <= FIT_SHARE * self.free

    def as_dict(self) -> dict[str, Any]:
        gib = lambda b: round(b / GiB, 3)  # noqa: E731
        return {"device": self.device, "held": self.held, "peak_gib": gib(self.peak), "peak_phase": self.peak_phase,
                "phases_gib": {k: gib(v) for k, v in self.phases.items()},
                "parts_gib": {k: gib(v) for k, v in self.parts.items()},
                "statistics_store": self.store, "layers_per_pass": self.layers_per_pass,
                "host_parts_gib": {k: gib(v) for k, v in self.host_parts.items()},
                "disk_parts_gib": {k: gib(v) for k, v in self.disk_parts.items()},
                "free_gib": None if self.free is None else gib(self.free), "fits": self.fits}

    def lines(self) -> list[str]:
        """A short table for the terminal."""
        out = [f"predicted memory on {self.device} ({self.held} base):"]
        for k, v in self.phases.items():
            out.append(f"  {k:<9} {v / GiB:7.2f} GiB" + ("  <- peak" if k == self.peak_phase else ""))
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)
        out.append(f"  parts (GiB): {parts}")
        if self.host_parts:
            out.append("  in host memory (GiB): " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.host_parts.items()))
        if self.disk_parts:
            out.append("  on disk (GiB): " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.disk_parts.items())
                       + f", collected {self.layers_per_pass} layer(s) per pass")
        if self.free is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            out.append(f"  free on {self.device}: {self.free / GiB:.2f} GiB -> {verdict} "
                       f"(peak must stay under {FIT_SHARE:.0%} of it)")
        return out


def resolve_store(shape: ModelShape, cfg: PruneConfig, device: torch.device, *, free: int | None = None,
                  total: int | None = None, resident: int = 0, host_free: int | None = None,
                  precision: Precision | None = None) -> tuple[str, int]:
    """Where compensation's statistics go (``cfg.compensate_store``; ``auto``: on ``device`` when the whole run
    fits there with them, else in host memory on a CUDA device when they take at most half of it, else on disk)
    and, for ``disk``, how many layers one statistics pass collects (as many as fit). ``resident``: bytes of
    weights already loaded on ``device`` (not in ``free`` any more); ``precision``: the run's, when resolved."""
    L = shape.layers
    store = cfg.compensate_store if cfg.compensate else "device"
    if store not in ("auto", "disk"):
        return store, L
    if free is None:
        from compressor.core.device import free_memory_bytes

        free = free_memory_bytes(device)
    if store == "auto":
        on_device = plan_memory(shape, cfg, device, store="device", free=free, total=total, precision=precision)
        if free is None or on_device.peak - resident <= FIT_SHARE * free:
            return "device", L
        if device.type == "cuda":
            if host_free is None:
                from compressor.core.device import free_memory_bytes

                host_free = free_memory_bytes(torch.device("cpu"))
            if host_free is not None and _stats_bytes(shape) <= host_free // 2:
                return "host", L
    if free is None:
        return "disk", L
    without = plan_memory(shape, cfg, device, store="disk", layers_per_pass=0, free=free, total=total,
                          precision=precision)
    per_layer = _stats_bytes(shape) // L
    room = FIT_SHARE * free + resident - without.peak
    return "disk", int(max(1, min(L, room // per_layer)))


def _stats_bytes(shape: ModelShape) -> int:
    return 4 * shape.layers * (shape.intermediate ** 2 + (shape.heads * shape.head_dim) ** 2)


def _lora_params(shape: ModelShape, r: int) -> int:
    return shape.layers * sum(r * (i + o) for i, o in shape.projections)


def plan_memory(shape: ModelShape, cfg: PruneConfig, device: torch.device, *, gguf: bool = False,
                source_dtype: str | None = None, free: int | None = None, total: int | None = None,
                store: str | None = None, layers_per_pass: int | None = None,
                precision: Precision | None = None) -> MemoryPlan:
    """The predicted memory of pruning a model of ``shape`` with ``cfg`` on ``device`` (see the module doc).

    Args:
        shape: :func:`model_shape` of the model's config.
        cfg: the run.
        device: where it runs (CPU figures include the process itself, :data:`CPU_PROCESS_BYTES`).
        gguf: the model is read from a GGUF file (dequantized in float32 while loading).
        source_dtype: the dtype its checkpoint declares (a bfloat16 checkpoint pruned with a bfloat16-held base
            is written in bfloat16, else float32).
        free, total: free and total memory of ``device`` (default: measured now, :func:`compressor.core.device.free_memory_bytes`).
        store, layers_per_pass: where compensation's statistics go and, on disk, how many layers one pass collects
            (default: :func:`resolve_store`).
        precision: the run's, when the caller resolved it (default: :func:`~compressor.algorithm.precision.precision_for`).
    """
    from compressor.core.device import free_memory_bytes

    precision = precision or precision_for(cfg, device, shape.hidden)
    amp, held = precision.amp, precision.held
    lin, other = shape.linear_params, shape.other_params
    if cfg.base_bits:
        base = int(lin * cfg.base_bits / 8 * 1.03) + 4 * other  # + scales; the rest in float32
        held_name = f"{cfg.base_bits}-bit"
        proj_bytes = cfg.base_bits / 8
    elif cfg.dtype == "bfloat16":
        base, held_name, proj_bytes = 2 * (lin + other), "bfloat16", 2.0
    elif held is not None:
        base, held_name, proj_bytes = 2 * lin + 4 * other, "bfloat16 projections", 2.0
    else:
        base, held_name, proj_bytes = 4 * (lin + other), "float32", 4.0
    copies = 2 * lin if amp and held is None and not cfg.base_bits and cfg.dtype == "float32" else 0
    lora = 16 * _lora_params(shape, cfg.lora_r)  # weights, gradients, two AdamW moments, float32
    if free is None:
        free = free_memory_bytes(device)
    if store is None:
        store, layers_per_pass = resolve_store(shape, cfg, device, free=free, total=total, precision=precision)
    stats = _stats_bytes(shape) if cfg.compensate else 0
    if store == "device":
        stats_dev = stats
    elif store == "disk":
        stats_dev = stats * int(layers_per_pass if layers_per_pass is not None else shape.layers) // shape.layers
    else:
        stats_dev = 0
    teacher = 0
    if cfg.compensate and cfg.teacher == "dense" and (cfg.distill > 0 or cfg.distill_hidden > 0):
        teacher = int(proj_bytes * shape.layers * (2 * shape.hidden * shape.intermediate
                                                   + shape.hidden * shape.heads * shape.head_dim))
    # activations a backward pass keeps, per token and layer (bytes): hidden-wide and MLP-wide tensors, and the
    # eager attention's probabilities; calibrated on SmolLM2-135M / Qwen2.5-0.5B CPU runs
    e = 3.0 if amp or cfg.dtype == "bfloat16" or cfg.base_bits else 4.0
    tokens = cfg.batch_size * cfg.seq_len
    per_layer_token = e * (12 * shape.hidden + 5 * shape.intermediate) + (8 if e == 4.0 else 6) * shape.heads * cfg.seq_len
    if cfg.gradient_checkpointing:
        acts = int(tokens * (shape.layers * 4 * shape.hidden + per_layer_token))
    else:
        acts = int(tokens * shape.layers * per_layer_token)
    chunk = cfg.loss_chunk_tokens if cfg.loss_chunk_tokens > 0 else tokens
    logits = 4 * shape.vocab * (3 * min(chunk, tokens) + (tokens if cfg.distill > 0 else 0))
    # one layer's matrix on the device, its kept rows and the float64 solve (compressor.algorithm.compensation.Compensator.fold)
    fold = 14 * shape.intermediate ** 2 if cfg.compensate else 0
    ratio_kept = 1.0 - cfg.ratio
    out_e = 2.0 if cfg.dtype == "bfloat16" else 4.0
    if held is not None or cfg.base_bits:
        out_e = 2.0 if source_dtype in ("bfloat16", "float16") else 4.0
    output = int(out_e * (ratio_kept * lin + other))
    largest_proj = max((i * o for i, o in shape.projections), default=0)
    base_lin = int(proj_bytes * lin)
    process = CPU_PROCESS_BYTES if device.type == "cpu" else 0
    gguf_extra = 4 * (lin + other) if gguf else 0
    phases = {
        "load": process + base + gguf_extra + 4 * largest_proj,
        "steps": process + base + copies + lora + stats_dev + teacher + acts + logits,
        "fold": process + base + lora + stats_dev + teacher + fold,
        "merge": process + (base - base_lin) + max(base_lin, output - int(out_e * other)) + int(out_e * other)
        + lora + 12 * largest_proj,
        "save": process + output,
    }
    parts = {"base": base, "autocast_copies": copies, "lora_adamw": lora, "statistics": stats_dev,
             "teacher_copy": teacher, "activations": acts, "logits": logits, "fold_solve": fold, "output": output,
             "process": process}
    host = {"statistics": stats} if store == "host" and stats else {}
    disk = {"statistics": stats} if store == "disk" and stats else {}
    return MemoryPlan(device=str(device), held=held_name, phases=phases, parts=parts, free=free,
                      store=store if cfg.compensate else None, layers_per_pass=layers_per_pass,
                      host_parts=host, disk_parts=disk)


#: options a run that does not fit may take instead, in the order they are suggested (label, overrides)
ALTERNATIVES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--compensate-store disk", {"compensate_store": "disk"}),
    ("--compensate-store disk --gradient-checkpointing", {"compensate_store": "disk", "gradient_checkpointing": True}),
    ("--gradient-checkpointing", {"gradient_checkpointing": True}),
    ("--batch-size 2 --grad-accum 2", {"batch_size": 2, "grad_accum": 2}),
    ("--gradient-checkpointing --batch-size 1 --grad-accum 4",
     {"gradient_checkpointing": True, "batch_size": 1, "grad_accum": 4}),
    ("--base-bits 8 --no-compensate", {"base_bits": 8, "compensate": False}),
    ("--base-bits 4 --no-compensate", {"base_bits": 4, "compensate": False}),
    ("--base-bits 8 --no-compensate --gradient-checkpointing",
     {"base_bits": 8, "compensate": False, "gradient_checkpointing": True}),
)


def alternatives(shape: ModelShape, cfg: PruneConfig, device: torch.device, *, gguf: bool = False,
                 source_dtype: str | None = None, free: int | None = None,
                 total: int | None = None) -> list[tuple[str, MemoryPlan]]:
    """The :data:`ALTERNATIVES` that change ``cfg``, each with its plan (8-bit only on CUDA)."""
    out = []
    for label, over in ALTERNATIVES:
        if over.get("base_bits") and device.type != "cuda":
            continue
        if all(getattr(cfg, k) == v for k, v in over.items()):
            continue
        try:
            alt = dataclasses.replace(cfg, **over)
        except ConfigError:
            continue
        out.append((label, plan_memory(shape, alt, device, gguf=gguf, source_dtype=source_dtype, free=free,
                                       total=total)))
    return out


def check_fits(plan: MemoryPlan, alts: list[tuple[str, MemoryPlan]], *, resident: int = 0) -> None:
    """Raise :class:`InsufficientMemoryError` when ``plan``'s peak (less ``resident`` bytes of weights already
    loaded) exceeds the free memory, naming the alternatives that fit with their peaks."""
    if plan.free is None or (plan.peak - resident) <= FIT_SHARE * plan.free:
        return
    fitting = [f"{label} (peak {p.peak / GiB:.1f} GiB)" for label, p in alts
               if p.free is not None and p.peak - resident <= FIT_SHARE * p.free]
    hint = ("; these would fit: " + ", ".join(fitting)) if fitting else \
        "; none of " + ", ".join(label for label, _ in ALTERNATIVES) + " would fit either: use a larger device"
    raise InsufficientMemoryError(
        f"this run needs about {plan.peak / GiB:.1f} GiB on {plan.device} at its {plan.peak_phase} phase "
        f"({plan.held} base) but {plan.free / GiB:.1f} GiB is free{hint}; see the plan with --dry-run, or pass "
        f"--no-memory-check to start anyway")



def plan_run(source: Any, config: Any, cfg: PruneConfig, device: torch.device, *,
             precision: Precision | None = None) -> tuple[MemoryPlan, list[tuple[str, MemoryPlan]]]:
    """The plan and the alternatives of pruning the model ``source`` (a resolved
    :class:`~compressor.modeling.loading.ModelSource`, read as its ``config`` only) with ``cfg`` on ``device``."""
    from compressor.modeling.held import source_dtype

    shape, gguf, sdt = model_shape(config), source.gguf_file is not None, source_dtype(config)
    plan = plan_memory(shape, cfg, device, gguf=gguf, source_dtype=sdt, precision=precision)
    return plan, alternatives(shape, cfg, device, gguf=gguf, source_dtype=sdt, free=plan.free)
