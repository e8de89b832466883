"""Export a (pruned) LLaMA-family causal LM to a GGUF file for llama.cpp, validated in llama.cpp.

The output folder holds ``model.gguf`` and ``export_report.json`` (metadata written, tensor types, tokenizer,
validation figures and tolerances, sizes). Written atomically: everything goes to a temporary sibling folder
that is renamed into place only after validation passed; a failed validation deletes it and raises
:class:`ValidationError` with the measured figures, leaving ``out`` untouched.

Split by concern: :mod:`exporters.gguf.write` (metadata and tensors), :mod:`exporters.gguf.vocab` (the
tokenizer), :mod:`exporters.gguf.validation` (log-prob and tokenizer checks), :mod:`exporters.gguf.llamacpp`
(llama.cpp through ``xllamacpp``). Validation needs ``xllamacpp`` (``pip install "lorapress[gguf]"``);
without it the export refuses to start unless ``validate=False`` (``--no-validate``).

Example:
    >>> from exporters import export_gguf                                      # doctest: +SKIP
    >>> res = export_gguf("pruned_hf", "pruned_gguf", gguf_type="q8_0")        # doctest: +SKIP
    >>> res.report["validation"]["logprobs"]["mean_kl"]                        # doctest: +SKIP
    0.0021
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from compressor.core.errors import DependencyMissingError
from compressor.core.io import atomic_output_dir, check_output_dir
from compressor.core.lock import locks_output
from exporters.gguf.llamacpp import INSTALL_HINT, LlamaCpp, import_llamacpp
from exporters.gguf.validation import (
    CHECK_TEXTS,
    TOLERANCES,
    prompt_ids,
    validate_logprobs,
    validate_tokenizer,
)
from exporters.gguf.vocab import build_vocab
from exporters.gguf.write import GGUF_ARCH, GGUF_TYPES, check_exportable, check_gguf_type, write_gguf
from exporters.loading import load_for_export
from exporters.report import ExportResult, list_files, model_summary, versions, write_report

__all__ = ["GGUF_ARCH", "GGUF_FILE", "GGUF_TYPES", "TOLERANCES", "export_gguf"]

#: Name of the GGUF file inside an exported folder.
GGUF_FILE = "model.gguf"


@locks_output
def export_gguf(model, out: str | os.PathLike, *, gguf_type: str = "f32", force: bool = False,
                validate: bool = True, tokenizer=None, tokenizer_pre: str | None = None, threads: int = 1,
                tolerances: dict[str, float] | None = None, allow_pickle: bool = False,
                trust_remote_code: bool = False) -> ExportResult:
    """Write ``model`` as ``out/model.gguf`` and check it in llama.cpp.

    Args:
        model: HF model folder (as written by ``compress prune``), ``.gguf`` file, built-in name
            (``smollm2-135m``) or a loaded float32 ``PreTrainedModel`` (then pass ``tokenizer``).
        out: output folder; written atomically.
        gguf_type: ``f32`` (default), ``f16`` or ``q8_0`` (see :mod:`exporters.gguf.write`).
        force: replace a non-empty ``out`` (default False: :class:`OutputExistsError`).
        validate: load the file in llama.cpp and compare next-token log-probabilities with PyTorch and the
            embedded tokenizer with the HF one (default True; needs ``xllamacpp``).
        tokenizer: tokenizer of a loaded model (a spec's own tokenizer is used otherwise). Required: llama.cpp
            reads the tokenizer from the file.
        tokenizer_pre: llama.cpp's BPE pre-tokenizer name, overriding the detection (default: detected, see
            :mod:`exporters.gguf.vocab`).
        threads: llama.cpp CPU threads for validation (default 1).
        tolerances: replace the gates of ``gguf_type`` (default :data:`TOLERANCES`).
        allow_pickle / trust_remote_code: for a model spec, as for :func:`compressor.modeling.loading.load_model` (both
            off by default).

    Returns:
        :class:`ExportResult` (``format="gguf"``); ``export_report.json`` in ``out`` holds the same report.

    Raises:
        ConfigError (bad ``gguf_type``: lists the valid ones), UnsupportedArchitectureError (model type, per-layer
        widths, tokenizer), OutputExistsError, ModelLoadError, DependencyMissingError (``validate`` without
        ``xllamacpp``), ValidationError (file refused; the message has the measured figures).

    Example:
        >>> res = export_gguf("smollm2-135m", "smollm2_gguf", gguf_type="f32", force=True)    # doctest: +SKIP
        >>> res.report["validation"]["logprobs"]["max_abs_diff"] < 1e-3                       # doctest: +SKIP
        True
    """
    t_start = time.perf_counter()
    check_gguf_type(gguf_type)
    check_output_dir(out, force)
    if validate:
        try:
            import_llamacpp("GGUF validation")
        except DependencyMissingError as exc:
            raise DependencyMissingError(
                f"validating the GGUF file in llama.cpp needs xllamacpp, which cannot be imported; {INSTALL_HINT}, "
                f"or pass --no-validate (validate=False) to write the file without the check") from exc
    model, tokenizer, spec = load_for_export(model, tokenizer, allow_pickle=allow_pickle,
                                             trust_remote_code=trust_remote_code)
    arch, sizes = check_exportable(model.config)
    vocab = build_vocab(tokenizer, model.config, sizes.vocab, tokenizer_pre=tokenizer_pre)
    report: dict[str, Any] = {
        "format": "gguf", "source": str(spec), "type": gguf_type, "model": model_summary(model.config),
        "tokenizer": vocab.summary(), "versions": _versions(),
    }
    with atomic_output_dir(out, force) as tmp:
        path = tmp / GGUF_FILE
        t0 = time.perf_counter()
        report["gguf"] = write_gguf(model, vocab, path, gguf_type, name=Path(str(spec)).name or None)
        report["write_seconds"] = time.perf_counter() - t0
        validation: dict[str, Any] = {"enabled": bool(validate)}
        if validate:
            t0 = time.perf_counter()
            n_ctx = max(64, min(512, int(report["gguf"]["metadata"][f"{arch}.context_length"])))
            with LlamaCpp(path, n_ctx=n_ctx, threads=threads) as lc:
                validation["tokenizer"] = validate_tokenizer(lc, tokenizer, CHECK_TEXTS)
                validation["logprobs"] = validate_logprobs(model, lc, gguf_type, prompt_ids(tokenizer, sizes.vocab),
                                                           tolerances=tolerances, safe_token=vocab.ascii_token())
            validation["seconds"] = time.perf_counter() - t0
            validation["settings"] = {"kv_cache": "f32", "flash_attention": False, "threads": threads,
                                      "n_ctx": n_ctx, "bos_added": False}
        report["validation"] = validation
        report["tolerance"] = dict(TOLERANCES[gguf_type] if tolerances is None else tolerances)
        write_report(tmp, report, t_start)
    files = list_files(out)
    return ExportResult(path=Path(out), format="gguf", files=files, total_bytes=sum(files.values()),
                        validated=bool(validate), seconds=report["seconds"], report=report)


def _versions() -> dict[str, str | None]:
    return versions(("torch", "transformers", "gguf", "xllamacpp"))
