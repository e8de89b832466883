"""calibration.pack_blocks / check_seq_len / tokenize_text: blocks with and without BOS, a seeded subset, prefix
tokenization equal to the full one, and every error path; the public names of the package."""
from __future__ import annotations

import logging

import pytest
import torch

import calibration
from calibration import check_seq_len, pack_blocks, tokenize_text
from compressor.core.errors import CalibrationError, ConfigError

WORDS = ["the", "cat", "sat", "on", "a", "mat", ".", "dog", "ran", "far", "away", "and", "then", "slept", "in",
         "sun", "!", "my"]


def make_tokenizer(words=WORDS, bos=True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"tokenizer_object": tok, "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"}
    if bos:
        kw["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(**kw)


TEXTS = ["the cat sat on a mat .", "dog ran far away and then slept in sun !", "my cat sat ."]


def stream(tok, texts=TEXTS):
    return tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]


def test_pack_blocks_with_bos():
    tok = make_tokenizer()
    ids = stream(tok)  # 24 tokens
    b = pack_blocks(tok, TEXTS, 5)
    assert b.dtype == torch.long and b.shape == (len(ids) // 4, 5)
    assert (b[:, 0] == tok.bos_token_id).all()
    assert b[:, 1:].reshape(-1).tolist() == ids[: b.shape[0] * 4]


def test_pack_blocks_without_bos():
    tok = make_tokenizer()
    ids = stream(tok)
    b = pack_blocks(tok, TEXTS, 5, add_bos=False)
    assert b.shape == (len(ids) // 5, 5)
    assert b.reshape(-1).tolist() == ids[: b.numel()]
    nob = make_tokenizer(bos=False)
    b2 = pack_blocks(nob, TEXTS, 5, add_bos=True)  # no BOS token: plain blocks
    assert b2.reshape(-1).tolist() == stream(nob)[: b2.numel()]


def test_pack_blocks_max_blocks_and_seed(caplog):
    tok = make_tokenizer()
    texts = TEXTS * 10
    full = pack_blocks(tok, texts, 4)
    first = pack_blocks(tok, texts, 4, max_blocks=3)
    assert torch.equal(first, full[:3])
    s1 = pack_blocks(tok, texts, 4, max_blocks=5, seed=1)
    assert torch.equal(s1, pack_blocks(tok, texts, 4, max_blocks=5, seed=1))
    rows = {tuple(r) for r in full.tolist()}
    assert all(tuple(r) in rows for r in s1.tolist()) and s1.shape == (5, 4)
    picks = [pack_blocks(tok, texts, 4, max_blocks=5, seed=s) for s in range(5)]
    assert any(not torch.equal(picks[0], p) for p in picks[1:])
    with caplog.at_level(logging.WARNING):
        more = pack_blocks(tok, texts, 4, max_blocks=10_000)
    assert torch.equal(more, full) and "only" in caplog.text


def test_pack_blocks_prefix_tokenization_matches_full():
    tok = make_tokenizer()
    texts = [f"{w} {v} ." for w in WORDS for v in WORDS]  # 400 small documents
    full = pack_blocks(tok, texts, 8)
    part = pack_blocks(tok, texts, 8, max_blocks=7)
    assert torch.equal(part, full[:7])


def test_pack_blocks_too_short():
    tok = make_tokenizer()
    with pytest.raises(CalibrationError) as ei:
        pack_blocks(tok, ["the cat sat"], 8)
    assert str(ei.value).startswith("calibration text has 3 tokens; need at least 7 for one block of 8")
    with pytest.raises(CalibrationError, match="has 3 tokens; need at least 8 for one block of 8"):
        pack_blocks(tok, ["the cat sat"], 8, add_bos=False)
    with pytest.raises(CalibrationError, match="empty"):
        pack_blocks(tok, ["", "  "], 8)


def test_pack_blocks_bad_args():
    tok = make_tokenizer()
    with pytest.raises(ConfigError):
        pack_blocks(tok, TEXTS, 1)
    with pytest.raises(ConfigError):
        pack_blocks(tok, TEXTS, 4, max_blocks=0)


def test_check_seq_len():
    from transformers import LlamaConfig

    cfg = LlamaConfig(max_position_embeddings=128)
    assert check_seq_len(128, cfg) == 128
    assert check_seq_len(2, {"max_position_embeddings": 4}) == 2
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings 128"):
        check_seq_len(129, cfg)
    with pytest.raises(ConfigError, match="at least 2"):
        check_seq_len(1, cfg)
    with pytest.raises(ConfigError, match="not an integer"):
        check_seq_len(2.0, cfg)  # type: ignore[arg-type]


def test_public_api():
    for name in ("load_texts", "pack_blocks", "check_seq_len", "load_eval_text"):
        assert callable(getattr(calibration, name))
    assert tokenize_text(make_tokenizer(), "the cat") == [4, 5]
