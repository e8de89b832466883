"""Export a (pruned) LLaMA-family causal LM to ONNX with a KV cache, and validate it against PyTorch.

One decoder graph ``model.onnx`` (task ``text-generation-with-past``) with inputs ``input_ids``,
``attention_mask``, ``position_ids`` (not for the gemma family) and ``past_key_values.{i}.key/value`` and
outputs ``logits`` and ``present.{i}.key/value``. The folder also holds ``config.json``,
``generation_config.json``, the tokenizer files and ``export_report.json``, and loads with stock
``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(folder)`` where optimum is installed.

Two exporters write the graph (``exporter=``, ``--exporter``); the report's ``"exporter"`` names the one used:

* ``"torch"`` (default): torch's own exporter traces the Hugging Face model through a wrapper with optimum's
  graph I/O (:mod:`exporters.onnx.torch_export`); needs no optimum, works with transformers 4.57 and 5.
* ``"optimum"``: optimum's ``onnx_export_from_model``; needs ``pip install "lorapress[optimum]"``, whose
  optimum-onnx 0.1.0 requires transformers < 4.58.

The export is split by concern: :mod:`exporters.onnx.torch_export` (the torch exporter), :mod:`exporters.onnx.ort_config`
(the ``config.json`` adjustment a head-pruned model needs for optimum's ``ORTModelForCausalLM``),
:mod:`exporters.onnx.validation` (fp32 parity and greedy generation), :mod:`exporters.onnx.int8` (quantization and its
looser check), :mod:`exporters.onnx.decode` (the PyTorch and ONNX Runtime decode loops they compare) and
:mod:`exporters.report` (``export_report.json``). This module composes them and re-exports their public names.

Validation (on by default; a failure raises :class:`ValidationError` and leaves ``out`` untouched)
----------------------------------------------------------------------------------------------------
* fp32 parity (:func:`validate_parity`): logits and KV cache, prefill + 4 cached decode steps, per output
  ``max|ort - pt| <= 1e-4 + 1e-5 * max|pt|``; if that fails, a float64 PyTorch run decides whether the
  difference is float32 rounding noise (ORT within ``noise_factor``, default 8x, of PyTorch fp32's own
  error) or a real mismatch.
* greedy generation == PyTorch's ``generate()`` on a few prompts (:func:`validate_generate`): through stock
  optimum's ``ORTModelForCausalLM.from_pretrained(out)`` where optimum imports (which also proves the folder
  loads there), else a greedy KV-cache loop over ``model.onnx`` in plain ONNX Runtime.
* ``int8``: :func:`validate_int8` - relative NLL increase <= 5 % and next-token agreement >= 80 % on a short
  text, instead of exact parity (the intermediate fp32 graph still gets the exact check).

Example:
    >>> from exporters import export_onnx                                        # doctest: +SKIP
    >>> res = export_onnx("pruned_hf/", "pruned_onnx/", force=True)              # doctest: +SKIP
    >>> res.report["validation"]["parity"]["max_abs_diff"]                       # doctest: +SKIP
    9.6e-05
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError, DependencyMissingError, ExportError
from compressor.core.io import WRITE_FAULT_ERRNOS, atomic_output_dir, check_output_dir
from compressor.core.lock import locks_output
from compressor.core.optional import require
from compressor.core.quiet import quiet_onnx_export
from compressor.modeling.architectures import check_onnx
from compressor.modeling.loading import is_onnx_folder
from compressor.modeling.save import add_legacy_rope_keys, drop_gguf_tokenizer_model, save_tokenizer
from exporters.loading import load_for_export
from exporters.onnx.int8 import INT8_CHECK_TEXT, INT8_EXCLUDE_DEFAULT, quantize_int8, validate_int8
from exporters.onnx.ort_config import CONFIG_KEY, adjust_config_for_ort, per_layer_widths, true_hidden_size
from exporters.onnx.validation import DEFAULT_PROMPTS, ONNX_FILE, validate_generate, validate_parity
from exporters.report import REPORT_FILE, ExportResult, list_files, model_summary, versions, write_report

__all__ = [
    "CONFIG_KEY", "DEFAULT_PROMPTS", "EXPORTERS", "INT8_CHECK_TEXT", "INT8_EXCLUDE_DEFAULT", "ONNX_FILE",
    "REPORT_FILE", "ExportResult", "adjust_config_for_ort", "export_onnx", "is_onnx_folder", "list_files",
    "load_for_export", "quantize_int8", "require_optimum_exporter", "true_hidden_size", "validate_generate",
    "validate_int8", "validate_parity", "write_report",
]

#: ``exporter=`` / ``--exporter`` values: torch's own exporter (default) and optimum's
EXPORTERS = ("torch", "optimum")
#: highest opset torch's TorchScript exporter writes
TORCH_MAX_OPSET = 20


def require_optimum_exporter() -> None:
    """Import optimum's ONNX exporter, or raise :class:`DependencyMissingError` saying how to get it."""
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError as exc:
        from exporters.report import versions

        have = versions().get("transformers")
        raise DependencyMissingError(
            f"--exporter optimum needs optimum's ONNX exporter, which cannot be imported ({exc}): pip install "
            f"\"lorapress[optimum]\", which requires transformers < 4.58 (optimum-onnx 0.1.0's cap; this environment "
            f"has transformers {have}). --exporter torch (the default) needs no optimum."
        ) from exc


