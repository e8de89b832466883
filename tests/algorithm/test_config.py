"""compressor.algorithm.config: PruneConfig validation (each bad value named), skip_layers parsing, recipes, the
default learning rate (by ratio, scaled by the model width, an explicit one wins)."""
from __future__ import annotations

import math

import pytest
import torch

from compressor.algorithm.api import prune
from compressor.algorithm.config import PruneConfig, parse_skip_layers
from compressor.algorithm.loop import PruneLoop
from compressor.core.errors import ConfigError
from tests.tiny import tiny_config, tiny_eval_config, tiny_model


def test_parse_skip_layers():
    assert parse_skip_layers("", 10) == []
    assert parse_skip_layers("official", 30) == [0, 1, 2, 29]
    assert parse_skip_layers("official", 10) == [0, 9]
    assert parse_skip_layers("0,-1", 4) == [0, 3]
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        parse_skip_layers("7", 4)
    with pytest.raises(ConfigError, match="every layer"):
        parse_skip_layers("0,1", 2)
    with pytest.raises(ConfigError, match="skip_layers='x'"):
        PruneConfig(ratio=0.5, skip_layers="x")


def test_new_config_fields_validate():
    for kw, msg in [(dict(schedule="exp"), "schedule='exp'"), (dict(aggregate="mean"), "aggregate"),
                    (dict(widths="auto"), "widths"), (dict(min_channels=0.0), "min_channels"),
                    (dict(max_grad_norm=-1.0), "max_grad_norm"), (dict(prune_start=0.5), "prune_start"),
                    (dict(ema_start="one"), "ema_start")]:
        with pytest.raises(ConfigError, match=msg):
            PruneConfig(ratio=0.5, **kw)


def test_recipes_are_valid_configs():
    from compressor.algorithm.config import RECIPES

    for name, fields in RECIPES.items():
        cfg = PruneConfig(ratio=0.5, **fields)
        assert all(getattr(cfg, k) == v for k, v in fields.items()), name
    paper = PruneConfig(ratio=0.5, **RECIPES["paper"])
    assert (paper.criterion, paper.distill, paper.compensate) == ("lora", 0.0, False)


@pytest.mark.parametrize("ratio,expected", [(0.1, 1e-3), (0.2, 1e-3), (0.3, 2e-3), (0.5, 2e-3), (0.7, 2e-3)])
def test_default_lr_follows_the_ratio_and_an_explicit_lr_wins(ratio, expected):
    from compressor.algorithm.config import LR_BY_RATIO

    assert PruneConfig(ratio=ratio).lr is None and PruneConfig(ratio=ratio).peak_lr == expected
    assert PruneConfig(ratio=ratio, lr=3e-4).peak_lr == 3e-4
    # replace(ratio=...) re-derives the default (a from-plan re-prune at another ratio must not inherit it)
    assert PruneConfig(ratio=0.5).replace(ratio=0.2).peak_lr == 1e-3
    assert LR_BY_RATIO[-1][0] == math.inf, "every ratio gets a learning rate"
    loop = PruneLoop(tiny_model(), tiny_config(ratio=ratio, lr=None), torch.randint(0, 96, (8, 32)))
    assert loop.opt.param_groups[0]["initial_lr"] == expected
    with pytest.raises(ConfigError, match="lr=0.0 is not valid"):
        PruneConfig(ratio=ratio, lr=0.0)


def test_default_lr_scales_down_with_the_model_width_and_an_explicit_lr_never_does():
    from compressor.algorithm.config import LR_REF_HIDDEN

    cfg = PruneConfig(ratio=0.5)
    assert cfg.peak_lr_for(LR_REF_HIDDEN) == cfg.peak_lr_for(64) == cfg.peak_lr_for(None) == cfg.peak_lr == 2e-3
    assert cfg.peak_lr_for(2 * LR_REF_HIDDEN) == pytest.approx(1e-3)
    assert cfg.peak_lr_for(896) == pytest.approx(2e-3 * 576 / 896)  # Qwen2.5-0.5B: ~1.29e-3
    assert PruneConfig(ratio=0.2).peak_lr_for(4096) == pytest.approx(1e-3 * 576 / 4096)
    assert PruneConfig(ratio=0.5, lr=3e-3).peak_lr_for(4096) == 3e-3
    # the loop and its report use the width-scaled value (a wide tiny model: 1152 = 2 x the reference width)
    model = tiny_model("llama-gqa", layers=1, hidden_size=2 * LR_REF_HIDDEN, intermediate_size=64)
    res = prune(model, tiny_config(lr=None, steps=2, prune_every=1), torch.randint(0, 96, (4, 16)))
    assert res.report["peak_lr"] == pytest.approx(1e-3) and res.report["config"]["lr"] is None
    assert max(h["lr"] for h in res.report["history"]) <= 1e-3 + 1e-12


def test_config_without_ratio_names_it():
    with pytest.raises(ConfigError, match="ratio is required"):
        PruneConfig()


def test_default_compensation_refuses_8bit_base_naming_the_fix():
    from compressor.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--no-compensate"):
        tiny_eval_config(base_bits=8)
