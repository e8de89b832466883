"""Following a PruneConfig from the job through the run makes no repeated call of the same resolution step (#38):
each part receives what the job resolved instead of resolving the config again."""
from __future__ import annotations

import sys
from collections import Counter

from compressor.algorithm import api, config_checks, memory_plan, precision, schedule, settings, width_plan
from compressor.algorithm.config import PruneConfig, parse_skip_layers
from compressor.algorithm.criteria import get_criterion
from compressor.algorithm.groups import discover_groups
from compressor.core.device import resolve_device
from compressor.job import prune_job
from compressor.modeling import loading
from tests.tiny import tiny_job_inputs

#: the resolution steps of a run: each at most once per job (config validation at construction aside)
STEPS = {
    "resolve_model": loading.resolve_model, "load_config": loading.load_config,
    "check_writable": api.check_writable, "resolve_device": resolve_device,
    "get_criterion": get_criterion, "precision_for": precision.precision_for,
    "resolve_amp": precision.resolve_amp, "resolve_settings": settings.resolve_settings,
    "check_output_config": width_plan.check_output_config, "prune_events": schedule.prune_events,
    "parse_skip_layers": parse_skip_layers, "peak_lr_for": PruneConfig.peak_lr_for,
    "discover_groups": discover_groups, "resolve_store": memory_plan.resolve_store,
}


def _count(fn):
    """Calls of the :data:`STEPS` while ``fn()`` runs, leaving out the memory plan's predictions for the alternative
    configs it names (those resolve other configs, not this run's) and the checks a config passes when it is built."""
    codes = {f.__code__: name for name, f in STEPS.items()}
    skip = {memory_plan.alternatives.__code__, config_checks.validate.__code__}
    seen: Counter[str] = Counter()

    def prof(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            f = frame.f_back
            while f is not None and f.f_code not in skip:
                f = f.f_back
            if f is None:
                seen[codes[frame.f_code]] += 1

    old = sys.getprofile()
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(old)
    return seen


def test_prune_job_resolves_each_step_once(tmp_path):
    src, data = tiny_job_inputs(tmp_path)
    cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, batch_size=2, seq_len=32, eval_windows=0, device="cpu",
                      save_every=2, compensate_store="auto")
    seen = _count(lambda: prune_job(str(src), tmp_path / "out", cfg, data=str(data), eval_data="none"))
    assert {k: v for k, v in seen.items() if v > 1} == {}
    # the steps a run cannot do without did run (the profile saw them)
    assert {"resolve_model", "load_config", "resolve_device", "resolve_settings", "discover_groups",
            "precision_for", "prune_events", "peak_lr_for", "resolve_store"} <= set(seen)


def test_prune_in_memory_resolves_each_step_once():
    import torch

    from tests.tiny import tiny_model

    cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, batch_size=2, seq_len=32, eval_windows=0, device="cpu")
    seen = _count(lambda: api.prune(tiny_model("llama-gqa"), cfg, torch.randint(0, 96, (8, 32))))
    assert {k: v for k, v in seen.items() if v > 1} == {}
    assert {"resolve_device", "resolve_settings", "precision_for", "resolve_store"} <= set(seen)


def test_compress_prune_resolves_each_step_once(tmp_path):
    """From the command line: options parsed into a PruneConfig, then the job; no step twice."""
    from click.testing import CliRunner

    from compressor.cli import main

    src, data = tiny_job_inputs(tmp_path)
    argv = ["prune", str(src), "--ratio", "0.5", "--steps", "4", "--prune-every", "2", "--batch-size", "2",
            "--seq-len", "32", "--eval-data", "none", "--data", str(data), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--quiet"]
    seen = _count(lambda: CliRunner().invoke(main, argv, catch_exceptions=False))
    assert (tmp_path / "out" / "config.json").is_file()
    assert {k: v for k, v in seen.items() if v > 1} == {}
    assert {"resolve_model", "load_config", "resolve_device", "resolve_settings", "precision_for"} <= set(seen)
