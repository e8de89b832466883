"""Token blocks: tokenize documents as one stream, cut it into ``[N, seq_len]`` blocks, check a block length."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from compressor.core.errors import CalibrationError, ConfigError

logger = logging.getLogger(__name__)


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
