"""Calibration documents from a source: a file, a built-in corpus, or a Hugging Face dataset."""
from __future__ import annotations

import os
from pathlib import Path

from compressor.core.errors import CalibrationError, ConfigError, DependencyMissingError

from .corpora import load_eval_text
from .files import BUILTIN_SOURCES, VALID_SOURCES, load_json, load_jsonl, read_text, split_documents


class CalibrationDependencyError(CalibrationError, DependencyMissingError):
    """An optional package needed to read a calibration source (e.g. ``datasets``) is not installed."""


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
              (``$COMPRESS_SHARED_DATA``, else ``<repo>/../shared/data``, else ``./../shared/data``), else
              through the ``datasets`` library (see :func:`~calibration.corpora.load_eval_text`);
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
        from compressor.core.assets import fetch_asset

        path = fetch_asset("wiki-summaries-en")
        docs = load_json(path, read_text(path), "extract")
    elif is_name and spec == "wikitext2":
        docs = split_documents(load_eval_text("wikitext2"))
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
                f"Valid sources: {VALID_SOURCES}.{hint}"
            )
        text = read_text(path)
        if not text.strip():
            raise CalibrationError(f"calibration file {label!r} is empty (no text); give a file with text")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            docs = load_jsonl(path, text, text_field, max_docs)
        elif suffix == ".json":
            docs = load_json(path, text, text_field)
        else:
            docs = split_documents(text)
    if not docs:
        raise CalibrationError(
            f"calibration source {label!r} has no text after parsing"
            + (f" (no non-empty {text_field!r} values)" if Path(spec).suffix.lower() in (".json", ".jsonl")
               or spec.startswith("hf:") else "")
        )
    if max_docs is not None:
        docs = docs[:max_docs]
    return docs
