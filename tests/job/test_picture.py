"""compressor.job.picture: the report notes a picture skipped for want of matplotlib."""
from __future__ import annotations


def test_the_report_notes_a_skipped_picture_without_matplotlib(monkeypatch):
    import importlib.util

    from compressor.job import picture as plots

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    note = plots.picture_note("pruning.png")
    assert note == plots.NO_MATPLOTLIB and 'pip install "lorapress[plots]"' in note
    monkeypatch.undo()
    if importlib.util.find_spec("matplotlib") is not None:
        assert plots.picture_note("pruning.png") == "pruning.png"