@locks_output
def export_onnx(model_dir, out: str | os.PathLike, *, force: bool = False, validate: bool = True,
                int8: bool = False, atol: float = 1e-4, rtol: float = 1e-5, noise_factor: float = 8.0,
                opset: int | None = None, tokenizer=None, decode_steps: int = 4,
                prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 8,
                int8_max_rel_nll_increase: float = 0.05, int8_min_top1_agreement: float = 0.8,
                int8_per_channel: bool = True, int8_exclude: Sequence[str] = INT8_EXCLUDE_DEFAULT,
                threads: int | None = None, allow_pickle: bool = False,
                trust_remote_code: bool = False, optimize: bool = False, exporter: str = "torch") -> ExportResult:
    """Export a causal LM to an ONNX folder (decoder with KV cache) and validate it against PyTorch.

    Args:
        model_dir: HF model folder, ``.gguf`` file, built-in name (``smollm2-135m``) or a loaded
            ``PreTrainedModel`` (then pass ``tokenizer``).
        out: output folder; written atomically (temporary sibling folder renamed into place).
        force: replace a non-empty ``out`` (default False: :class:`OutputExistsError`).
        validate: run the checks below (default True); a failure raises :class:`ValidationError` and leaves
            ``out`` untouched.
        int8: dynamic int8 quantization (``onnxruntime.quantization.quantize_dynamic``, MatMul weights
            except ``int8_exclude``); the folder's ``model.onnx`` is then the int8 graph.
        atol: absolute tolerance on the max absolute difference between ONNX Runtime and PyTorch logits /
            KV cache of the fp32 graph (default 1e-4).
        rtol: extra tolerance relative to each output's largest magnitude (default 1e-5): an output passes
            when ``max|ort - pt| <= atol + rtol * max|pt|`` (see :func:`validate_parity`).
        noise_factor: if that fails, the output still passes when ONNX Runtime's error against a float64
            PyTorch run is at most ``noise_factor`` times PyTorch fp32's own (default 8.0; 0 disables this
            fallback, which needs memory for a float64 copy of the model; see :func:`validate_parity`).
        opset: ONNX opset (default: 17 for the torch exporter, at most 20; optimum's default for the
            architecture with the optimum exporter).
        decode_steps: decode steps checked after the prefill (default 4).
        prompts: prompts for the greedy ``generate()`` comparison (default :data:`DEFAULT_PROMPTS`).
        max_new_tokens: tokens generated per prompt in that comparison (default 8).
        int8_max_rel_nll_increase: int8 gate on the relative NLL increase over a short text (default 0.05).
        int8_min_top1_agreement: int8 gate on next-token agreement with PyTorch (default 0.8).
        int8_per_channel: per-channel weight scales for int8 (default True).
        int8_exclude: MatMul node-name substrings kept fp32 under int8 (default ``("down_proj",)``, see
            :func:`quantize_int8`).
        threads: ONNX Runtime intra-op threads for validation (default: ORT's choice).
        allow_pickle / trust_remote_code: load pickle weights / run the model folder's own code (default
            off, see :func:`compressor.modeling.loading.load_model`).
        optimize: fuse the graph with ONNX Runtime's transformer optimizer before validation (default False;
            ``RotaryEmbedding`` and ``SkipSimplifiedLayerNormalization``, see :mod:`exporters.onnx.fusion`); the
            report's ``"optimize"`` holds the op counts before and after. With ``int8`` the fused graph is
            quantized.
        exporter: ``"torch"`` (default): torch's own exporter traces the model (:mod:`exporters.onnx.torch_export`), no
            optimum needed; ``"optimum"``: optimum's ``onnx_export_from_model`` (``pip install "lorapress[optimum]"``,
            transformers < 4.58). The report's ``"exporter"`` records it.

    One export per output: ``out``'s lock is held throughout (:func:`compressor.core.lock.output_lock`); a second
    export to it fails at once with :class:`~compressor.core.errors.OutputLockedError`.

    Checks (``validate=True``): fp32 logits/KV parity for a prefill and ``decode_steps`` cached decode steps
    (max abs diff <= ``atol + rtol * max|pt|``, float64 fallback, see :func:`validate_parity`); greedy
    generation equals PyTorch's ``generate()`` on ``prompts`` (through ``ORTModelForCausalLM`` where optimum
    imports, else plain ONNX Runtime, see :func:`validate_generate`). With ``int8``: fp32 parity on the intermediate fp32 graph, then
    :func:`validate_int8` on the int8 graph; generate is run and reported but not gated.

    Returns:
        :class:`ExportResult`; ``export_report.json`` in ``out`` holds the same report.

    Raises:
        ModelLoadError, UnsupportedArchitectureError (also for an architecture that cannot be exported; the
        message lists those that can), OutputExistsError, ConfigError, ExportError,
        ValidationError, DependencyMissingError (also ``exporter="optimum"`` without optimum).

    Example:
        >>> res = export_onnx("pruned_hf", "pruned_onnx", force=True)        # doctest: +SKIP
        >>> res.report["validation"]["parity"]["passed"]                      # doctest: +SKIP
        True
    """
    t_start = time.perf_counter()
    if not (atol > 0):
        raise ConfigError(f"atol must be > 0, got {atol!r}")
    if not (rtol >= 0):
        raise ConfigError(f"rtol must be >= 0, got {rtol!r}")
    if opset is not None and not (11 <= int(opset) <= 25):
        raise ConfigError(f"opset {opset!r} is not valid; use an ONNX opset between 11 and 25 (or leave it out)")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter {exporter!r} is not valid; use one of {', '.join(EXPORTERS)}")
    if exporter == "torch" and opset is not None and int(opset) > TORCH_MAX_OPSET:
        raise ConfigError(f"opset {opset} is above {TORCH_MAX_OPSET}, the highest torch's TorchScript exporter "
                          f"writes; use an opset <= {TORCH_MAX_OPSET} (or --exporter optimum)")
    check_output_dir(out, force)
    if exporter == "optimum":
        require_optimum_exporter()  # before loading the model
    model, tokenizer, spec = load_for_export(model_dir, tokenizer, allow_pickle=allow_pickle,
                                             trust_remote_code=trust_remote_code)
    check_onnx(model.config, str(spec))
    per_layer = per_layer_widths(model.config)
    require("onnx", "ONNX export")

    report: dict[str, Any] = {
        "format": "onnx", "source": str(spec), "task": "text-generation-with-past", "exporter": exporter,
        "model": model_summary(model.config), "int8": int8, "optimized": bool(optimize), "versions": versions(),
    }
    with atomic_output_dir(out, force) as tmp:
        report["tokenizer"] = save_tokenizer(tokenizer, tmp)
        t0 = time.perf_counter()
        if exporter == "optimum":
            _export_with_optimum(model, tmp, opset)
        else:
            report["torch_export"] = _export_with_torch(model, tmp, opset)
        report["export_seconds"] = time.perf_counter() - t0
        onnx_path = tmp / ONNX_FILE
        if not onnx_path.is_file():
            raise ExportError(f"the exporter wrote no {ONNX_FILE} (files: {sorted(list_files(tmp))})")
        drop_gguf_tokenizer_model(tmp)
        report["ort_config_adjustment"] = adjust_config_for_ort(tmp, per_layer=per_layer)
        import onnx

        proto = onnx.load(str(onnx_path), load_external_data=False)
        report["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        report["inputs"] = [i.name for i in proto.graph.input]
        report["outputs"] = [o.name for o in proto.graph.output]
        del proto
        if optimize:
            from exporters.onnx.fusion import optimize_onnx_graph

            t0 = time.perf_counter()
            report["optimize"] = optimize_onnx_graph(onnx_path, model.config)
            report["optimize"]["seconds"] = time.perf_counter() - t0
        validation: dict[str, Any] = {"enabled": bool(validate)}
        t0 = time.perf_counter()
        if validate:
            validation["parity"] = validate_parity(model, onnx_path, atol=atol, rtol=rtol,
                                                   noise_factor=noise_factor, decode_steps=decode_steps,
                                                   threads=threads)
        if int8:
            fp32_files = list_files(tmp)
            report["fp32_onnx_bytes"] = sum(v for k, v in fp32_files.items() if k.startswith(ONNX_FILE))
            qpath = tmp / "model.int8.onnx"
            t1 = time.perf_counter()
            int8_settings = quantize_int8(onnx_path, qpath, per_channel=int8_per_channel, exclude=int8_exclude)
            report["quantize_seconds"] = time.perf_counter() - t1
            for name in fp32_files:
                if name.startswith(ONNX_FILE):
                    (tmp / name).unlink()
            os.replace(qpath, onnx_path)
            # a >2 GB graph keeps its external-data file (model.int8.onnx*): the graph references it by name
            report["int8_settings"] = int8_settings
            if validate:
                validation["int8"] = validate_int8(
                    model, onnx_path, tokenizer, max_rel_nll_increase=int8_max_rel_nll_increase,
                    min_top1_agreement=int8_min_top1_agreement, threads=threads)
        if validate:
            validation["generate"] = validate_generate(model, tmp, tokenizer, prompts=prompts,
                                                       max_new_tokens=max_new_tokens, raise_on_fail=not int8,
                                                       threads=threads)
            validation["seconds"] = time.perf_counter() - t0
        report["validation"] = validation
        report["tolerance"] = {"fp32_atol": atol, "fp32_rtol_of_max_abs": rtol,
                               "fp32_noise_factor_vs_float64": noise_factor} | (
            {"int8_max_rel_nll_increase": int8_max_rel_nll_increase,
             "int8_min_top1_agreement": int8_min_top1_agreement} if int8 else {})
        write_report(tmp, report, t_start)
    files = list_files(out)
    return ExportResult(path=Path(out), format="onnx", files=files, total_bytes=sum(files.values()),
                        validated=bool(validate), seconds=report["seconds"], report=report)


def _export_with_optimum(model, tmp: Path, opset: int | None) -> None:
    """``model.onnx``, ``config.json`` and ``generation_config.json`` written by optimum's exporter."""
    from optimum.exporters.onnx import onnx_export_from_model

    from compressor.modeling.perlayer import as_stock

    old_name = getattr(model.config, "_name_or_path", "")
    # optimum copies preprocessors from config._name_or_path; point it at the folder we already filled
    # so it never tries the hub for a built-in or GGUF name.
    model.config._name_or_path = str(tmp)
    try:
        with as_stock(model), quiet_onnx_export():  # optimum dispatches on the stock class; the graph keeps every layer's shapes
            onnx_export_from_model(model, tmp, task="text-generation-with-past", opset=opset,
                                   do_validation=False, device="cpu")
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in WRITE_FAULT_ERRNOS:
            raise  # atomic_output_dir names the output and the space needed
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        model.config._name_or_path = old_name


def _export_with_torch(model, tmp: Path, opset: int | None) -> dict[str, Any]:
    """``model.onnx`` traced by torch's exporter, and the ``config.json`` / ``generation_config.json`` optimum
    would write beside it (a per-layer model's stock config: its scalars hold the widest layer, and
    :func:`adjust_config_for_ort` records the real widths). Returns the report's ``"torch_export"``."""
    from compressor.modeling.perlayer import as_stock
    from exporters.onnx.torch_export import export_torch_onnx

    info = export_torch_onnx(model, tmp / ONNX_FILE, opset=opset)
    try:
        with as_stock(model):
            model.config.save_pretrained(tmp)
            add_legacy_rope_keys(tmp)  # optimum on transformers 4.x reads rope_theta
            gen = getattr(model, "generation_config", None)
            if gen is not None and model.can_generate():
                gen.save_pretrained(tmp)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in WRITE_FAULT_ERRNOS:
            raise
        raise ExportError(f"writing config.json / generation_config.json failed: {type(exc).__name__}: {exc}") from exc
    return info
