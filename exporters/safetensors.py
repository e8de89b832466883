"""Re-save a model (HF folder, ``.gguf`` file, built-in name or loaded model) as a plain HF safetensors folder.

GGUF weights are dequantized by :func:`compressor.modeling.loading.load_model`; the tokenizer is saved as
``tokenizer.json`` and a GGUF copy saved as ``tokenizer.model`` is removed (see
:func:`compressor.modeling.save.drop_gguf_tokenizer_model`).

Example:
    >>> from exporters import export_safetensors                          # doctest: +SKIP
    >>> export_safetensors("smollm2-135m", "smollm2_hf", force=True)       # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from compressor.core.errors import ExportError
from compressor.core.io import WRITE_FAULT_ERRNOS, atomic_output_dir, check_output_dir
from compressor.core.lock import locks_output
from compressor.modeling.save import add_legacy_rope_keys, save_tokenizer
from compressor.modeling.sizes import is_per_layer
from exporters.loading import load_for_export
from exporters.report import ExportResult, list_files, model_summary, versions, write_report


@locks_output
def export_safetensors(model, out: str | os.PathLike, *, force: bool = False, tokenizer=None,
                       max_shard_size: str = "5GB", allow_pickle: bool = False,
                       trust_remote_code: bool = False) -> ExportResult:
    """Save ``model`` as a Hugging Face folder with ``*.safetensors`` weights and the tokenizer.

    Args:
        model: HF folder, ``.gguf`` file, built-in name (``smollm2-135m``) or a loaded ``PreTrainedModel``.
        out: output folder, written atomically.
        force: replace a non-empty ``out`` (default False).
        tokenizer: tokenizer to save with a loaded model (a spec's own tokenizer is used otherwise).
        max_shard_size: largest weight file (default ``"5GB"``).
        allow_pickle / trust_remote_code: load pickle weights / run the model folder's own code (default
            off, see :func:`compressor.modeling.loading.load_model`).

    After saving, the folder's config is reloaded, the safetensors tensor names are checked against the
    model's state dict, and the tokenizer is reloaded from ``tokenizer.json`` and must encode a sample
    identically. ``export_report.json`` records the files and checks.

    Returns:
        :class:`ExportResult` with ``format="safetensors"``.

    Raises:
        ModelLoadError, UnsupportedArchitectureError, OutputExistsError, ConfigError, ExportError.

    Example:
        >>> res = export_safetensors("model.gguf", "model_hf")               # doctest: +SKIP
        >>> sorted(res.files)[:2]                                             # doctest: +SKIP
        ['config.json', 'export_report.json']
    """
    t0 = time.perf_counter()
    check_output_dir(out, force)
    model, tokenizer, spec = load_for_export(model, tokenizer, require_fp32_cpu=False, allow_pickle=allow_pickle,
                                             trust_remote_code=trust_remote_code)
    report: dict[str, Any] = {"format": "safetensors", "source": str(spec), "model": model_summary(model.config),
                              "versions": versions()}
    with atomic_output_dir(out, force) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in WRITE_FAULT_ERRNOS:
                raise  # atomic_output_dir names the output and the space needed
            raise ExportError(f"saving the model failed: {type(exc).__name__}: {exc}") from exc
        add_legacy_rope_keys(tmp)  # transformers 4.x reads rope_theta, not transformers 5's rope_parameters
        if is_per_layer(model.config):  # per-layer widths: the folder carries its remote code
            from compressor.modeling.perlayer import write_remote_code

            report["remote_code"] = write_remote_code(tmp)
        report["tokenizer"] = save_tokenizer(tokenizer, tmp)
        report["checks"] = _check_folder(model, tmp)
        write_report(tmp, report, t0)
    files = list_files(out)
    return ExportResult(path=Path(out), format="safetensors", files=files, total_bytes=sum(files.values()),
                        validated=True, seconds=report["seconds"], report=report)


def _check_folder(model, folder: Path) -> dict[str, Any]:
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        if is_per_layer(model.config):  # read with the in-package class: no code from the folder is run
            from compressor.modeling.perlayer import per_layer_model_class

            cfg = per_layer_model_class(model.config).config_class.from_pretrained(str(folder))
        else:
            cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise ExportError(f"the saved config does not reload: {exc}") from exc
    if getattr(cfg, "quantization_config", None):
        raise ExportError("the saved config still has a quantization_config; it would not load as plain weights")
    names: set[str] = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    if not names:
        raise ExportError("no *.safetensors file was written")
    expected = set(model.state_dict())
    tied = {k for k in expected - names if k.endswith("lm_head.weight")}
    missing = expected - names - tied
    if missing:
        raise ExportError(f"the saved weights lack {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    return {"config_reload_ok": True, "tensors": len(names), "tied_not_saved": sorted(tied)}
