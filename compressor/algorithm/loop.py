"""The LoRAPrune loop as an object: one training + scoring step at a time, mask updates, state, merge.

:class:`PruneLoop` owns what one pruning run holds (the peft model, masks, moving average, optimizer and
scheduler, data order, RNG) and exposes it as steps::

    loop = PruneLoop(model, config, blocks)
    while not loop.done:
        rec = loop.step()           # forward/backward, scoring, optimizer step, mask update
    merged = loop.finish()          # fold LoRA, slice the masked groups

:func:`compressor.algorithm.api.prune` composes it with checkpoints and the report; benchmarks drive the
same object (``loop.step(batch)``, ``loop.masked_model``) instead of copying the training step.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.algorithm.activation_scorer import ActivationScorer
from compressor.algorithm.compensation import TOKENS_CAP, TOKENS_PER_INPUT, Compensator, base_weights
from compressor.algorithm.config import PruneConfig, parse_skip_layers
from compressor.algorithm.criteria import get_criterion
from compressor.algorithm.groups import ModelGroups, discover_groups
from compressor.algorithm.loss import supports_chunked_loss, training_loss
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.merge import check_pruned_config, merge_and_slice, pruned_config_updates
from compressor.algorithm.precision import AMP_MIN_HIDDEN, held_linear_dtype, resolve_amp  # noqa: F401 - re-exported
from compressor.algorithm.schedule import Widths, layer_params, prune_events, solve_widths, widths_at
from compressor.algorithm.scoring import LayerScores, MovingAverage, model_scores
from compressor.core.device import resolve_device
from compressor.core.errors import ConfigError, NonFiniteError
from compressor.job.checkpoint import rng_state, set_rng_state
from compressor.modeling.adapters import unwrap
from compressor.modeling.architectures import get_architecture
from compressor.modeling.loading import hold_projections

log = logging.getLogger("compressor")


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


def wrap_lora(model: nn.Module, cfg: PruneConfig) -> nn.Module:
    """Wrap every prunable projection (the architecture's physical ones, e.g. Phi-3's ``qkv_proj``) in a LoRA
    adapter (peft). Vanilla Taylor also makes W0 require grad (never updated by the optimizer)."""
    from peft import LoraConfig, get_peft_model

    from compressor.core.quiet import quiet_peft_wrap

    targets = list(get_architecture(unwrap(model).config).prunable)
    torch.manual_seed(cfg.seed)
    alpha: Any = cfg.lora_alpha  # peft types it as int; a float alpha works
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    with quiet_peft_wrap():
        pm = get_peft_model(model, lcfg)
    if get_criterion(cfg.criterion).needs_weight_grad:
        for mod in pm.modules():
            base: Any = getattr(mod, "base_layer", None)
            if base is not None and hasattr(mod, "lora_A"):
                w: Any = base.weight
                if not w.dtype.is_floating_point:
                    raise ConfigError("criterion 'taylor' needs float base weights; it cannot run with base_bits=8")
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


def run_id(cfg: PruneConfig, model_id: str, blocks: torch.Tensor) -> str:
    """Hash of everything that decides the result (config fields marked ``result``, model, data): a
    checkpoint is resumed only by the run that wrote it."""
    from dataclasses import fields

    keep = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get("result", True)}
    if model_id and os.path.exists(model_id):  # './m/' and '/abs/m' name the same model
        model_id = os.path.realpath(model_id)
    h = hashlib.sha256(json.dumps([keep, model_id], sort_keys=True, default=str).encode())
    h.update(blocks.numpy().tobytes())
    return h.hexdigest()[:16]


class WidthPlan:
    """Target widths per layer at each mask update: the uniform solution (``widths="uniform"``) or MLP widths
    from one ranking across layers (``"adaptive"``); layers in ``skip_layers`` stay dense."""

    def __init__(self, groups: ModelGroups, cfg: PruneConfig):
        self.groups, self.cfg = groups, cfg
        n = groups.num_layers
        self.skip = parse_skip_layers(cfg.skip_layers, n)
        self.pruned = [i for i in range(n) if i not in self.skip]
        lg0 = groups.layers[0]
        eff = cfg.ratio * n / len(self.pruned)
        if eff >= 1.0:
            raise ConfigError(f"ratio {cfg.ratio} with skip_layers={cfg.skip_layers!r} ({len(self.skip)} of {n} layers "
                              f"dense) would remove {eff:.0%} of every other layer; lower the ratio or skip fewer layers")
        self.final: Widths = solve_widths(lg0, groups.hidden_size, eff, cfg.channel_multiple, cfg.head_policy)
        if cfg.widths == "adaptive" and self.floor() > self.final.intermediate_size:
            raise ConfigError(f"min_channels={cfg.min_channels} keeps {self.floor()} MLP channels per layer, more than "
                              f"ratio {cfg.ratio} leaves on average ({self.final.intermediate_size} of "
                              f"{lg0.intermediate_size}); give min_channels <= "
                              f"{self.final.intermediate_size / lg0.intermediate_size:.2f}")

    def floor(self) -> int:
        """Fewest MLP channels an adaptive layer keeps (``min_channels``, rounded up to ``channel_multiple``)."""
        m = max(1, self.cfg.channel_multiple)
        inter = self.groups.layers[0].intermediate_size
        return min(inter, max(m, int(math.ceil(self.cfg.min_channels * inter / m)) * m))

    @property
    def uniform(self) -> bool:
        return self.cfg.widths == "uniform" and not self.skip

    def at(self, k: int, n_events: int, scores: list[LayerScores] | None, masks: MaskState
           ) -> tuple[list[int], list[int]]:
        """``(heads_per_kv, channels)`` per layer after update ``k`` (1-based) of ``n_events``."""
        lg0 = self.groups.layers[0]
        per_full = lg0.heads_per_kv if lg0.gqa else lg0.num_heads
        hk, ch = widths_at(k, n_events, lg0, self.final, self.cfg.schedule)
        heads = [per_full] * self.groups.num_layers
        chans = [lg0.intermediate_size] * self.groups.num_layers
        for i in self.pruned:
            heads[i], chans[i] = hk, ch
        if self.cfg.widths == "adaptive" and scores is not None:
            alloc = self._allocate(ch * len(self.pruned), scores, masks)
            for i, c in zip(self.pruned, alloc):
                chans[i] = c
        return heads, chans

    def _allocate(self, total: int, scores: list[LayerScores], masks: MaskState) -> list[int]:
        """Split ``total`` MLP channels over the pruned layers by one ranking of their (moving-average)
        scores across layers, with a floor of ``min_channels`` and multiples of ``channel_multiple``."""
        m = max(1, self.cfg.channel_multiple)
        floor = self.floor()
        kept = [int(masks.layers[i].channels.sum()) for i in self.pruned]
        srt = []
        for i in self.pruned:
            s = scores[i].channels.double().clone()
            s[~masks.layers[i].channels] = -float("inf")
            srt.append(torch.sort(s, descending=True).values)
        base = [min(floor, k) for k in kept]
        extra = max(0, total - sum(base))
        pool = torch.cat([s[b:k] for s, b, k in zip(srt, base, kept)])
        owner = torch.cat([torch.full((k - b,), j) for j, (b, k) in enumerate(zip(base, kept))]).long()
        counts = list(base)
        if extra > 0 and pool.numel():
            top = torch.topk(pool, min(extra, pool.numel())).indices
            for j in owner[top].tolist():
                counts[j] += 1
        counts = [min(k, max(b, int(round(c / m)) * m)) for c, b, k in zip(counts, base, kept)]

        def block_score(j: int, start: int) -> float:
            blk = srt[j][start:start + m]
            return float(blk.mean()) if blk.numel() else -float("inf")

        while total - sum(counts) >= m:  # add the best next block
            cand = [(block_score(j, counts[j]), j) for j in range(len(counts)) if counts[j] + m <= kept[j]]
            if not cand:
                break
            counts[max(cand)[1]] += m
        while sum(counts) - total >= m:  # drop the worst last block
            cand = [(block_score(j, counts[j] - m), j) for j in range(len(counts)) if counts[j] - m >= base[j]]
            if not cand:
                break
            counts[min(cand)[1]] -= m
        return counts


def check_output_config(model: Any, groups: ModelGroups, cfg: PruneConfig) -> tuple[WidthPlan, str | None]:
    """The run's :class:`WidthPlan` and how its result will be written, checked before any work.

    Returns ``(plan, refusal)``: ``refusal`` is None when the pruned model is a stock folder (or has per-layer
    widths anyway), else the installed transformers' message refusing the uniform stock config: the result is then
    written as the per-layer remote-code folder of its architecture (see :func:`compressor.algorithm.merge.check_pruned_config`).

    Raises:
        ConfigError: the widths are infeasible, or their stock config would not reload and the architecture has no
            per-layer class (e.g. a head-pruned Gemma2/Gemma3 on transformers >= 5.16, Phi-3 with longrope).
    """
    plan = WidthPlan(groups, cfg)
    final = plan.final
    refusal = check_pruned_config(unwrap(model).config, pruned_config_updates(groups, final.num_heads,
                                                                            final.intermediate_size))
    return plan, refusal if plan.uniform else None


def remote_code_note(groups: ModelGroups, heads: int, refusal: str) -> str:
    """The note printed before a run whose uniform result is written as a per-layer remote-code folder."""
    import transformers

    h = groups.hidden_size
    return (f"transformers {transformers.__version__} refuses a stock {groups.model_type} config with {heads} "
            f"attention heads and hidden_size {h} ({refusal}); the pruned model will be written as a remote-code "
            f"folder (model_type lorapress_{groups.model_type}: loads with lorapress, or with "
            f"trust_remote_code=True). A head count that divides {h} keeps a stock folder (a lower --ratio, or "
            f"--head-policy mlp-first, which prunes MLP channels before heads)")


def kept_params(groups: ModelGroups, masks: MaskState) -> tuple[int, int]:
    """``(kept, total)`` weights of the prunable projections under ``masks``."""
    total = kept = 0
    for lg, lm in zip(groups.layers, masks.layers):
        h = int(lm.heads.sum())
        total += layer_params(lg, groups.hidden_size)
        kept += layer_params(lg, groups.hidden_size, h, lg.num_kv_heads if lg.gqa else h, int(lm.channels.sum()))
    return kept, total


def sparsity(groups: ModelGroups, masks: MaskState) -> float:
    """Fraction of the prunable projections' weights currently masked."""
    kept, total = kept_params(groups, masks)
    return (total - kept) / total


