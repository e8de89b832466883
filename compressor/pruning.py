"""LoRAPrune's progressive pruning loop (Algorithm 1) and the one-call API :func:`prune`.

During a LoRA fine-tune with the base weights frozen, every ``prune_every`` optimizer steps the group
scores (criterion, Eq. 4) smoothed by a moving average (Eq. 11) decide which heads and channels of every
layer to mask (Eq. 13), with the sparsity rising linearly until the target is reached at
``prune_until × steps``; fine-tuning then continues. Finally the masked groups are removed and LoRA is
folded into the base (:mod:`compressor.merge`).

Run it data-parallel with ``accelerate launch --multi_gpu --num_processes N -m compressor.cli prune ...``
(works on CPU too, with gloo): every rank trains on
its own share of each batch, gradients are averaged by DDP, and the group scores are averaged across
ranks before the moving average so every rank masks the same groups.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .checkpoint import has_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import PruneConfig
from .criteria import get_criterion
from .errors import CalibrationError, ConfigError, NonFiniteError, ResumeError
from .groups import PRUNABLE, ModelGroups, discover_groups, unwrap
from .loss import decoder_hidden, supports_chunked_loss
from .loss import lm_loss as lm_loss_chunked
from .masking import MaskState, mask_lowest
from .merge import merge_and_slice
from .schedule import achieved_ratio, layer_params, prune_events, solve_widths, widths_at
from .scoring import LayerScores, MovingAverage, model_scores

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the merged, physically smaller plain causal LM (no peft).
        report: JSON-able report (ratio asked/achieved, parameters, widths, kept indices, history …).
        scores: the final moving-average group scores (the saved pruning plan).
        masks: the final masks (kept heads/channels per layer, in dense indices).
        groups: the dense model's groups.
    """

    model: nn.Module
    report: dict[str, Any]
    scores: list[LayerScores] | None
    masks: MaskState
    groups: ModelGroups
    history: list[dict[str, Any]] = field(default_factory=list)


class _Stop:
    """SIGINT → finish the current step, write a checkpoint, then raise KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self):
        if sys.platform != "win32" and _is_main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _lr_lambda(cfg: PruneConfig, total: int):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class _Data:
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


def _as_blocks(data: Any, tokenizer: Any, cfg: PruneConfig) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.shape[0] < 1 or data.shape[1] < 2:
            raise CalibrationError(f"calibration tensor must be [num_blocks >= 1, seq_len >= 2], got {tuple(data.shape)}")
        return data.long()
    from calibration import load_texts, pack_blocks

    if isinstance(data, (str, os.PathLike)):
        texts = load_texts(data)
    elif isinstance(data, Sequence) and all(isinstance(t, str) for t in data):
        texts = list(data)
    else:
        raise CalibrationError(f"calibration data must be token blocks, a list of strings or a path; got {type(data).__name__}")
    if tokenizer is None:
        raise CalibrationError("text calibration data needs a tokenizer")
    return pack_blocks(tokenizer, texts, cfg.seq_len, max_blocks=cfg.max_blocks, seed=cfg.seed, add_bos=False)


def _run_id(cfg: PruneConfig, model_id: str, blocks: torch.Tensor) -> str:
    keep = {k: v for k, v in cfg.to_dict().items() if k not in ("save_every", "eval_windows", "eval_seq_len")}
    if model_id and os.path.exists(model_id):  # './m/' and '/abs/m' name the same model
        model_id = os.path.realpath(model_id)
    h = hashlib.sha256(json.dumps([keep, model_id], sort_keys=True, default=str).encode())
    h.update(blocks.numpy().tobytes())
    return h.hexdigest()[:16]


def _sparsity(groups: ModelGroups, masks: MaskState) -> float:
    """Fraction of the prunable projections' weights currently masked."""
    total = removed = 0
    for lg, lm in zip(groups.layers, masks.layers):
        full = layer_params(lg, groups.hidden_size)
        h = int(lm.heads.sum())
        kv = lg.num_kv_heads if lg.gqa else h
        kept = layer_params(lg, groups.hidden_size, h, kv, int(lm.channels.sum()))
        total += full
        removed += full - kept
    return removed / total


