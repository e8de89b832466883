"""A catalogue of bad inputs: each one, fed through the CLI, must give a one-line ``Error: ...`` message that
names the bad value and what would be valid, a non-zero exit code (2 for bad input), no traceback, and
nothing written at the output path.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressor.cli import main
from tests.tiny import tiny_model, tiny_text, tiny_tokenizer


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """Every input file of the catalogue, built once."""
    import torch
    import transformers

    w = tmp_path_factory.mktemp("bad_inputs")
    tiny_model("llama-gqa").save_pretrained(w / "model")
    tiny_tokenizer().save_pretrained(w / "model")
    (w / "calib.txt").write_text(tiny_text(3000))

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96,
                                                                n_positions=64))
    gpt2.save_pretrained(w / "gpt2")
    (w / "noconfig").mkdir()
    (w / "noconfig" / "notes.txt").write_text("not a model")
    (w / "noweights").mkdir()
    shutil.copy(w / "model" / "config.json", w / "noweights")
    shutil.copytree(w / "model", w / "notokenizer")
    for f in (w / "notokenizer").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    shutil.copytree(w / "model", w / "corrupt")
    (w / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    shutil.copytree(w / "model", w / "truncated")
    data = (w / "model" / "model.safetensors").read_bytes()
    (w / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    shutil.copytree(w / "model", w / "pickle")
    (w / "pickle" / "model.safetensors").unlink()
    torch.save(tiny_model("llama-gqa").state_dict(), w / "pickle" / "pytorch_model.bin")
    (w / "trunc.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00\x07")
    (w / "zip.gguf").write_bytes(b"PK\x03\x04" + b"\x00" * 32)
    (w / "weights.txt").write_text("hello")
    (w / "twogguf").mkdir()
    (w / "twogguf" / "a.gguf").write_bytes(b"GGUF")
    (w / "twogguf" / "b.gguf").write_bytes(b"GGUF")
    (w / "emptydir").mkdir()

    (w / "empty.txt").write_text("")
    (w / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (w / "latin1.txt").write_bytes("caf\xe9 w1 w2 w3".encode("latin-1"))
    (w / "short.txt").write_text("w1 w2 w3")
    (w / "nofield.jsonl").write_text('{"content": "w1 w2"}\n{"content": "w3"}\n')
    (w / "bad.jsonl").write_text('{"text": "w1 w2"}\n{"text": w3\n')

    (w / "unknown.yaml").write_text("ratio: 0.5\nratioo: 0.3\n")
    (w / "wrongtype.yaml").write_text('ratio: "half"\n')
    (w / "broken.yaml").write_text("ratio: [0.5\n  steps: : :\n")
    (w / "list.yaml").write_text("- ratio\n- 0.5\n")
    (w / "afile").write_text("a file")
    (w / "fakeonnx").mkdir()  # passes the folder checks of `compress bench`, but is no ONNX graph
    (w / "fakeonnx" / "model.onnx").write_bytes(b"not an onnx graph")
    shutil.copy(w / "model" / "config.json", w / "fakeonnx")
    return w


# ---------------------------------------------------------------------------------------------- the catalogue
@dataclass
class Case:
    id: str
    argv: list[str]  # "{w}" is the fixture folder, "{out}" the output path
    needles: list[str]  # all must appear in the message ("{w}" / "{out}" substituted)
    code: int = 2
    prep: str | None = None  # "file" / "full": the output path exists as a file / non-empty folder;
    # "locked": {w}/locked is a model folder with mode 000
    cwd: bool = False  # run from inside {w} (relative paths)


def P(*extra: str, model: str = "{w}/model", data: str = "{w}/calib.txt", ratio: str | None = "0.5") -> list[str]:
    """A prune command line that would succeed, with ``extra`` options appended (later options win)."""
    argv = ["prune", model, "--data", data, "--out", "{out}", "--steps", "4", "--prune-every", "2", "--seq-len", "32",
            "--eval-data", "none", "--quiet"]
    return argv + (["--ratio", ratio] if ratio is not None else []) + list(extra)


CASES = [
    # ---- model path
    Case("model-missing", P(model="{w}/nope"), ["'{w}/nope'", "not found", "not an existing folder or .gguf file"]),
    Case("model-missing-relative", P(model="emptydir/nope"), ["'emptydir/nope'", "not found", "has no 'nope'"], cwd=True),
    Case("model-unreadable", P(model="{w}/locked"), ["'{w}/locked'", "not readable"], prep="locked"),
    Case("model-no-config", P(model="{w}/noconfig"), ["'{w}/noconfig'", "no config.json", "Hugging Face model folder"]),
    Case("model-no-weights", P(model="{w}/noweights"), ["'{w}/noweights'", "no weight files (*.safetensors)"]),
    Case("model-no-tokenizer", P(model="{w}/notokenizer"), ["'{w}/notokenizer'", "has no tokenizer", "save_pretrained"]),
    Case("model-unsupported-arch", P(model="{w}/gpt2"), ["'gpt2'", "supported: llama", "qwen2"]),
    Case("model-corrupt-safetensors", P(model="{w}/corrupt"), ["'{w}/corrupt'", "corrupt or incomplete"]),
    Case("model-truncated-safetensors", P(model="{w}/truncated"), ["'{w}/truncated'", "corrupt or incomplete"]),
    Case("model-truncated-gguf", P(model="{w}/trunc.gguf"), ["'{w}/trunc.gguf'", "corrupt or truncated"]),
    Case("model-gguf-bad-magic", P(model="{w}/zip.gguf"), ["'{w}/zip.gguf'", "not a GGUF file", "bad magic"]),
    Case("model-not-gguf-file", P(model="{w}/weights.txt"), ["'{w}/weights.txt'", "not a .gguf file", "model folder"]),
    Case("model-several-ggufs", P(model="{w}/twogguf"), ["'{w}/twogguf'", "several .gguf files"]),
    Case("model-pickle-only", P(model="{w}/pickle"), ["'{w}/pickle'", "pickle", "--allow-pickle", "safetensors"]),
    # ---- ratio
    Case("ratio-0", P(ratio="0"), ["--ratio", "'0'", "open interval (0, 1)"]),
    Case("ratio-1", P(ratio="1"), ["--ratio", "'1'", "open interval (0, 1)"]),
    Case("ratio-negative", P(ratio="-0.5"), ["--ratio", "'-0.5'", "open interval (0, 1)"]),
    Case("ratio-above-1", P(ratio="1.5"), ["--ratio", "'1.5'", "open interval (0, 1)"]),
    Case("ratio-nan", P(ratio="nan"), ["--ratio", "'nan'", "open interval (0, 1)"]),
    Case("ratio-not-a-number", P(ratio="abc"), ["--ratio", "'abc'", "not a number", "(0, 1)"]),
    Case("ratio-leaves-no-heads", P(ratio="0.99"), ["ratio 0.99", "no attention heads", "largest feasible ratio"]),
    Case("ratio-missing", P(ratio=None), ["--ratio is required", "(0, 1)"]),
    # ---- schedule / optimizer options
    Case("steps-below-prune-every", P("--steps", "1"), ["steps=1", "prune_every=2", "steps >= prune_every"]),
    Case("steps-0", P("--steps", "0"), ["steps=0", "at least 1"]),
    Case("steps-not-int", P("--steps", "many"), ["--steps", "'many' is not a valid integer"]),
    Case("lora-rank-0", P("--lora-r", "0"), ["lora_r=0", "rank must be >= 1"]),
    Case("lora-rank-negative", P("--lora-r", "-1"), ["lora_r=-1", "rank must be >= 1"]),
    Case("lora-dropout-1", P("--lora-dropout", "1"), ["lora_dropout=1.0", "[0, 1)"]),
    Case("lambda-1", P("--lam", "1"), ["lam=1.0", "[0, 1)"]),
    Case("distill-above-1", P("--distill", "1.5"), ["distill=1.5", "[0, 1]"]),
    Case("distill-nan", P("--distill", "nan"), ["distill=nan", "[0, 1]"]),
    Case("loss-chunk-negative", P("--loss-chunk-tokens", "-1"), ["loss_chunk_tokens=-1", "0 for the stock loss"]),
    Case("lr-nan", P("--lr", "nan"), ["lr=nan", "> 0"]),
    Case("prune-until-0", P("--prune-until", "0"), ["prune_until=0.0", "(0, 1]"]),
    Case("warmup-too-long", P("--warmup-steps", "4"), ["warmup_steps=4", "[0, steps=4)"]),
    Case("batch-size-0", P("--batch-size", "0"), ["batch_size=0", "at least 1"]),
    Case("max-blocks-0", P("--max-blocks", "0"), ["max_blocks=0", "at least 1"]),
    Case("channel-multiple-0", P("--channel-multiple", "0"), ["channel_multiple=0", "at least 1"]),
    Case("eval-windows-negative", P("--eval-windows", "-1"), ["eval_windows=-1", ">= 0"]),
    Case("dtype-unknown", P("--dtype", "float8"), ["'float8' is not one of", "'float32'", "'bfloat16'"]),
    Case("criterion-unknown", P("--criterion", "fisher"), ["'fisher'", "lora, magnitude, random, residual, taylor"]),
    Case("criterion-residual-no-compensate", P("--criterion", "residual", "--no-compensate"),
         ["criterion='residual'", "compensate=True", "--no-compensate", "'activation'"]),
    # ---- calibration data and lengths
    Case("calib-missing", P(data="{w}/nodata.txt"), ["'{w}/nodata.txt'", "not found", "Valid sources"]),
    Case("calib-folder", P(data="{w}/emptydir"), ["'{w}/emptydir'", "is a folder", "give a file"]),
    Case("calib-empty", P(data="{w}/empty.txt"), ["'{w}/empty.txt'", "is empty"]),
    Case("calib-binary", P(data="{w}/binary.txt"), ["'{w}/binary.txt'", "looks binary", "UTF-8 text"]),
    Case("calib-not-utf8", P(data="{w}/latin1.txt"), ["'{w}/latin1.txt'", "not UTF-8"]),
    Case("calib-too-short", P(data="{w}/short.txt"), ["3 tokens", "one block of 32", "smaller seq_len"]),
    Case("calib-jsonl-no-text-field", P(data="{w}/nofield.jsonl"), ["no field 'text'", "'content'", "--text-field"]),
    Case("calib-jsonl-bad-line", P(data="{w}/bad.jsonl"), ["'{w}/bad.jsonl'", "line 2 is not valid JSON"]),
    Case("eval-data-missing", P("--eval-data", "{w}/noeval.txt"), ["'{w}/noeval.txt'", "not found"]),
    Case("seq-len-above-model-limit", P("--seq-len", "4096"), ["seq_len 4096", "max_position_embeddings 128",
                                                               "between 2 and 128"]),
    Case("seq-len-1", P("--seq-len", "1"), ["seq_len=1", "at least 2"]),
    # ---- output / checkpoint / plan paths and flags
    Case("out-is-file", P(), ["'{out}'", "existing file", "folder path"], prep="file"),
    Case("out-inside-file", P("--out", "{w}/afile/sub"), ["'{w}/afile/sub'", "which is a file"]),
    Case("out-not-empty", P(), ["'{out}'", "not empty", "--force"], prep="full"),
    Case("checkpoint-dir-is-file", P("--save-every", "2", "--checkpoint-dir", "{w}/afile"),
         ["checkpoint path '{w}/afile'", "existing file"]),
    Case("resume-without-checkpoint", P("--resume"), ["--resume", "no checkpoint in '{out}.ckpt'"], code=1),
    Case("resume-with-from-plan", P("--resume", "--from-plan", "{w}/model"), ["--resume and --from-plan"]),
    Case("from-plan-without-plan", P("--from-plan", "{w}/emptydir"), ["'{w}/emptydir'", "no pruning_plan.safetensors"]),
    # ---- config files
    Case("config-missing", P("--config", "{w}/nope.yaml", ratio=None), ["'{w}/nope.yaml'", "does not exist"]),
    Case("config-unknown-key", P("--config", "{w}/unknown.yaml", ratio=None), ["'ratioo'", "valid keys", "prune_every"]),
    Case("config-wrong-type", P("--config", "{w}/wrongtype.yaml", ratio=None), ["ratio='half'", "expected float"]),
    Case("config-unparsable", P("--config", "{w}/broken.yaml", ratio=None), ["'{w}/broken.yaml'", "cannot be parsed"]),
    Case("config-not-a-mapping", P("--config", "{w}/list.yaml", ratio=None), ["must be a mapping", "got list"]),
    # ---- eval
    Case("eval-unknown-task", ["eval", "{w}/model", "--tasks", "wikitext3", "--out", "{out}"],
         ["'wikitext3'", "valid tasks", "wikitext2", "piqa"]),
    Case("eval-missing-model", ["eval", "{w}/nope", "--out", "{out}"], ["'{w}/nope'", "not found"]),
    Case("eval-out-under-a-file", ["eval", "{w}/model", "--out", "{w}/calib.txt/reports"],
         ["--out", "'{w}/calib.txt'", "is a file, not a folder"]),
    Case("eval-out-folder-parent-missing", ["eval", "{w}/model", "--out", "{w}/nodir/deeper"],
         ["'{w}/nodir/deeper'", "does not exist"]),
    Case("eval-out-folder-missing", ["eval", "{w}/model", "--out", "{w}/nodir/ev.json"], ["'{w}/nodir'", "does not exist"]),
    Case("eval-no-tasks", ["eval", "{w}/model", "--tasks", "", "--out", "{out}"], ["no tasks given", "valid tasks"]),
    Case("eval-limit-0", ["eval", "{w}/model", "--tasks", "piqa", "--limit", "0", "--out", "{out}"],
         ["limit 0", "positive integer"]),
    Case("eval-seq-len-above-model-limit", ["eval", "{w}/model", "--seq-len", "4096", "--out", "{out}"],
         ["seq_len 4096", "max_position_embeddings 128"]),
    Case("eval-unsupported-arch", ["eval", "{w}/gpt2", "--out", "{out}"], ["'gpt2'", "supported: llama"]),
    # ---- export
    Case("export-non-model-folder", ["export", "{w}/noconfig", "--format", "onnx", "--out", "{out}"],
         ["'{w}/noconfig'", "no config.json", "Hugging Face model folder"]),
    Case("export-missing-model", ["export", "{w}/nope", "--out", "{out}"], ["'{w}/nope'", "not found"]),
    Case("export-unsupported-arch", ["export", "{w}/gpt2", "--format", "safetensors", "--out", "{out}"],
         ["'gpt2'", "supported: llama"]),
    Case("export-pickle-only", ["export", "{w}/pickle", "--format", "safetensors", "--out", "{out}"],
         ["'{w}/pickle'", "--allow-pickle"]),
    Case("export-corrupt-safetensors", ["export", "{w}/corrupt", "--format", "safetensors", "--out", "{out}"],
         ["'{w}/corrupt'", "corrupt or incomplete"]),
    Case("export-out-not-empty", ["export", "{w}/model", "--out", "{out}"], ["'{out}'", "--force"], prep="full"),
    Case("export-out-is-file", ["export", "{w}/model", "--out", "{out}"], ["'{out}'", "existing file"], prep="file"),
    Case("export-int8-with-safetensors", ["export", "{w}/model", "--format", "safetensors", "--quantize", "int8",
                                          "--out", "{out}"], ["--quantize int8", "--format safetensors", "int8 (onnx)"]),
    Case("export-old-int8-with-safetensors", ["export", "{w}/model", "--format", "safetensors", "--int8", "--out",
                                              "{out}"], ["--int8 is deprecated", "--quantize int8", "--format onnx"]),
    Case("export-unknown-format", ["export", "{w}/model", "--format", "tflite", "--out", "{out}"],
         ["'tflite' is not one of", "'onnx'", "'safetensors'"]),
    # ---- bench
    Case("bench-hf-folder-not-onnx", ["bench", "{w}/model", "--out", "{out}"],
         ["'{w}/model'", "not an ONNX export", "compress export"]),
    Case("bench-missing-folder", ["bench", "{w}/nope", "--out", "{out}"], ["'{w}/nope'", "not a folder"]),
    Case("bench-baseline-not-onnx", ["bench", "{w}/fakeonnx", "--baseline", "{w}/model", "--out", "{out}"],
         ["'{w}/model'", "not an ONNX export"]),
    Case("bench-runs-0", ["bench", "{w}/fakeonnx", "--runs", "0", "--out", "{out}"], ["runs", ">= 1", "got 0"]),
    Case("bench-prompt-lengths-not-int", ["bench", "{w}/fakeonnx", "--prompt-lengths", "a,b", "--out", "{out}"],
         ["--prompt-lengths", "'a,b'", "integers"]),
    Case("bench-unknown-device", ["bench", "{w}/fakeonnx", "--device", "tpu", "--out", "{out}"],
         ["'tpu' is not one of", "'cpu'", "'cuda'"]),
]


def _command(name: str) -> str:
    if name not in main.commands:
        pytest.skip(f"`compress {name}` is not registered yet")
    return name


def _command(name: str):
    if name not in main.commands:
        pytest.skip(f"`compress {name}` is not registered yet")
    return name


def _fmt(s: str, w: Path, out: Path) -> str:
    return s.replace("{w}", str(w)).replace("{out}", str(out))


def _snapshot(p: Path):
    if p.is_file():
        return ("file", p.read_bytes())
    if p.is_dir():
        return ("dir", sorted((str(f.relative_to(p)), f.read_bytes() if f.is_file() else None) for f in p.rglob("*")))
    return None


def _assert_clean_error(r, code: int) -> str:
    out = r.output
    assert not (r.exception is not None and not isinstance(r.exception, SystemExit)), \
        f"crashed with {type(r.exception).__name__}: {r.exception}\n{out}"
    assert "Traceback" not in out, out
    assert r.exit_code == code, f"exit code {r.exit_code} != {code}:\n{out}"
    assert "Error: " in out, out
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, w: Path, tmp_path: Path, monkeypatch):
    _command(case.argv[0])
    out = tmp_path / "out"
    if case.prep == "file":
        out.write_text("keep me")
    elif case.prep == "full":
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    locked = w / "locked"
    if case.prep == "locked":
        if not locked.exists():
            shutil.copytree(w / "model", locked)
        os.chmod(locked, 0)
        if os.access(locked, os.R_OK | os.X_OK):
            os.chmod(locked, 0o755)
            pytest.skip("chmod 000 has no effect for this user (tests run as root)")
    if case.cwd:
        monkeypatch.chdir(w)
    before = _snapshot(out)
    try:
        r = CliRunner().invoke(main, [_fmt(a, w, out) for a in case.argv])
    finally:
        if case.prep == "locked":
            os.chmod(locked, 0o755)
    msg = _assert_clean_error(r, case.code)
    for needle in case.needles:
        assert _fmt(needle, w, out) in msg, f"{needle!r} not in the message:\n{msg}"
    # nothing written
    assert _snapshot(out) == before, "the output path was changed"
    assert not list(tmp_path.glob(".out.*")), "temporary folder left behind"
    assert not Path(str(out) + ".ckpt").exists(), "checkpoint folder written"
    assert not list(w.glob(".afile*")) and (w / "afile").read_text() == "a file"


def test_catalogue_is_big_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------------- disk full
def test_disk_full_while_saving_leaves_nothing(w, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing the model: one-line error, exit 1, no output and no temp folder."""
    import transformers.modeling_utils as mu

    def full_disk(tensors, filename, *a, **k):
        with open(filename, "wb") as fh:  # a partial file, as a full disk leaves it
            fh.write(b"\x00" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(mu, "safe_save_file", full_disk)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [_fmt(a, w, out) for a in P()])
    msg = _assert_clean_error(r, 1)
    assert "No space left on device" in msg and "free disk space" in msg
    assert len([ln for ln in msg.strip().splitlines() if ln.strip()]) == 1, msg
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*")), "temporary folder left behind"


