"""The filters of known third-party messages drop only those messages, never errors or other records."""
from __future__ import annotations

import logging
import warnings

from compressor.core.quiet import drop_messages, quiet_onnx_export


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


def _regex_warning(folder) -> str:
    return (f"The tokenizer you are loading from '{folder}' with an incorrect regex pattern: https://huggingface.co/"
            "mistralai/... This will lead to incorrect tokenization. You should set the `fix_mistral_regex=True` flag")


def test_mistral_regex_false_alarm_dropped_only_for_non_mistral_folders(tmp_path, caplog):
    import json

    import compressor  # noqa: F401  (installs the filter)

    folders = {}
    for mt in ("qwen2", "mistral", None):
        d = tmp_path / str(mt)
        d.mkdir()
        if mt is not None:
            (d / "config.json").write_text(json.dumps({"model_type": mt}))
        folders[mt] = d
    log = logging.getLogger("transformers.tokenization_utils_base")
    with caplog.at_level(logging.WARNING, logger=log.name):
        for d in folders.values():
            log.warning(_regex_warning(d))
        log.warning("another tokenizer warning")
    kept = [r.getMessage() for r in caplog.records]
    assert kept == [_regex_warning(folders["mistral"]), _regex_warning(folders[None]), "another tokenizer warning"]


def test_saved_qwen_sized_tokenizer_reloads_without_the_regex_warning(tmp_path, caplog):
    """A real round trip: a >100k-vocabulary byte-level tokenizer saved with a qwen2 config.json."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    import compressor  # noqa: F401

    vocab = {f"t{i}": i for i in range(100_100)}
    vocab["<unk>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>").save_pretrained(tmp_path)
    import transformers

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2",
                                                      "transformers_version": transformers.__version__}))
    with caplog.at_level(logging.WARNING, logger="transformers.tokenization_utils_base"):
        AutoTokenizer.from_pretrained(str(tmp_path))
    assert not [r for r in caplog.records if "incorrect regex" in r.getMessage()]


def test_no_progress_bars_silences_the_gguf_dequantization_bar(capsys):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from compressor.core.quiet import no_progress_bars

    no_progress_bars()
    no_progress_bars()  # idempotent
    list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert "Converting" not in capsys.readouterr().err


def test_eval_quiet_turns_off_third_party_progress_bars(monkeypatch, tmp_path):
    """``compress eval --quiet`` silences transformers' GGUF bar as ``compress prune --quiet`` does."""
    from click.testing import CliRunner

    import compressor.core.quiet as quiet
    from compressor.cli import main

    calls = []
    monkeypatch.setattr(quiet, "no_progress_bars", lambda: calls.append(1))
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "missing"), "--tasks", "wikitext2", "--quiet"])
    assert r.exit_code != 0 and calls == [1]
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "missing"), "--tasks", "wikitext2"])
    assert calls == [1], "no --quiet: bars stay on"


def test_quiet_onnx_export_drops_tracer_notes_of_transformers_and_optimum_only():
    from torch.jit import TracerWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_onnx_export():
            for mod in ("transformers.cache_utils", "optimum.exporters.onnx.model_patcher", "my_model.modeling"):
                warnings.warn_explicit("Converting a tensor to a Python boolean might cause the trace to be incorrect",
                                       TracerWarning, f"{mod}.py", 1, module=mod)
        warnings.warn_explicit("after the export", TracerWarning, "transformers/x.py", 1, module="transformers.x")
    assert [(w.filename, str(w.message)) for w in seen] == [
        ("my_model.modeling.py", "Converting a tensor to a Python boolean might cause the trace to be incorrect"),
        ("transformers/x.py", "after the export")]
