"""Calibration text: load documents from files or built-in corpora and pack them into token blocks.

The code is split by concern: :mod:`calibration.files` (text / .jsonl / .json files),
:mod:`calibration.corpora` (the built-in corpora and the shared data folder), :mod:`calibration.sources`
(:func:`load_texts`) and :mod:`calibration.tokens` (token blocks); this module re-exports them.

The pruning code calls three functions:

* :func:`load_texts` turns a *source* (a file path, a built-in name, or ``hf:NAME[:CONFIG]:SPLIT``)
  into a list of documents;
* :func:`pack_blocks` tokenizes those documents as one stream and cuts it into ``[N, seq_len]`` blocks;
* :func:`check_seq_len` validates a block length against a model config.

:func:`load_eval_text` returns the exact strings perplexity is measured on (``wikitext2``, ``ptb``): from a file,
the shared data folder or the ``datasets`` library; :class:`EvalDataMissingError` when none holds them.

Example:
    >>> texts = load_texts("wiki", max_docs=2000)                     # doctest: +SKIP
    >>> blocks = pack_blocks(tokenizer, texts, 512, max_blocks=128, seed=0)   # doctest: +SKIP
    >>> blocks.shape                                                   # doctest: +SKIP
    torch.Size([128, 512])
"""
from __future__ import annotations

from .corpora import SHARED_DATA_ENV, EvalDataMissingError, load_eval_text, shared_data_dir
from .files import BUILTIN_SOURCES
from .sources import CalibrationDependencyError, load_texts
from .tokens import check_seq_len, pack_blocks, tokenize_text

__all__ = [
    "BUILTIN_SOURCES", "SHARED_DATA_ENV", "CalibrationDependencyError", "EvalDataMissingError", "check_seq_len",
    "load_eval_text",
    "load_texts", "pack_blocks", "shared_data_dir", "tokenize_text",
]
