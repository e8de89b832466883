"""The filters of known third-party messages drop only those messages, never errors or other records."""
from __future__ import annotations

import logging
import warnings

from compressor.quiet import drop_messages, quiet_onnx_export


def test_drop_messages_keeps_other_records_and_errors(caplog):
    name = "lorapress-test-quiet"
    filt = drop_messages(name, "harmless note")
    try:
        log = logging.getLogger(name)
        with caplog.at_level(logging.INFO, logger=name):
            log.warning("harmless note about something")
            log.warning("a real warning")
            log.error("harmless note, but an error")
        assert [r.getMessage() for r in caplog.records] == ["a real warning", "harmless note, but an error"]
    finally:
        logging.getLogger(name).removeFilter(filt)


def test_gguf_tokenizer_legacy_paragraph_is_dropped(caplog):
    import compressor  # noqa: F401  (installs the filter)

    log = logging.getLogger("transformers.models.llama.tokenization_llama_fast")
    with caplog.at_level(logging.WARNING, logger=log.name):
        log.warning("You are using the default legacy behaviour of the <class ...>")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_quiet_onnx_export_scope():
    log = logging.getLogger("optimum")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_onnx_export():
            warnings.warn("Exporting aten::index operator of advanced indexing in opset 18 ...", UserWarning, stacklevel=1)
            warnings.warn("another warning", UserWarning, stacklevel=1)
            assert any(isinstance(f, logging.Filter) for f in log.filters)
    assert [str(w.message) for w in seen] == ["another warning"]
    assert not log.filters  # removed on exit
