"""A :class:`~compressor.algorithm.config.PruneConfig` resolved once for one model on one device: the criterion
object, the precision, the width plan (checked against what transformers can reload), the mask-update steps and
the peak learning rate. Each part of the loop receives these instead of resolving the config again."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compressor.algorithm.config import PruneConfig
from compressor.algorithm.criteria import Criterion, get_criterion
from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.precision import Precision, precision_for
from compressor.algorithm.schedule import prune_events
from compressor.algorithm.width_plan import WidthPlan, check_output_config
from compressor.core.errors import ConfigError


@dataclass
class RunSettings:
    """What one run of ``config`` on one model resolves to.

    Attributes:
        device: where it computes.
        criterion: the criterion object (:func:`compressor.algorithm.criteria.get_criterion`).
        precision: autocast and the dtype the frozen base is held in.
        widths: the target widths per layer at each mask update.
        stock_config_refused: the installed transformers' refusal of the uniform stock config when the result is
            written as a per-layer remote-code folder instead (None: a stock folder, or per-layer widths anyway).
        events: the steps that update the masks (none with a saved plan).
        peak_lr: the peak learning rate (:meth:`PruneConfig.peak_lr_for` the model's width).
        store: where compensation's statistics go and layers per collection pass, when a memory plan decided it
            (None: decided when the loop starts, :func:`compressor.algorithm.compensation_run.choose_store`).
    """

    device: torch.device
    criterion: Criterion
    precision: Precision
    widths: WidthPlan
    stock_config_refused: str | None
    events: list[int]
    peak_lr: float
    store: tuple[str, int] | None = None


def resolve_settings(model: Any, config: PruneConfig, groups: ModelGroups, *, device: torch.device | None = None,
                     criterion: Criterion | None = None, precision: Precision | None = None, plan: Any = None,
                     store: tuple[str, int] | None = None) -> RunSettings:
    """Resolve ``config`` for ``model`` (its ``groups``) on ``device`` (default: ``config.device``); ``criterion``,
    ``precision``: already resolved by the caller (the job resolves it before loading, to load the base in its held dtype);
    ``plan``: a saved pruning plan (the masks come from it at once: no mask-update steps); ``store``: compensation's
    store as a memory plan resolved it.

    Raises:
        ConfigError: the layers differ in width, the criterion cannot run on a quantized base, or the widths are
            infeasible or would not reload (:func:`compressor.algorithm.width_plan.check_output_config`).
    """
    if device is None:
        from compressor.core.device import resolve_device

        device = resolve_device(config.device)
    crit = criterion or get_criterion(config.criterion)
    if config.base_bits and crit.needs_weight_grad:
        raise ConfigError(f"criterion 'taylor' needs W's gradient in float; it cannot run with "
                          f"base_bits={config.base_bits}")
    shapes = {(lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) for lg in groups.layers}
    if len(shapes) != 1:
        raise ConfigError(f"layers have different widths {sorted(shapes)}; only uniform models are supported")
    widths, refusal = check_output_config(model, groups, config)  # refuse now, not after the run
    if plan is not None:
        events: list[int] = []
    elif config.joint:
        events = prune_events(config.steps, config.prune_every, config.prune_until, config.prune_start)
    else:
        events = [config.prune_every]
    return RunSettings(device=device, criterion=crit,
                       precision=precision or precision_for(config, device, groups.hidden_size, crit),
                       widths=widths, stock_config_refused=refusal, events=events,
                       peak_lr=config.peak_lr_for(groups.hidden_size), store=store)
