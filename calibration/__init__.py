"""Calibration and evaluation text for lorapress.

Public API:
    load_texts(source, *, text_field="text", max_docs=None) -> list[str]
    pack_blocks(tokenizer, texts, seq_len, *, max_blocks=None, add_bos=True, seed=None) -> LongTensor [N, seq_len]
    check_seq_len(seq_len, config) -> int
    load_eval_text(name) -> str          # exact wikitext2 / ptb evaluation strings (file, shared folder, datasets)

Example:
    >>> from calibration import load_texts, pack_blocks
    >>> blocks = pack_blocks(tokenizer, load_texts("wiki"), 512, max_blocks=128, seed=0)  # doctest: +SKIP
"""
from .data import (
    BUILTIN_SOURCES,
    CalibrationDependencyError,
    EvalDataMissingError,
    check_seq_len,
    load_eval_text,
    load_texts,
    pack_blocks,
    shared_data_dir,
    tokenize_text,
)

__all__ = [
    "BUILTIN_SOURCES",
    "CalibrationDependencyError",
    "EvalDataMissingError",
    "check_seq_len",
    "load_eval_text",
    "load_texts",
    "pack_blocks",
    "shared_data_dir",
    "tokenize_text",
]
