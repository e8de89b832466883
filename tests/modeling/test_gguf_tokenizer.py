"""compressor.modeling.gguf_tokenizer: a Gemma-style GGUF vocabulary tokenizes as llama.cpp does, not as transformers'
Unigram rebuild of it (which splits words apart). A tiny GGUF holding only tokenizer metadata is written in
the test; the reference is llama.cpp's rule written out plainly (merge the best-scoring adjacent pair).
"""
from __future__ import annotations

import json

import pytest

gguf = pytest.importorskip("gguf")

from tokenizers import Tokenizer, normalizers  # noqa: E402
from tokenizers.models import BPE, Unigram  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from compressor.modeling.gguf_tokenizer import (  # noqa: E402
    USER_DEFINED,
    fix_gguf_tokenizer,
    gguf_tokenizer_facts,
    score_merges,
)

# id order = GGUF order; the scores are minus a merge rank, as in Gemma's GGUF: short pieces merge first,
# so a Unigram model (max sum of scores) prefers many short pieces to one long one
VOCAB = [("<unk>", 0.0), ("<bos>", 0.0), ("▁▁", 0.0), ("\t", 0.0)] + [(c, -1000.0) for c in "▁capitlofrne"] + [
    ("▁c", -1.0), ("ap", -2.0), ("it", -3.0), ("al", -4.0), ("▁o", -5.0), ("▁f", -6.0), ("ra", -7.0), ("nc", -8.0),
    ("▁cap", -50.0), ("ital", -60.0), ("▁of", -61.0), ("▁fr", -62.0), ("▁fra", -63.0), ("nce", -64.0),
    ("▁capital", -100.0), ("▁france", -120.0), ("\t", 0.0)]
TYPES = [2, 3, USER_DEFINED, 6] + [1] * (len(VOCAB) - 5) + [USER_DEFINED]
#: the GGUF's own text where the converter changed it: raw spaces; <0x09>, which it maps to a tab that is
#: also a piece of its own (the last one)
GGUF_TEXT = {2: "  ", 3: "<0x09>"}
TEXTS = ["capital of france", " capital", "capital  of", "of  france capital", "ital cap", "pat", "a  b", "of\tfrance"]


def _write_gguf(path, model="llama"):
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model(model)
    w.add_token_list([GGUF_TEXT.get(i, p) for i, (p, _) in enumerate(VOCAB)])
    w.add_token_scores([s for _, s in VOCAB])
    w.add_token_types(TYPES)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _unigram_tokenizer():
    """What transformers' GGUFGemmaConverter builds: a Unigram over the GGUF scores, ' ' -> '▁'."""
    tk = Tokenizer(Unigram(VOCAB, unk_id=0, byte_fallback=False))
    tk.normalizer = normalizers.Replace(" ", "▁")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<bos>")


def llama_cpp_rule(text: str) -> list[int]:
    """llama.cpp's SentencePiece tokenizer: user-defined pieces cut out first (longest first), then in each
    fragment the adjacent pair whose concatenation is in the vocabulary with the best score is merged (ties:
    leftmost), until no pair is."""
    ids = {p: i for i, (p, _) in enumerate(VOCAB)}
    score = dict(VOCAB)
    user = sorted((VOCAB[i][0] for i, t in enumerate(TYPES) if t == USER_DEFINED), key=len, reverse=True)
    frags: list[tuple[str, bool]] = [(text.replace(" ", "▁"), False)]
    for u in user:
        out: list[tuple[str, bool]] = []
        for f, done in frags:
            if done:
                out.append((f, True))
                continue
            parts = f.split(u)
            for k, part in enumerate(parts):
                if part:
                    out.append((part, False))
                if k < len(parts) - 1:
                    out.append((u, True))
        frags = out
    result: list[int] = []
    for f, done in frags:
        if done:
            result.append(ids[f])
            continue
        pieces = list(f)
        while True:
            best = None
            for k in range(len(pieces) - 1):
                cand = pieces[k] + pieces[k + 1]
                if cand in score and (best is None or score[cand] > score[pieces[best] + pieces[best + 1]]):
                    best = k
            if best is None:
                break
            pieces[best:best + 2] = [pieces[best] + pieces[best + 1]]
        result += [ids.get(p, 0) for p in pieces]
    return result


def test_unigram_rebuild_splits_words_and_the_fix_tokenizes_as_llama_cpp(tmp_path):
    path = _write_gguf(tmp_path / "t.gguf")
    kind, user, texts = gguf_tokenizer_facts(path)
    assert (kind, user, len(texts)) == ("llama", [2, len(VOCAB) - 1], len(VOCAB))
    tok = _unigram_tokenizer()
    ids = {p: i for i, (p, _) in enumerate(VOCAB)}
    # the Unigram's best path: four short pieces (sum of scores -10 against -100 for the word)
    assert tok(" capital", add_special_tokens=False)["input_ids"] == [ids[p] for p in ("▁c", "ap", "it", "al")]
    assert fix_gguf_tokenizer(tok, path)
    assert tok(" capital", add_special_tokens=False)["input_ids"] == [ids["▁capital"]]
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == llama_cpp_rule(text), text


def test_fixed_tokenizer_survives_save_and_reload(tmp_path):
    path = _write_gguf(tmp_path / "t.gguf")
    tok = _unigram_tokenizer()
    fix_gguf_tokenizer(tok, path)
    vocab = json.loads(tok.backend_tokenizer.to_str())["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(VOCAB)))  # no id lost to the duplicate tab
    assert vocab["<0x09>"] == 3 and vocab["\t"] == len(VOCAB) - 1
    tok.save_pretrained(tmp_path / "saved")
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path / "saved")
    for text in TEXTS:
        assert again(text, add_special_tokens=False)["input_ids"] == llama_cpp_rule(text), text


def test_other_tokenizers_are_left_alone(tmp_path):
    tok = _unigram_tokenizer()
    assert not fix_gguf_tokenizer(tok, _write_gguf(tmp_path / "t5.gguf", model="t5"))  # a real Unigram (T5's)
    assert type(tok.backend_tokenizer.model).__name__ == "Unigram"
    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")])))
    assert not fix_gguf_tokenizer(bpe, _write_gguf(tmp_path / "l.gguf"))  # already merges (Qwen, SmolLM2)


def test_score_merges_order():
    merges = score_merges(VOCAB)
    assert merges.index(("▁c", "ap")) < merges.index(("▁cap", "ital")) < merges.index(("▁fra", "nce"))
    assert ("▁", "c") in merges and ("▁c", "apital") not in merges  # 'apital' is not a piece
    assert len(merges) == len(set(merges))