def test_permission_denied_is_one_line(w, tmp_path, monkeypatch):
    """Any OSError escaping a command (here EACCES on the output's temp folder) is one line, exit 1."""
    import compressor.core.io

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.tmp-x"))

    monkeypatch.setattr(compressor.core.io.tempfile, "mkdtemp", denied)
    r = CliRunner().invoke(main, [_fmt(a, w, tmp_path / "out") for a in P()])
    msg = _assert_clean_error(r, 1)
    assert "Permission denied" in msg and ".out.tmp-x" in msg
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- bench environment
def test_bench_provider_cuda_without_cuda(w, tmp_path):
    _command("bench")
    try:
        import onnxruntime as ort
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    fake = w / "fakeonnx"
    r = CliRunner().invoke(main, ["bench", str(fake), "--device", "cuda", "--out", str(tmp_path / "out")])
    msg = _assert_clean_error(r, 1)
    assert "cuda" in msg.lower() and "onnxruntime-gpu" in msg


def test_bench_without_onnxruntime(w, tmp_path, monkeypatch):
    _command("bench")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    fake = w / "fakeonnx"
    r = CliRunner().invoke(main, ["bench", str(fake), "--out", str(tmp_path / "out")])
    msg = _assert_clean_error(r, 1)
    assert "onnxruntime" in msg and "pip install" in msg
    assert not (tmp_path / "out").exists() and not (fake / "bench_report.json").exists()
