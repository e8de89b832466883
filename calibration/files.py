"""Reading calibration files: UTF-8 text, ``.jsonl`` and ``.json``, with errors that name the line and field."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from compressor.core.errors import CalibrationError

#: Built-in corpora accepted by :func:`load_texts` (name -> description).
BUILTIN_SOURCES = {
    "wiki": "Wikipedia lead sections (asset wiki-summaries-en, 10,033 articles, CC BY-SA)",
    "wikitext2": "WikiText-2 raw test split (shared/data/wikitext2/test.txt, else the datasets library)",
    "ptb": "Penn Treebank test split (asset treebank, else shared/data/ptb/ptb.test.txt, else the datasets "
           "library); ptb:train / ptb:valid / ptb:test pick a split",
}

#: Environment variable naming the shared data folder (the one holding ``wikitext2/`` and ``ptb/``).
SHARED_DATA_ENV = "COMPRESS_SHARED_DATA"

VALID_SOURCES = (
    "a UTF-8 text file (.txt or any other suffix: documents separated by blank lines), a .jsonl file "
    "(one JSON object per line with a text field), a .json file (list of strings, list of objects, or an "
    "object mapping titles to strings/objects), a built-in name (" + ", ".join(BUILTIN_SOURCES) + ") or "
    "hf:NAME[:CONFIG]:SPLIT (needs the `datasets` package)"
)


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, raising :class:`CalibrationError` for folders, binary or unreadable files."""
    if path.is_dir():
        raise CalibrationError(f"calibration source {str(path)!r} is a folder; give a file. Valid sources: {VALID_SOURCES}")
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        raise CalibrationError(
            f"calibration source {str(path)!r} not found: not an existing file, a built-in name or an hf: "
            f"source. Valid sources: {VALID_SOURCES}"
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


def split_documents(text: str) -> list[str]:
    return [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]


def text_field_of(obj: Any, text_field: str, where: str, path: Path) -> str | None:
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


def load_jsonl(path: Path, text: str, text_field: str, max_docs: int | None) -> list[str]:
    docs: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{str(path)!r} line {lineno} is not valid JSON: {exc.msg}") from exc
        value = obj if isinstance(obj, str) else text_field_of(obj, text_field, f"line {lineno}", path)
        if value and value.strip():
            docs.append(value.strip())
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def load_json(path: Path, text: str, text_field: str) -> list[str]:
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
        value = v if isinstance(v, str) else text_field_of(v, text_field, where, path)
        if value and value.strip():
            docs.append(value.strip())
    return docs
