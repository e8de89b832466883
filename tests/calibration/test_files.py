"""calibration.load_texts on files: text, jsonl and json formats and every error path (missing, folder, empty,
binary, not UTF-8, unreadable, bad arguments)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibration import files, load_texts
from compressor.core.errors import CalibrationError, ConfigError


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


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
