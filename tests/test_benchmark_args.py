"""Benchmark scripts refuse a bad ``--name`` before any work, with a message naming the value; the default-budget
table reports a resumed run's step time; every script has an entry with its command in ``benchmarks/README.md``."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,extra", [("step_speed.py", []), ("quality_table.py", ["--row", "a=b.json"])])
@pytest.mark.parametrize("bad", ["../x", "sub\\x", ".hidden", ""])
def test_a_result_name_with_a_folder_or_leading_dot_is_refused(script, extra, bad):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra, "--name", bad],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert f"--name {bad!r}: give a plain file stem" in r.stderr
    assert "benchmarks/results/" in r.stderr


def test_default_budget_table_reports_a_resumed_runs_step_time():
    """A resumed run's wall_time_s covers its last process only; the table adds the steps' own time and flags it,
    also for reports written before they recorded resumed_from_step."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import default_budget as db
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    hist = [{"step": i + 1, "time_s": 10.0} for i in range(4)]
    assert db._step_time({"history": hist}) == 40.0
    assert db._resumed_from({"history": hist, "wall_time_s": 45.0}) is None  # one process: steps < wall
    assert db._resumed_from({"history": hist, "wall_time_s": 25.0}) == -1  # an older report, resumed
    assert db._resumed_from({"history": hist, "wall_time_s": 25.0, "resumed_from_step": 2}) == 2
    assert db._resumed_from({"history": hist, "wall_time_s": 45.0, "resumed_from_step": None}) is None


#: modules in benchmarks/ that are no script of their own (imported by the scripts), so need no command line
BENCHMARK_HELPERS = {"common.py"}


def _fenced(text: str) -> str:
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))


def test_every_benchmark_script_is_in_the_index_with_a_command():
    """A new script without an entry in benchmarks/README.md (its command in a code block) fails here."""
    index = (ROOT / "benchmarks" / "README.md").read_text()
    code = _fenced(index)
    scripts = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
    assert "default_budget.py" in scripts and "gpu_check.sh" in scripts  # the glob found the scripts
    missing = [s for s in scripts if s not in BENCHMARK_HELPERS
               and not re.search(rf"(?:^|\s)(?:python|bash) benchmarks/{re.escape(s)}(?:\s|$)", code, re.M)]
    assert not missing, f"benchmarks/README.md gives no command line for {missing}: add an entry to the index"
    unnamed = [s for s in BENCHMARK_HELPERS if f"`{s}`" not in index]
    assert not unnamed, f"benchmarks/README.md does not name the helper(s) {unnamed}"


def test_the_index_names_no_script_that_does_not_exist():
    index = (ROOT / "benchmarks" / "README.md").read_text()
    named = set(re.findall(r"benchmarks/([a-z0-9_]+\.(?:py|sh))\b", index))
    named |= set(re.findall(r"`([a-z0-9_]+\.(?:py|sh))`", index))
    missing = sorted(s for s in named if not (ROOT / "benchmarks" / s).is_file())
    assert not missing, f"benchmarks/README.md names scripts that do not exist: {missing}"


def test_run_compress_runs_the_cli_as_a_user_does_and_reports_a_failure():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from common import CompressFailed, run_compress
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    run = run_compress(["prune", "--help"], capture=True, echo=False)
    assert run.returncode == 0 and "--ratio" in run.output and run.command == "compress prune --help"
    with pytest.raises(CompressFailed, match=r"compress no-such-command failed \(2\)"):
        run_compress([Path("no-such-command")], capture=True, echo=False)


def test_no_benchmark_imports_a_private_name_of_the_packages():
    import ast

    bad = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                    "compressor", "exporters", "calibration", "plots", "common"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, bad


def test_step_speed_times_the_products_head_loss_and_it_matches_the_textbook_one():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_speed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                         intermediate_size=48, num_hidden_layers=1))
    rows = step_speed.head_loss_rows(model, 2, 300, 1)  # 600 positions: three chunks of 256
    assert rows[-1]["max_abs_grad_diff"] < 1e-6 and rows[-1]["loss_diff"] < 1e-5


def _common():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return common


