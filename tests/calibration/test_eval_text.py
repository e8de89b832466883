"""load_eval_text: WikiText-2 / PTB from a file, the shared data folder, the ``datasets`` library (a fake module
here: no network), and the error that names every way to provide them."""
from __future__ import annotations

import sys
import types

import pytest

from calibration import EvalDataMissingError, corpora, load_eval_text, load_texts
from compressor.core import assets as assets_mod
from compressor.core.errors import AssetError, CalibrationError

#: WikiText-2 raw test as ``datasets`` holds it (one row per line of wiki.test.raw, blank lines as ""), and the
#: shared file's string for those rows: the rows joined with a blank line.
WIKI_ROWS = ["", " = Title = \n", "", " Body one .\n", " Body two .\n", ""]
WIKI_TEXT = "\n\n = Title = \n\n\n\n\n Body one .\n\n\n Body two .\n\n\n"
#: PTB test as ``ptb_text_only`` holds it (stripped sentences), and Mikolov's file for them.
PTB_ROWS = ["no it was n't black monday", "but while the new york stock exchange"]
PTB_TEXT = " no it was n't black monday \n but while the new york stock exchange \n"


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """No shared data folder anywhere (env, beside the repository, beside the current folder), no treebank asset."""
    monkeypatch.setenv("COMPRESS_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(corpora, "__file__", str(tmp_path / "a" / "b" / "corpora.py"))
    monkeypatch.chdir(tmp_path)

    def no_asset(name, **kw):
        raise AssetError(f"asset {name!r} offline")

    monkeypatch.setattr(assets_mod, "fetch_asset", no_asset)
    return tmp_path


def fake_datasets(monkeypatch, tables=None, error: Exception | None = None):
    """Install a fake ``datasets`` module whose ``load_dataset`` serves ``tables[(path, config, split)]`` (a dict of
    columns) or raises ``error``; returns the list of calls it received."""
    calls: list[tuple] = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if error is not None:
            raise error
        return (tables or {})[(path, name, split)]

    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return calls


def test_explicit_file_is_read_verbatim(tmp_path, no_shared, monkeypatch):
    calls = fake_datasets(monkeypatch, error=AssertionError("datasets must not be asked for a file"))
    f = tmp_path / "wiki.test.raw"
    f.write_text(WIKI_TEXT)
    assert load_eval_text(str(f)) == WIKI_TEXT
    assert load_eval_text(f) == WIKI_TEXT
    assert calls == []


def test_shared_folder_comes_before_datasets(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    (root / "wikitext2").mkdir(parents=True)
    (root / "wikitext2" / "test.txt").write_text("from the shared folder\n")
    monkeypatch.setenv("COMPRESS_SHARED_DATA", str(root))
    calls = fake_datasets(monkeypatch, error=AssertionError("not reached"))
    assert load_eval_text("wikitext2") == "from the shared folder\n"
    assert calls == []


def test_wikitext2_from_datasets_joined_as_the_shared_file(no_shared, monkeypatch):
    calls = fake_datasets(monkeypatch, {("wikitext", "wikitext-2-raw-v1", "test"): {"text": WIKI_ROWS}})
    assert load_eval_text("wikitext2") == WIKI_TEXT
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test")]
    assert load_texts("wikitext2") == ["= Title =", "Body one .", "Body two ."]


@pytest.mark.parametrize("name, split", [("ptb", "test"), ("ptb:valid", "validation"), ("ptb:train", "train")])
def test_ptb_from_datasets_written_as_mikolovs_file(no_shared, monkeypatch, name, split):
    calls = fake_datasets(monkeypatch, {("ptb_text_only", None, split): {"sentence": PTB_ROWS}})
    assert load_eval_text(name) == PTB_TEXT
    assert calls == [("ptb_text_only", None, split)]


def test_nothing_available_names_every_way(no_shared, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(EvalDataMissingError) as ei:
        load_eval_text("wikitext2")
    msg = str(ei.value)
    assert isinstance(ei.value, CalibrationError) and isinstance(ei.value, ValueError)
    assert "'wikitext2'" in msg
    assert "wikitext2/test.txt" in msg and str(no_shared / "nowhere") in msg  # where it looked
    assert "`datasets` package is not installed" in msg
    for way in ("load_eval_text('PATH')", "--wikitext2-file PATH", "--eval-data PATH", "$COMPRESS_SHARED_DATA",
                "pip install datasets"):
        assert way in msg, way


def test_ptb_nothing_available_names_the_ptb_option(no_shared, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(EvalDataMissingError) as ei:
        load_eval_text("ptb:valid")
    msg = str(ei.value)
    assert "'ptb:valid'" in msg and "--ptb-file PATH" in msg and "treebank asset failed" in msg
    assert "ptb/ptb.valid.txt" in msg and "pip install datasets" in msg


def test_datasets_offline_and_not_cached(no_shared, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)"))
    with pytest.raises(EvalDataMissingError) as ei:
        load_eval_text("wikitext2")
    msg = str(ei.value)
    assert "datasets.load_dataset('wikitext', 'wikitext-2-raw-v1', split='test') failed" in msg
    assert "HF_DATASETS_OFFLINE" in msg and "not in the datasets cache" in msg and "ConnectionError" in msg
    assert "pip install datasets" in msg


def test_datasets_without_text_rows(no_shared, monkeypatch):
    fake_datasets(monkeypatch, {("wikitext", "wikitext-2-raw-v1", "test"): {"text": []}})
    with pytest.raises(EvalDataMissingError, match="holds no text rows"):
        load_eval_text("wikitext2")


def test_unknown_name_is_not_a_missing_corpus(no_shared):
    with pytest.raises(CalibrationError) as ei:
        load_eval_text("wikitext3")
    assert not isinstance(ei.value, EvalDataMissingError)
    assert "'wikitext3'" in str(ei.value) and "wikitext2, ptb" in str(ei.value)
