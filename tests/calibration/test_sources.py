"""The built-in calibration sources: wikitext2 and ptb from the shared data folder or the treebank asset, the
wiki summaries asset, hf:NAME through the datasets library, and the real shared data where present."""
from __future__ import annotations

import json
import sys
import types

import pytest

from calibration import corpora, load_eval_text, load_texts
from calibration import data as cdata
from compressor.core import assets as assets_mod
from compressor.core.errors import AssetError, CalibrationError, DependencyMissingError


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
    monkeypatch.setitem(sys.modules, "datasets", None)  # no datasets fallback (tests/calibration/test_eval_text.py tests it)
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