def test_results_record_paths_relative_to_the_repository_or_by_name():
    c = _common()
    where = dict(root="/work/main", cache="/root/.cache/lorapress")
    assert c.rel_path("/work/main/benchmarks/results/x.json", **where) == "benchmarks/results/x.json"
    assert c.rel_path("/work/runsX/NAME", **where) == "NAME"
    assert c.rel_path("/root/.cache/lorapress/assembled/gemma3-270m/a5fd/gemma-3-270m-q4_k_m.gguf", **where) == \
        "gemma3-270m"
    assert c.rel_path("/tmp/fused/p50_onnx-genai/model.onnx", **where) == "p50_onnx-genai/model.onnx"
    assert c.rel_path("smollm2-135m", **where) == "smollm2-135m"  # a built-in name stays
    assert c.rel_path(ROOT / "runs" / "s50") == "runs/s50"  # this checkout
    prefixes = ["/work", "/tmp", "/root"]
    assert c.rel_text("compress prune m --out /tmp/real/g-30 --force", prefixes, **where) == \
        "compress prune m --out g-30 --force"
    assert c.rel_text('File "/work/main/compressor/cli.py", line 3', prefixes, **where) == 'File "compressor/cli.py", line 3'
    assert c.rel_text("see /work/shared/data/wikitext2/test.txt.", prefixes, **where) == "see wikitext2/test.txt."
    assert c.rel_text("a/tmp/b and /tmpx/y", prefixes, **where) == "a/tmp/b and /tmpx/y"  # not a machine folder
    assert c.rel_paths({"/tmp/f/p50": {"folder": "/tmp/f/p50", "n": 1}}, prefixes, **where) == \
        {"p50": {"folder": "p50", "n": 1}}


def test_no_result_file_and_no_script_holds_a_machine_path():
    absolute = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home|Users)/")
    files = [p for p in (ROOT / "benchmarks" / "results").rglob("*") if p.is_file() and p.suffix != ".png"]
    assert len(files) > 100
    bad = [str(p.relative_to(ROOT)) for p in files if absolute.search(p.read_text(errors="replace"))]
    assert not bad, f"absolute paths of a machine in {bad}: record them with common.rel_path / write_result"
    for p in sorted((ROOT / "benchmarks").glob("*.py")):
        text = p.read_text()
        assert '"shared" / "data"' not in text and "shared/data" not in text, \
            f"{p.name}: find data through calibration.load_eval_text, not a folder of one machine"


def test_a_prune_report_copied_into_the_results_is_compact_and_loses_no_figure():
    import json

    c = _common()
    report = {"model": "m", "widths_before": {"intermediate_size": 12},
              "kept": [{"layer": 0, "heads": [0, 2], "channels": [0, 3, 11]}, {"layer": 1, "heads": [1], "channels": []}],
              "history": [{"step": 1, "loss": 2.5, "lr": 1e-3, "time_s": 4.0, "per_layer": [1, 2]},
                          {"step": 2, "loss": 2.25, "lr": 5e-4, "time_s": 5.0, "per_layer": [3, 4]}],
              "wall_time_s": 9.5}
    small = c.compact_prune_report(report)
    assert "history" not in small and small["history_columns"]["loss"] == [2.5, 2.25]
    assert "per_layer" not in small["history_columns"]  # a per-step array is dropped
    assert c.history_rows(small) == [{k: v for k, v in h.items() if k != "per_layer"} for h in report["history"]]
    assert [c.kept_channels(e) for e in small["kept"]] == [[0, 3, 11], []]
    assert small["kept"][0]["channels_of"] == 12 and small["kept"][0]["heads"] == [0, 2]
    assert c.compact_prune_report(small) == small  # idempotent
    assert json.loads(c.dumps_compact(small)) == small
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import default_budget as db
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert db._step_time(small) == db._step_time(report) == 9.0


def test_the_prune_reports_in_the_results_are_compact():
    files = sorted((ROOT / "benchmarks" / "results").rglob("*compression_report.json"))
    assert len(files) > 40
    big = [f"{p.name}: {p.stat().st_size // 1000} kB" for p in files if p.stat().st_size > 150_000]
    assert not big, f"copy prune reports with common.copy_prune_report (compacted): {big}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py"))
def test_every_benchmark_script_answers_help_without_running(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]
