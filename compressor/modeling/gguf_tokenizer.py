"""Make a tokenizer that transformers rebuilt from a GGUF file tokenize as the GGUF's own tokenizer does.

A GGUF whose ``tokenizer.ggml.model`` is ``llama`` holds a SentencePiece vocabulary that llama.cpp
tokenizes by merging, again and again, the adjacent pair of pieces whose concatenation is in the
vocabulary with the highest score (for a SentencePiece-BPE model such as Gemma's, the score is minus the
merge rank). transformers 4.57 turns the Gemma 2 / Gemma 3 GGUFs into a *Unigram* model over those scores
instead (``GGUFGemmaConverter``), which maximises the sum of the scores: with scores of minus a rank, a
split into many short pieces wins, so "The capital of France is" becomes ``The ▁c ap it al ▁of ▁Fr an ce ▁is``
(10 ids) where llama.cpp and the original tokenizer give ``The ▁capital ▁of ▁France ▁is`` (5 ids), and the
model's perplexity under it is meaningless.

:func:`fix_gguf_tokenizer` swaps such a Unigram model for a byte-fallback BPE over the same vocabulary (same
ids), whose merges are every split ``a + b = t`` of a piece ``t`` into two pieces of the vocabulary, ranked by
the score of ``t``: llama.cpp's rule. The GGUF's user-defined pieces (token type 4: Gemma's runs of spaces,
tabs and newlines) are added as (non-special) added tokens, since llama.cpp cuts them out of the text before
merging. Normaliser, pre-tokeniser, decoder and special tokens are kept.
Checked against llama.cpp's ``/tokenize`` on the packaged Gemma 3 GGUF (``benchmarks/real_models.py check``).

Example:
    >>> tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)   # doctest: +SKIP
    >>> fix_gguf_tokenizer(tok, Path(folder) / name)                  # doctest: +SKIP
    True
"""
from __future__ import annotations

import json
import os
from typing import Any

#: ``tokenizer.ggml.token_type`` of a piece llama.cpp matches in the raw text before tokenizing (USER_DEFINED)
USER_DEFINED = 4


def gguf_tokenizer_facts(path: str | os.PathLike) -> tuple[str | None, list[int], list[str]]:
    """The GGUF's ``tokenizer.ggml.model`` (``llama``, ``gpt2``, ``t5``, ...; None if absent), the ids of its
    user-defined pieces and its token texts."""
    from gguf import GGUFReader

    fields = GGUFReader(os.fspath(path)).fields
    model = fields.get("tokenizer.ggml.model")
    types = fields.get("tokenizer.ggml.token_type")
    tokens = fields.get("tokenizer.ggml.tokens")
    user = [i for i, t in enumerate(types.contents()) if t == USER_DEFINED] if types is not None else []
    return (str(model.contents()) if model is not None else None), user, \
        ([str(t) for t in tokens.contents()] if tokens is not None else [])


def score_merges(vocab: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """BPE merges equivalent to merging by score: every split ``(a, b)`` of a piece ``t = a + b`` with ``a`` and
    ``b`` in ``vocab``, the pieces of higher score first (ties: vocabulary order, then the shorter ``a``).

    Args:
        vocab: ``(piece, score)`` in id order.
    """
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, (piece, score) in enumerate(vocab):
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in ids and b in ids:
                ranked.append((-score, i, k, a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def fix_gguf_tokenizer(tokenizer: Any, gguf_path: str | os.PathLike) -> bool:
    """Replace the Unigram model of a tokenizer rebuilt from a ``llama``-tokenizer GGUF by the score-merging
    BPE llama.cpp uses (see the module docstring); any other tokenizer is left alone.

    Args:
        tokenizer: a ``PreTrainedTokenizerFast`` loaded with ``gguf_file=``.
        gguf_path: that GGUF file.

    Returns:
        True if the model was replaced.
    """
    from tokenizers import AddedToken
    from tokenizers.models import BPE

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "Unigram":
        return False
    kind, user_defined, texts = gguf_tokenizer_facts(gguf_path)
    if kind != "llama":
        return False
    vocab = [(str(p), float(s)) for p, s in model["vocab"]]
    # the converter maps <0x09> to a tab that Gemma also has as a piece of its own: one id would be lost (a
    # "hole" in the saved vocabulary); such an id keeps its GGUF text
    last = {p: i for i, (p, _) in enumerate(vocab)}
    for i, (p, sc) in enumerate(vocab):
        if last[p] != i and i < len(texts) and texts[i] not in last:
            vocab[i] = (texts[i], sc)
    unk_id = model.get("unk_id")
    backend.model = BPE({p: i for i, (p, _) in enumerate(vocab)}, score_merges(vocab),
                        unk_token=vocab[unk_id][0] if unk_id is not None else None,
                        byte_fallback=bool(model.get("byte_fallback", True)))
    known = set(tokenizer.get_added_vocab())
    extra = [vocab[i][0] for i in user_defined if i < len(vocab) and vocab[i][0] not in known]
    if extra:  # already in the vocabulary: their ids do not change
        tokenizer.add_tokens([AddedToken(p, normalized=True, special=False) for p in extra])
    return True
