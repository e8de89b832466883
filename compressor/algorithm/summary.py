"""The compression report (``compression_report.json``) of a pruning run, built from a finished loop."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.algorithm.loop import PruneLoop
from compressor.algorithm.merge import stock_config_refusal
from compressor.algorithm.width_plan import kept_params
from compressor.modeling.sizes import is_per_layer, layer_widths, model_sizes


def count_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def step_time_total(history: list[dict[str, Any]]) -> float:
    """Seconds of all training steps in ``history`` (each entry's ``time_s``): for a resumed run, every process's
    steps, where ``wall_time_s`` is the last process's only."""
    return round(sum(float(h.get("time_s", 0.0)) for h in history), 2)


def build_report(loop: PruneLoop, merged: nn.Module, *, model_id: str, params_before: int,
                 ppl_before: dict[str, Any] | None, ppl_after: dict[str, Any] | None, wall_time_s: float,
                 peak_rss_mb: float, ranks_agree: bool | None) -> dict[str, Any]:
    """Ratio asked/achieved, parameters, widths, kept indices, criterion, schedule, history, resources."""
    cfg, groups, masks = loop.cfg, loop.groups, loop.masks
    lg0 = groups.layers[0]
    kept, prunable_before = kept_params(groups, masks)
    n_heads = int(masks.layers[0].heads.sum())
    report = {
        "model": model_id,
        "model_type": groups.model_type,
        "architecture": type(merged).__name__,
        "ratio_asked": cfg.ratio,
        "ratio_achieved": round(1 - kept / prunable_before, 6),
        "ratio_definition": "fraction of the weights of the decoder layers' q,k,v,o,gate,up,down projections removed",
        "params_total_before": params_before,
        "params_total_after": count_params(merged),
        "params_prunable_before": prunable_before,
        "params_prunable_after": kept,
        "widths_before": {"hidden_size": groups.hidden_size, "num_attention_heads": lg0.num_heads,
                          "num_key_value_heads": lg0.num_kv_heads, "head_dim": lg0.head_dim,
                          "intermediate_size": lg0.intermediate_size},
        "widths_after": {"num_attention_heads": n_heads, "num_key_value_heads": lg0.num_kv_heads if lg0.gqa else n_heads,
                         "head_dim": lg0.head_dim, "intermediate_size": int(masks.layers[0].channels.sum())},
        "head_policy": cfg.head_policy,
        "gqa_policy": "query heads pruned evenly within each KV group; KV heads kept" if lg0.gqa
        else "MHA: whole heads (q,k,v rows + o columns)",
        "kept": [{"layer": i, "heads": lm.kept_heads(), "channels": lm.kept_channels()} for i, lm in enumerate(masks.layers)],
        "criterion": cfg.criterion,
        "aggregate": cfg.aggregate,
        "lambda": cfg.lam,
        "mode": "from-plan" if loop.plan is not None else ("joint" if cfg.joint else "separate"),
        "schedule": {"type": cfg.schedule, "prune_every": cfg.prune_every, "prune_start": cfg.prune_start,
                     "prune_until": cfg.prune_until, "events": loop.schedule_log},
        "config": cfg.to_dict(),
        "peak_lr": loop.peak_lr,
        "autocast_bf16": loop.amp,
        "steps": cfg.steps,
        "tokens_seen": cfg.steps * loop.per_step * loop.blocks.shape[1],
        "calibration_blocks": int(loop.blocks.shape[0]),
        "world_size": loop.world,
        "masks_identical_across_ranks": ranks_agree,
        "history": loop.history,
        "scores_skipped_steps": loop.ema.skipped,
        "wall_time_s": round(wall_time_s, 2),
        # a resumed run's wall time covers only its last process; the steps' own times cover every segment
        "step_time_total_s": step_time_total(loop.history),
        "resumed_from_step": loop.resumed_from,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "groups_verified_with": groups.verified_with,
    }
    heads, kv, inter = layer_widths(merged.config)
    if not model_sizes(merged.config).uniform:
        report["widths_after"] = {"num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": lg0.head_dim,
                                  "intermediate_size": inter, "per_layer": True}
    elif is_per_layer(merged.config):
        # uniform widths whose stock config the installed transformers refuses: a per-layer remote-code folder
        report["stock_config_refused"] = stock_config_refusal(merged.config)
    if loop.plan is not None:
        report["plan_source"] = loop.plan.get("source")
    return report
