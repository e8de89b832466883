"""compressor.job.prune_job: the job writes the model folder, the plan, the report (with the memory of every
phase) and its picture, and refuses to overwrite an output."""
from __future__ import annotations

import json

import pytest

from compressor.core.memory import current_rss_mb, reset_peak_rss
from tests.tiny import tiny_config, tiny_job_inputs

needs_proc = pytest.mark.skipif(current_rss_mb() is None or not reset_peak_rss(), reason="needs Linux /proc")


def test_prune_job_writes_folder_plan_report_and_picture(tmp_path):
    import json

    from compressor.core.errors import OutputExistsError
    from compressor.job import prune_job

    src, data = tiny_job_inputs(tmp_path)
    out = tmp_path / "out"
    res = prune_job(str(src), out, tiny_config(steps=4), data=str(data), eval_data="none")
    assert (out / "model.safetensors").is_file() and (out / "pruning_plan.safetensors").is_file()
    assert (out / "pruning.png").stat().st_size > 1000
    rep = json.loads((out / "compression_report.json").read_text())
    assert rep["ratio_achieved"] == res.report["ratio_achieved"] and not (tmp_path / "out.ckpt").exists()
    with pytest.raises(OutputExistsError):
        prune_job(str(src), out, tiny_config(steps=4), data=str(data), eval_data="none")


@needs_proc
def test_prune_job_reports_every_phase(tmp_path):
    from compressor.job import prune_job

    src, data = tiny_job_inputs(tmp_path)
    out = tmp_path / "out"
    res = prune_job(str(src), out, tiny_config(steps=4), data=str(data), eval_data="none")
    rep = json.loads((out / "compression_report.json").read_text())
    names = [p["phase"] for p in rep["memory_phases"]]
    assert names == ["texts", "load", "tokenize", "calibration", "perplexity_before", "loop", "merge",
                     "perplexity_after", "save"]
    assert rep["peak_rss_mb"] >= max(p["peak_mb"] for p in rep["memory_phases"]) - 0.1
    assert res.report["memory_phases"] == rep["memory_phases"]
