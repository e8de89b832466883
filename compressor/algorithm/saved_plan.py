"""A saved pruning plan (the final moving-average scores of an earlier run, ``pruning_plan.safetensors`` in its
output folder; written and read by :mod:`compressor.job.checkpoint`), checked against the model it is applied to."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError

#: the plan's file name inside an output folder
PLAN_FILE = "pruning_plan.safetensors"


def check_plan(plan: dict[str, Any], config: Any, model: str = "the model") -> None:
    """Refuse, before any work, a pruning plan made for a model of other sizes than ``config``'s.

    Raises:
        ConfigError: naming the plan file, its layers x heads x channels and the model's.
    """
    from compressor.modeling.sizes import model_sizes

    s = model_sizes(config)
    heads = sorted({int(h.numel()) for h in plan["heads"]})
    chans = sorted({int(c.numel()) for c in plan["channels"]})
    if len(plan["heads"]) != s.layers or heads != [s.heads] or chans != [s.intermediate]:
        src = Path(plan.get("source", ".")) / PLAN_FILE
        raise ConfigError(
            f"pruning plan {str(src)!r} was made for a model with {len(plan['heads'])} layers x "
            f"{'/'.join(map(str, heads))} heads x {'/'.join(map(str, chans))} MLP channels, but {model!r} has "
            f"{s.layers} x {s.heads} x {s.intermediate}; give the output folder of a `compress prune` of this model")


def plan_scores(plan: dict[str, Any], groups: Any) -> list[Any]:
    """The plan's scores as :class:`~compressor.algorithm.scoring.LayerScores` (float64) for the model of ``groups``.

    Raises:
        ConfigError: the plan was made for other layer widths.
    """
    from compressor.algorithm.scoring import LayerScores

    scores = [LayerScores(h.double(), c.double()) for h, c in zip(plan["heads"], plan["channels"])]
    if len(scores) != groups.num_layers or any(
            s.heads.numel() != lg.num_heads or s.channels.numel() != lg.intermediate_size
            for s, lg in zip(scores, groups.layers)):
        raise ConfigError("the pruning plan was made for a model with different layer widths")
    return scores