def _count_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _wrap_lora(model: nn.Module, cfg: PruneConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(PRUNABLE), bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    crit = get_criterion(cfg.criterion)
    if crit.needs_weight_grad:  # vanilla Taylor: W0 gets a gradient (not updated by the optimizer)
        for mod in pm.modules():
            if hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
                w = mod.base_layer.weight
                if not w.dtype.is_floating_point:
                    raise ConfigError("criterion 'taylor' needs float base weights; it cannot run with base_bits=8")
                w.requires_grad_(True)
    return pm


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``KL(teacher ‖ student)`` of the next-token distributions (temperature 1)."""
    v = student_logits.shape[-1]
    s = torch.log_softmax(student_logits.float().reshape(-1, v), dim=-1)
    t = torch.log_softmax(teacher_logits.float().reshape(-1, v), dim=-1)
    return torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")


def _distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return None


def prune(model: Any, config: PruneConfig, data: Any, *, tokenizer: Any = None, eval_text: str | None = None,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
          plan: dict[str, Any] | None = None, progress: ProgressFn | None = None) -> PruneResult:
    """Prune ``model`` with LoRAPrune and return the merged, smaller model.

    Args:
        model: a loaded LLaMA-family causal LM (llama, mistral, qwen2), or a model spec accepted by
            :func:`compressor.models.load_model` (built-in name, HF folder, .gguf file).
        config: what to do (:class:`PruneConfig`).
        data: calibration data: a LongTensor ``[num_blocks, seq_len]``, a list of strings, or a path /
            built-in name accepted by :func:`calibration.load_texts`.
        tokenizer: needed when ``data`` or ``eval_text`` is text.
        eval_text: held-out text; perplexity before and after goes into the report
            (``config.eval_windows`` windows of ``config.eval_seq_len`` tokens).
        checkpoint_dir: where resumable checkpoints go (every ``config.save_every`` steps, and on Ctrl-C).
        resume: continue from the checkpoint in ``checkpoint_dir``.
        plan: saved pruning plan (``{"scores": [...], ...}`` from :func:`load_plan`): mask at once from
            these scores, no scoring, then fine-tune.
        progress: called after every optimizer step with ``{"step", "loss", "sparsity", "lr", ...}``.

    Returns:
        :class:`PruneResult`.

    Example:
        >>> from compressor import PruneConfig, prune, load_model
        >>> model, tok, _ = load_model("smollm2-135m")                     # doctest: +SKIP
        >>> res = prune(model, PruneConfig(ratio=0.5, steps=100), "wiki", tokenizer=tok)  # doctest: +SKIP
        >>> res.model.save_pretrained("pruned")                             # doctest: +SKIP
    """
    t_start = time.time()
    model_id = "model"
    if not isinstance(model, nn.Module):
        from .models import load_model

        model_id = str(model)
        model, tok, _ = load_model(model, dtype=config.dtype, base_bits=config.base_bits)
        tokenizer = tokenizer or tok
    else:
        model_id = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    from .models import check_architecture

    check_architecture(model.config, model_id)
    crit = get_criterion(config.criterion)
    if config.base_bits and crit.needs_weight_grad:
        raise ConfigError("criterion 'taylor' needs W's gradient in float; it cannot run with base_bits=8")
    blocks = _as_blocks(data, tokenizer, config)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and blocks.shape[1] > max_pos:
        raise ConfigError(f"seq_len {blocks.shape[1]} is above the model's limit max_position_embeddings={max_pos}")
    if checkpoint_dir is None and (resume or config.save_every):
        raise ConfigError("resume / save_every need a checkpoint folder (checkpoint_dir)")
    acc = _distributed()
    device = acc.device if acc is not None else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    is_main = acc is None or acc.is_main_process
    world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    torch.manual_seed(config.seed)

    groups = discover_groups(model)
    shapes = {(lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) for lg in groups.layers}
    if len(shapes) != 1:
        raise ConfigError(f"layers have different widths {sorted(shapes)}; only uniform models are supported")
    lg0 = groups.layers[0]
    final = solve_widths(lg0, groups.hidden_size, config.ratio, config.channel_multiple, config.head_policy)
    events = prune_events(config.steps, config.prune_every, config.prune_until) if config.joint else [config.prune_every]
    if plan is not None:
        events = []
    params_before = _count_params(model)
    prunable_before = layer_params(lg0, groups.hidden_size) * groups.num_layers

    if model.device != device and not getattr(model, "is_quantized", False):
        model.to(device)
    ppl_before = _perplexity(model, tokenizer, eval_text, config) if is_main else None

    pm = _wrap_lora(model, config)
    if config.gradient_checkpointing:
        # non-reentrant: LoRA weights get gradients although the embeddings' outputs do not require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    masks = MaskState.full(groups).install(pm, groups)
    ema = MovingAverage(config.lam)
    if plan is not None:
        scores = [LayerScores(h.double(), c.double()) for h, c in zip(plan["heads"], plan["channels"])]
        if len(scores) != groups.num_layers or any(s.heads.numel() != lg.num_heads or s.channels.numel() != lg.intermediate_size
                                                   for s, lg in zip(scores, groups.layers)):
            raise ConfigError("the pruning plan was made for a model with different layer widths")
        ema.update(scores)
        mask_lowest(masks, ema.value, groups, final.heads_per_kv, final.intermediate_size)
    trainable = [p for n, p in pm.named_parameters() if "lora_" in n and p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config, config.steps))
    train_model = pm
    if acc is not None:
        train_model, opt = acc.prepare(pm, opt)
    data_order = _Data(blocks, config.seed)
    run_id = _run_id(config, model_id, blocks)
    history: list[dict[str, Any]] = []
    schedule_log: list[dict[str, Any]] = []
    step, pos = 0, 0
    gen = torch.Generator().manual_seed(config.seed + 17)
    if resume:
        if not has_checkpoint(checkpoint_dir):
            raise ResumeError(f"--resume given but there is no checkpoint in {str(checkpoint_dir)!r}")
        st = load_checkpoint(checkpoint_dir)
        if st["run_id"] != run_id:
            raise ResumeError(f"the checkpoint in {str(checkpoint_dir)!r} was written by a run with another model, "
                              f"data or configuration (run id {st['run_id']} != {run_id}); use a fresh output or drop --resume")
        named = dict(pm.named_parameters())
        with torch.no_grad():
            for n, t in st["lora"].items():
                named[n].copy_(t)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        ema.load_state_dict(st["ema"])
        masks.load_state_dict(st["masks"])
        step, pos, history, schedule_log = st["step"], st["pos"], st["history"], st["schedule"]
        gen.set_state(st["gen"])
        set_rng_state(st["rng"])

    def snapshot() -> dict[str, Any]:
        return {"run_id": run_id, "step": step, "pos": pos, "history": history, "schedule": schedule_log,
                "lora": {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" in n},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "ema": ema.state_dict(),
                "masks": masks.state_dict(), "gen": gen.get_state(), "rng": rng_state(),
                "config": config.to_dict()}

    # LM head + loss in chunks (same value and gradients, far less memory); data-parallel runs keep the
    # stock forward, which DDP needs to synchronise gradients
    chunked = config.loss_chunk_tokens > 0 and acc is None and supports_chunked_loss(pm)
    last_event = events[-1] if events else 0
    per_step = config.batch_size * config.grad_accum * world
    train_model.train()
    with _Stop() as stop:
        while step < config.steps:
            t0 = time.time()
            batch_all = data_order.take(pos, per_step)
            mine = batch_all[rank::world]
            total_loss, lm_loss = 0.0, 0.0
            for m in range(config.grad_accum):
                mb = mine[m * config.batch_size:(m + 1) * config.batch_size].to(device)
                if chunked:
                    th = None
                    if config.distill > 0:
                        with pm.disable_adapter(), masks.bypassed():
                            th = decoder_hidden(pm, mb)
                    loss, ce = lm_loss_chunked(pm, mb, chunk_tokens=config.loss_chunk_tokens, teacher_hidden=th,
                                               distill=config.distill)
                    lm_loss += float(ce) / config.grad_accum
                else:
                    out = train_model(input_ids=mb, labels=mb)
                    loss = out.loss
                    lm_loss += float(loss.detach()) / config.grad_accum
                    if config.distill > 0:
                        with torch.no_grad(), pm.disable_adapter(), masks.bypassed():
                            teacher = pm(input_ids=mb).logits
                        loss = (1 - config.distill) * loss + config.distill * distill_loss(out.logits, teacher)
                        del teacher
                    del out
                loss = loss / config.grad_accum
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"loss became {loss.item()} at step {step + 1}; the last good checkpoint "
                                         f"(if any) is kept in {str(checkpoint_dir)!r}; resume it with --resume, or start again with a lower --lr")
                (acc.backward(loss) if acc is not None else loss.backward())
                total_loss += float(loss.detach())
            if acc is not None:
                lt = acc.reduce(torch.tensor([total_loss], device=device), "mean")
                total_loss = float(lt)
            scoring = plan is None and step + 1 <= last_event
            skipped = False
            if scoring:
                scores = model_scores(pm, groups, crit, gen)
                if acc is not None:
                    scores = _reduce_scores(acc, scores, device)
                skipped = not ema.update(scores)
                if skipped and ema.value is None and step + 1 == last_event:
                    raise NonFiniteError(f"importance scores are NaN/inf at step {step + 1} and no finite scores exist")
            separate_scoring_phase = not config.joint and plan is None and step + 1 <= config.prune_every
            if not separate_scoring_phase:
                opt.step()
                sched.step()
            train_model.zero_grad(set_to_none=True)
            pm.zero_grad(set_to_none=True)
            step += 1
            pos += per_step
            if step in events and ema.value is not None:
                k = events.index(step) + 1
                hk, ch = widths_at(k, len(events), lg0, final)
                mask_lowest(masks, ema.value, groups, hk, ch)
                schedule_log.append({"step": step, "heads_per_kv": hk, "intermediate": ch,
                                     "sparsity": round(_sparsity(groups, masks), 6)})
            rec = {"step": step, "loss": round(total_loss, 6), "lr": sched.get_last_lr()[0],
                   "sparsity": round(_sparsity(groups, masks), 6), "time_s": round(time.time() - t0, 4)}
            if config.distill > 0:
                rec["lm_loss"] = round(lm_loss, 6)
            if skipped:
                rec["scores_skipped"] = True
            history.append(rec)
            if progress is not None and is_main:
                progress(dict(rec, total_steps=config.steps))
            if checkpoint_dir is not None and is_main and (
                    (config.save_every and step % config.save_every == 0) or stop.requested):
                save_checkpoint(checkpoint_dir, snapshot())
            if stop.requested:
                raise KeyboardInterrupt(f"stopped at step {step}; checkpoint written to {str(checkpoint_dir)!r}")
    ranks_agree = None
    if acc is not None:
        acc.wait_for_everyone()
        flat = torch.cat([torch.cat([m.heads, m.channels]) for m in masks.layers]).to(torch.uint8).to(device)
        gathered = acc.gather(flat.unsqueeze(0)).cpu()
        ranks_agree = bool((gathered == gathered[0]).all())
        if not ranks_agree:
            raise RuntimeError("data-parallel ranks chose different masks; this is a bug, please report it")
    final_scores = ema.value
    if config.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    merged = merge_and_slice(pm, groups, masks)
    merged.eval()
    ppl_after = _perplexity(merged, tokenizer, eval_text, config) if is_main else None
    achieved = achieved_ratio(lg0, groups.hidden_size, final)
    params_after = _count_params(merged)
    report = {
        "model": model_id,
        "model_type": groups.model_type,
        "architecture": type(merged).__name__,
        "ratio_asked": config.ratio,
        "ratio_achieved": round(achieved, 6),
        "ratio_definition": "fraction of the weights of the decoder layers' q,k,v,o,gate,up,down projections removed",
        "params_total_before": params_before,
        "params_total_after": params_after,
        "params_prunable_before": prunable_before,
        "params_prunable_after": layer_params(lg0, groups.hidden_size, final.num_heads, final.num_kv_heads,
                                              final.intermediate_size) * groups.num_layers,
        "widths_before": {"num_attention_heads": lg0.num_heads, "num_key_value_heads": lg0.num_kv_heads,
                          "head_dim": lg0.head_dim, "intermediate_size": lg0.intermediate_size},
        "widths_after": {"num_attention_heads": final.num_heads, "num_key_value_heads": final.num_kv_heads,
                         "head_dim": lg0.head_dim, "intermediate_size": final.intermediate_size},
        "head_policy": config.head_policy,
        "gqa_policy": "query heads pruned evenly within each KV group; KV heads kept" if lg0.gqa else "MHA: whole heads (q,k,v rows + o columns)",
        "kept": [{"layer": i, "heads": lm.kept_heads(), "channels": lm.kept_channels()} for i, lm in enumerate(masks.layers)],
        "criterion": config.criterion,
        "lambda": config.lam,
        "mode": "from-plan" if plan is not None else ("joint" if config.joint else "separate"),
        "schedule": {"type": "linear", "prune_every": config.prune_every, "prune_until": config.prune_until,
                     "events": schedule_log},
        "config": config.to_dict(),
        "steps": config.steps,
        "tokens_seen": config.steps * per_step * blocks.shape[1],
        "calibration_blocks": int(blocks.shape[0]),
        "world_size": world,
        "masks_identical_across_ranks": ranks_agree,
        "history": history,
        "scores_skipped_steps": ema.skipped,
        "wall_time_s": round(time.time() - t_start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "groups_verified_with": groups.verified_with,
    }
    if plan is not None:
        report["plan_source"] = plan.get("source")
    return PruneResult(merged, report, final_scores, masks, groups, history)


def _reduce_scores(acc, scores: list[LayerScores], device) -> list[LayerScores]:
    flat = torch.cat([torch.cat([s.heads, s.channels]) for s in scores]).to(device)
    flat = acc.reduce(flat, "mean").cpu()
    out, i = [], 0
    for s in scores:
        h, c = s.heads.numel(), s.channels.numel()
        out.append(LayerScores(flat[i:i + h].clone(), flat[i + h:i + h + c].clone()))
        i += h + c
    return out


def _perplexity(model: nn.Module, tokenizer: Any, text: str | None, cfg: PruneConfig) -> dict[str, Any] | None:
    if not text or cfg.eval_windows <= 0 or tokenizer is None:
        return None
    from .evaluation import perplexity

    was = model.training
    model.eval()
    seq = min(cfg.eval_seq_len, getattr(model.config, "max_position_embeddings", cfg.eval_seq_len))
    try:
        r = perplexity(unwrap(model), tokenizer, text, seq_len=seq, max_windows=cfg.eval_windows)
    finally:
        model.train(was)
    return r


# ---- saved pruning plan ----------------------------------------------------------------------
PLAN_FILE = "pruning_plan.safetensors"


def save_plan(folder: str | os.PathLike, result: PruneResult) -> None:
    """Write the moving-average scores and masks next to a pruned model (``pruning_plan.safetensors``)."""
    from safetensors.torch import save_file

    if result.scores is None:
        return
    t: dict[str, torch.Tensor] = {}
    for i, (s, lm) in enumerate(zip(result.scores, result.masks.layers)):
        t[f"layer{i}.heads"] = s.heads.double().contiguous()
        t[f"layer{i}.channels"] = s.channels.double().contiguous()
        t[f"layer{i}.kept_heads"] = lm.heads.clone()
        t[f"layer{i}.kept_channels"] = lm.channels.clone()
    save_file(t, str(Path(folder) / PLAN_FILE), metadata={"num_layers": str(len(result.scores))})


def load_plan(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a pruning plan saved by :func:`save_plan` (raises ConfigError if missing)."""
    from safetensors import safe_open

    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{str(folder)!r} has no {PLAN_FILE}; give the output folder of an earlier `compress prune`")
    with safe_open(str(path), "pt") as f:
        n = int(f.metadata()["num_layers"])
        heads = [f.get_tensor(f"layer{i}.heads") for i in range(n)]
        channels = [f.get_tensor(f"layer{i}.channels") for i in range(n)]
    return {"heads": heads, "channels": channels, "source": str(folder)}