class PruneLoop:
    """One LoRAPrune run (Algorithm 1), a step at a time.

    Args:
        model: a loaded plain causal LM (it is wrapped with LoRA in place).
        config: the run's :class:`PruneConfig`.
        blocks: calibration token blocks ``[num_blocks, seq_len]``.
        plan: saved scores (``{"heads": [...], "channels": [...]}``): mask at once, no scoring.
        accelerator: an ``accelerate.Accelerator`` for data-parallel runs (None: one process).
        model_id: names the model in the run id that guards resume.
        groups: the model's groups (discovered when not given).
        output: :func:`check_output_config` of this model, config and groups where the caller already ran it
            (checked here when not given).
        statistics_dir: where compensation keeps its statistics when they go to disk (``compensate_store``;
            default a temporary folder).
    """

    def __init__(self, model: Any, config: PruneConfig, blocks: torch.Tensor, *,
                 plan: dict[str, Any] | None = None, accelerator: Any = None, model_id: str = "model",
                 groups: ModelGroups | None = None, output: tuple[WidthPlan, str | None] | None = None,
                 statistics_dir: str | os.PathLike | None = None):
        self.cfg = config
        self.blocks = blocks
        self.acc = accelerator
        acc = accelerator
        self.device = acc.device if acc is not None else resolve_device(config.device)
        self.world: int
        self.rank: int
        self.world, self.rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
        self.is_main = acc is None or acc.is_main_process
        self.crit = get_criterion(config.criterion)
        if config.base_bits and self.crit.needs_weight_grad:
            raise ConfigError("criterion 'taylor' needs W's gradient in float; it cannot run with base_bits=8")
        torch.manual_seed(config.seed)
        self.groups = groups or discover_groups(model)
        #: bfloat16 autocast for the forward passes (``amp``); backward, optimizer and statistics stay float32
        self.amp = resolve_amp(config, self.device, self.groups.hidden_size)
        shapes = {(lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) for lg in self.groups.layers}
        if len(shapes) != 1:
            raise ConfigError(f"layers have different widths {sorted(shapes)}; only uniform models are supported")
        # refuse now, not after the run, widths whose config would not reload
        self.widths, refusal = output or check_output_config(model, self.groups, config)
        #: the installed transformers' refusal of the uniform stock config when the result is written as a
        #: per-layer remote-code folder instead (None: a stock folder, or per-layer widths anyway)
        self.stock_config_refused = refusal
        if refusal is not None and self.is_main:
            log.warning("%s", remote_code_note(self.groups, self.widths.final.num_heads, refusal))
        self.plan = plan
        if plan is not None:
            self.events: list[int] = []
        elif config.joint:
            self.events = prune_events(config.steps, config.prune_every, config.prune_until, config.prune_start)
        else:
            self.events = [config.prune_every]
        self.last_event = self.events[-1] if self.events else 0
        self.model = model
        if getattr(model, "device", self.device) != self.device and not getattr(model, "is_quantized", False):
            model.to(self.device)
        #: the dtype the frozen decoder projections are held in (None: the model's own dtype)
        self.held = held_linear_dtype(config, self.device, self.groups.hidden_size)
        #: the dtype the checkpoint of the model declares (the output's dtype when the base is held in bfloat16)
        self.source_dtype = getattr(model, "lorapress_source_dtype", None) or _float_dtype_name(model)
        if self.held is not None:
            hold_projections(model, getattr(torch, self.held))
        self.pm = wrap_lora(model, config)
        if config.gradient_checkpointing:
            # non-reentrant: LoRA weights get gradients although the embeddings' outputs do not require grad
            checkpointing(model, True, {"use_reentrant": False})
        self.masks = MaskState.full(self.groups).install(self.pm, self.groups)
        self.scorer = ActivationScorer(self.pm, self.groups) if self.crit.group_level and plan is None else None
        self.ema = MovingAverage(config.lam, config.ema_start)
        self.comp: Compensator | None = None
        if config.compensate:
            store, per_pass = self._statistics_store(model)
            if store == "disk" and acc is not None:
                raise ConfigError("compensate_store='disk' cannot run data-parallel; use 'device' or 'host'")
            self.comp = Compensator(self.pm, self.groups, store=store, layers_per_pass=per_pass,
                                    folder=None if statistics_dir is None else Path(statistics_dir))
        # compensation edits W0 of o_proj/down_proj in place; the distillation teacher must stay the dense
        # model, so it runs on a copy of those weights taken while they are still dense (swapped in, not copied)
        #: the base weights compensation edits (o_proj, down_proj), by name
        self._base: dict[str, Any] = base_weights(self.pm, self.groups) if self.comp is not None else {}
        self.dense_base: dict[str, torch.Tensor] | None = (
            {k: w.detach().clone() for k, w in self._base.items()}
            if self.comp is not None and config.teacher == "dense" and (config.distill > 0 or config.distill_hidden > 0)
            else None)
        #: criterion ``residual`` scoring: the scorer reads transforms built from compensation's statistics
        self._residual = config.criterion == "residual" and self.scorer is not None
        #: whether those transforms must be (re)built for the current masks before the next score
        self._residual_stale = self._residual
        self.data = DataOrder(blocks, config.seed)
        self.step_count, self.pos = 0, 0
        self.per_step = config.batch_size * config.grad_accum * self.world
        if plan is not None:
            self._apply_plan(plan)
        lora = [(n, p) for n, p in self.pm.named_parameters() if "lora_" in n and p.requires_grad]
        self.trainable = [p for _, p in lora]
        #: the peak learning rate this run uses (the default scales with the model's width, PruneConfig.peak_lr_for)
        self.peak_lr = config.peak_lr_for(self.groups.hidden_size)
        self.opt = torch.optim.AdamW(self._param_groups(lora, config), lr=self.peak_lr,
                                     weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(config, config.steps))
        self.train_model = self.pm
        if acc is not None:
            self.train_model, self.opt = acc.prepare(self.pm, self.opt)
        self.run_id = run_id(config, model_id, blocks)
        self.gen = torch.Generator().manual_seed(config.seed + 17)
        self.history: list[dict[str, Any]] = []
        #: the checkpoint step this run continued from (None for a run started from step 0)
        self.resumed_from: int | None = None
        self.schedule_log: list[dict[str, Any]] = []
        # LM head + loss in chunks (same value and gradients, far less memory); data-parallel runs keep the
        # stock forward, which DDP needs to synchronise gradients
        self.chunked = config.loss_chunk_tokens > 0 and acc is None and supports_chunked_loss(self.pm)
        #: called as ``observe(loop)`` after each step's backward pass, before scoring and the optimizer step
        self.observers: list[Any] = []
        self.train_model.train()

    def _statistics_store(self, model: nn.Module) -> tuple[str, int]:
        """Where compensation's statistics go (:func:`compressor.algorithm.plan.resolve_store`, with the weights already
        on the device counted as resident)."""
        from compressor.algorithm.plan import model_shape, resolve_store

        if self.cfg.compensate_store in ("device", "host"):
            return self.cfg.compensate_store, self.groups.num_layers
        resident = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == self.device.type)
        return resolve_store(model_shape(unwrap(model).config), self.cfg, self.device, resident=resident)

    def autocast(self):
        """Context for a forward pass under the run's mixed precision (a no-op when ``amp`` is off)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ---- steps ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step_count >= self.cfg.steps

    def next_batch(self) -> torch.Tensor:
        """The next global batch in the run's deterministic data order (all ranks' shares)."""
        return self.data.take(self.pos, self.per_step)

    def teacher(self):
        """Context in which the model is the dense teacher (LoRA off, masks bypassed)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.pm.disable_adapter())
        stack.enter_context(self.masks.bypassed())
        if self.dense_base is not None:
            stack.enter_context(_swapped(self._base, self.dense_base))
        return stack

    def step(self, batch: torch.Tensor | None = None) -> StepRecord:
        """One optimizer step on ``batch`` (default :meth:`next_batch`): loss and backward, scoring while
        the schedule scores, the optimizer step, and a mask update if one is due."""
        cfg = self.cfg
        t0 = time.time()
        batch_all = self.next_batch() if batch is None else batch
        if self._residual_stale and self.scoring:
            self._prepare_residual()
        mine = batch_all[self.rank::self.world]
        total_loss = lm_loss = 0.0
        for m in range(cfg.grad_accum):
            mb = mine[m * cfg.batch_size:(m + 1) * cfg.batch_size].to(self.device)
            with self.autocast():
                loss, ce = training_loss(self.pm, mb, distill=cfg.distill, distill_hidden=cfg.distill_hidden,
                                         chunk_tokens=cfg.loss_chunk_tokens if self.chunked else 0,
                                         teacher=self.teacher, forward=self.train_model)
            lm_loss += ce / cfg.grad_accum
            loss = loss / cfg.grad_accum
            if not torch.isfinite(loss):
                raise NonFiniteError(f"loss became {loss.item()} at step {self.step_count + 1}")
            (self.acc.backward(loss) if self.acc is not None else loss.backward())
            total_loss += float(loss.detach())
        if self.acc is not None:
            total_loss = float(self.acc.reduce(torch.tensor([total_loss], device=self.device), "mean"))
        for observe in self.observers:  # e.g. benchmarks reading the gradients of this step
            observe(self)
        skipped = False
        if self.scoring:
            skipped = not self.ema.update(self.scores())
            if skipped and self.ema.value is None and self.step_count + 1 == self.last_event:
                raise NonFiniteError(f"importance scores are NaN/inf at step {self.step_count + 1} and no finite "
                                     f"scores exist")
        elif self.scorer is not None:
            self.scorer.reset()
        separate_scoring_phase = not cfg.joint and self.plan is None and self.step_count + 1 <= cfg.prune_every
        if not separate_scoring_phase:
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
            self.opt.step()
            self.sched.step()
        self.train_model.zero_grad(set_to_none=True)
        self.pm.zero_grad(set_to_none=True)
        self.step_count += 1
        self.pos += self.per_step
        updated = self.update_masks(self.step_count)
        rec = StepRecord(step=self.step_count, loss=round(total_loss, 6), lr=float(self.sched.get_last_lr()[0]),
                         sparsity=round(sparsity(self.groups, self.masks), 6), time_s=round(time.time() - t0, 4),
                         lm_loss=round(lm_loss, 6) if cfg.distill > 0 or cfg.distill_hidden > 0 else None, scores_skipped=skipped,
                         masks_updated=updated)
        self.history.append(rec.as_dict())
        return rec

    @property
    def scoring(self) -> bool:
        """Whether the step about to run (or running) scores."""
        return self.plan is None and self.step_count + 1 <= self.last_event

    def scores(self) -> list[LayerScores]:
        """This step's group scores (from the gradients of the last backward pass), averaged over ranks."""
        if self.scorer is not None:
            s = self.scorer.collect()
        else:
            s = model_scores(self.pm, self.groups, self.crit, self.gen, self.cfg.aggregate)
        if self.acc is not None:
            s = _reduce_scores(self.acc, s, self.device)
        return s

    def update_masks(self, step: int) -> bool:
        """Tighten the masks if ``step`` is a scheduled update; returns whether it was."""
        if step not in self.events or self.ema.value is None:
            return False
        k = self.events.index(step) + 1
        heads, chans = self.widths.at(k, len(self.events), self.ema.value, self.masks)
        old = [(m.heads.clone(), m.channels.clone()) for m in self.masks.layers]
        if self.comp is not None and self.comp.collecting:
            self._top_up_compensation()  # before the first masks: the statistics are the dense model's
        elif self.comp is not None and self.cfg.compensate_stats == "current":
            self.comp.restart()  # the model as it is now: earlier masks applied, LoRA trained so far
            self._top_up_compensation(masked=True)
        mask_lowest(self.masks, self.ema.value, self.groups, heads, chans)
        if self.comp is not None:
            self.comp.stop_collecting(self.acc)  # the statistics end here (dense; or the current model, re-collected above)
            self.comp.fold(old, [(m.heads, m.channels) for m in self.masks.layers])
            if step == self.last_event:
                self.comp.release()
        self._residual_stale = self._residual
        entry: dict[str, Any] = {"step": step, "heads_per_kv": heads[self.widths.pruned[0]],
                                 "intermediate": chans[self.widths.pruned[0]],
                                 "sparsity": round(sparsity(self.groups, self.masks), 6)}
        if not self.widths.uniform:
            entry["heads_per_kv"], entry["intermediate"] = heads, [int(m.channels.sum()) for m in self.masks.layers]
        self.schedule_log.append(entry)
        return True

    def _prepare_residual(self) -> None:
        """Criterion ``residual``: complete compensation's statistics now (they are the dense model's, so this
        is before any mask) and give the scorer each kept group's residual transform for the current masks."""
        assert self.comp is not None and self.scorer is not None
        if self.comp.collecting:
            self._top_up_compensation()
            self.comp.stop_collecting(self.acc)
        self.scorer.set_transforms(self.comp.residual_transforms([(m.heads, m.channels) for m in self.masks.layers]))
        self._residual_stale = False

    def compensation_target(self) -> int:
        """Tokens compensation's statistics should rest on (``compensate_tokens``; default
        :data:`~compressor.algorithm.compensation.TOKENS_PER_INPUT` × the widest compensated input, at most
        :data:`~compressor.algorithm.compensation.TOKENS_CAP`)."""
        if self.cfg.compensate_tokens is not None:
            return int(self.cfg.compensate_tokens)
        return min(TOKENS_PER_INPUT * self.comp.widest_input(), TOKENS_CAP) if self.comp is not None else 0

    @torch.no_grad()
    def _top_up_compensation(self, minimum: int = 0, masked: bool = False) -> None:
        """Forward passes (no gradients, LoRA as it is, masks bypassed unless ``masked``) over the calibration
        sequences that follow this rank's position in the data order, until the statistics rest on
        :meth:`compensation_target` tokens (and at least ``minimum`` sequences were seen)."""
        assert self.comp is not None
        cfg, L = self.cfg, int(self.data.blocks.shape[1])
        need_tokens = max(0, self.compensation_target() - self.comp.tokens)
        n = max(-(-need_tokens // L), minimum - self.comp.tokens // L)
        if n <= 0:
            return
        was_training = self.pm.training
        self.pm.eval()
        start = self.pos + self.rank * n
        try:
            with contextlib.nullcontext() if masked else self.masks.bypassed(), self.autocast():
                self.comp.collect_grouped(self.pm, [self.data.take(start + i, min(cfg.batch_size, n - i)).to(
                    self.device) for i in range(0, n, cfg.batch_size)])
        finally:
            self.pm.train(was_training)

    def _param_groups(self, lora: list[tuple[str, nn.Parameter]], config: PruneConfig) -> list[dict[str, Any]]:
        """The optimizer's parameter groups over the trainable LoRA tensors ``lora`` (name, parameter): one group,
        or with ``lora_plus`` != 1 the A matrices at the peak learning rate and the B matrices at ``lora_plus`` times
        it (LoRA+)."""
        if config.lora_plus == 1.0:
            return [{"params": [p for _, p in lora]}]
        b = [p for n, p in lora if "lora_B" in n]
        rest = [p for n, p in lora if "lora_B" not in n]
        return [{"params": rest, "lr": self.peak_lr}, {"params": b, "lr": self.peak_lr * config.lora_plus}]

    def _apply_plan(self, plan: dict[str, Any]) -> None:
        scores = [LayerScores(h.double(), c.double()) for h, c in zip(plan["heads"], plan["channels"])]
        if len(scores) != self.groups.num_layers or any(
                s.heads.numel() != lg.num_heads or s.channels.numel() != lg.intermediate_size
                for s, lg in zip(scores, self.groups.layers)):
            raise ConfigError("the pruning plan was made for a model with different layer widths")
        self.ema.update(scores)
        heads, chans = self.widths.at(1, 1, self.ema.value, self.masks)
        old = [(m.heads.clone(), m.channels.clone()) for m in self.masks.layers]
        mask_lowest(self.masks, self.ema.value, self.groups, heads, chans)
        if self.comp is not None:  # statistics from forward passes over the first batches, then the fold
            self._top_up_compensation(minimum=self.cfg.prune_every * self.cfg.batch_size)
            self.comp.stop_collecting(self.acc)
            self.comp.fold(old, [(m.heads, m.channels) for m in self.masks.layers])
            self.comp.release()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-exactly (tensors + JSON values)."""
        return {"run_id": self.run_id, "step": self.step_count, "pos": self.pos, "history": self.history,
                "schedule": self.schedule_log,
                "lora": {n: p.detach().clone() for n, p in self.pm.named_parameters() if "lora_" in n},
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "ema": self.ema.state_dict(), "masks": self.masks.state_dict(), "gen": self.gen.get_state(),
                "rng": rng_state(), "config": self.cfg.to_dict(),
                **({"compensation": self.comp.state_dict(),
                    "base": {k: w.detach().clone() for k, w in self._base.items()}}
                   if self.comp is not None else {})}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        named = dict(self.pm.named_parameters())
        with torch.no_grad():
            for n, t in st["lora"].items():
                named[n].copy_(t)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.ema.load_state_dict(st["ema"])
        self.masks.load_state_dict(st["masks"])
        self.step_count, self.pos = st["step"], st["pos"]
        self.resumed_from = self.step_count
        self.history, self.schedule_log = st["history"], st["schedule"]
        self.gen.set_state(st["gen"])
        set_rng_state(st["rng"])
        if self.comp is not None:
            self.comp.load_state_dict(st["compensation"])
            if self.step_count >= self.last_event:
                self.comp.release()
            with torch.no_grad():
                for k, w in self._base.items():
                    w.copy_(st["base"][k])
        self._residual_stale = self._residual

    # ---- results -------------------------------------------------------------------------------
    @property
    def masked_model(self) -> nn.Module:
        """The peft model with the current masks applied: computes what the merged model will."""
        return self.pm

    def masks_agree_across_ranks(self) -> bool | None:
        if self.acc is None:
            return None
        self.acc.wait_for_everyone()
        flat = torch.cat([torch.cat([m.heads, m.channels]) for m in self.masks.layers]).to(torch.uint8).to(self.device)
        gathered = self.acc.gather(flat.unsqueeze(0)).cpu()
        return bool((gathered == gathered[0]).all())

    @property
    def output_dtype(self) -> torch.dtype | None:
        """The merged model's dtype: with a base held in bfloat16 or in 8 bits, the checkpoint's own 16-bit dtype
        or float32; otherwise None (the model's dtype, :func:`compressor.algorithm.merge.merge_and_slice`)."""
        if self.held is None and not self.cfg.base_bits:
            return None
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.source_dtype or "", torch.float32)

    def finish(self) -> nn.Module:
        """Fold LoRA into the base and slice the masked groups: the plain, smaller model (of the per-layer class
        of its architecture when the layers end with different widths, see :mod:`compressor.modeling.perlayer`)."""
        if self.scorer is not None:
            self.scorer.remove()
        if self.comp is not None:
            self.comp.release()
        self.dense_base, self._base = None, {}
        if self.cfg.gradient_checkpointing:
            checkpointing(self.model, False)
        merged = merge_and_slice(self.pm, self.groups, self.masks, dtype=self.output_dtype)
        merged.eval()
        return merged


def _float_dtype_name(model: nn.Module) -> str | None:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return str(p.dtype).replace("torch.", "")
    return None


@contextlib.contextmanager
def _swapped(params: dict[str, torch.Tensor], replacement: dict[str, torch.Tensor]):
    """Inside the block each parameter's storage is ``replacement[name]`` (no copy); restored on exit."""
    saved = {k: p.data for k, p in params.items()}
    try:
        for k, p in params.items():
            p.data = replacement[k]
        yield
    finally:
        for k, p in params.items():
            p.data = saved[k]


def _reduce_scores(acc, scores: list[LayerScores], device) -> list[LayerScores]:
    flat = torch.cat([torch.cat([s.heads, s.channels]) for s in scores]).to(device)
    flat = acc.reduce(flat, "mean").cpu()
    out, i = [], 0
    for s in scores:
        h, c = s.heads.numel(), s.channels.numel()
        out.append(LayerScores(flat[i:i + h].clone(), flat[i + h:i + h + c].clone()))
        i += h + c
    return out
