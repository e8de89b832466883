"""``--format onnx-genai``: a fused decoder graph from onnxruntime-genai's model builder, validated against PyTorch.

The builder (``onnxruntime_genai.models.builder``, onnxruntime-genai 0.18, run in a child process by
:mod:`exporters.onnx.genai_build`) writes one decoder graph per model in which each layer is a handful of
ONNX Runtime contrib ops: ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm), one packed QKV
``MatMul``, ``GroupQueryAttention`` with the rotary embedding inside (``do_rotary=1``, cos/sin caches as
initializers), ``o_proj``, ``gate_proj``/``up_proj``, SiLU, ``down_proj``. A CPU session runs 29 nodes for a
2-layer tiny LLaMA, against 264 for optimum's graph (:mod:`exporters.onnx.graph_ops`). The builder takes
``head_dim`` from ``config.head_dim``, so head-pruned models (``head_dim != hidden_size / heads``) are built
as they are; GQA and tied embeddings (the embedding is a ``Gather`` on the transposed ``lm_head``) too.

The folder holds ``model.onnx`` (+ ``model.onnx.data``), ``genai_config.json`` (read by
``onnxruntime_genai.Model(folder)``), the tokenizer, the model's ``config.json`` (for ``compress bench``'s
counts) and ``export_report.json``. Graph inputs: ``input_ids``, ``attention_mask``,
``past_key_values.{i}.key/value``; outputs ``logits``, ``present.{i}.key/value`` (no ``position_ids``:
``GroupQueryAttention`` numbers positions from the cache length, so a sequence takes no padding inside it;
the genai generator pads batches itself).

Precision: ``fp32`` (default) or ``int4`` (``MatMulNBits``: 4-bit block-wise weights, the builder's ``-p int4``
defaults for CPU: block 32, round-to-nearest, ``accuracy_level`` 4 = int8 activations inside the kernel; the
values used are read back from the graph into ``int4_settings``). Not supported, with a clear error: per-layer widths
(:mod:`compressor.modeling.perlayer`; the builder reads one set of widths from ``config.json``), ``head_dim`` not a
multiple of 16 (ONNX Runtime's CPU ``GroupQueryAttention`` kernel: "head_size shall be a multiple of 16";
SmolLM2, Qwen2.5, LLaMA have 64 or 128), and architectures other than :data:`GENAI_ARCHITECTURES`.

Validation (on by default; a failure raises :class:`ValidationError` and leaves ``out`` untouched):

* fp32 parity, as for ``--format onnx`` (:func:`exporters.onnx.validation.validate_parity`: logits and KV cache,
  prefill of a batch of 2 + 4 cached decode steps, ``max|ort - pt| <= atol + rtol * max|pt|`` with the
  float64 noise-floor fallback) with unpadded rows. With ``int4`` the fp32 graph is built and checked
  first, then deleted.
* greedy generation through the ``onnxruntime_genai`` generator (``og.Generator``) == PyTorch's
  ``generate()`` on a few prompts (:func:`validate_genai_generate`), gated in fp32.
* ``int4``: :func:`exporters.onnx.int8.validate_int8` with ``precision="int4"`` on the int4 graph: relative NLL
  increase <= ``int4_max_rel_nll_increase`` (default 10 %) and next-token agreement >= ``int4_min_top1_agreement``
  (default 0.7) where the fp32 top-2 margin is >= 0.25.

Example:
    >>> from exporters.onnx.genai import export_onnx_genai                        # doctest: +SKIP
    >>> res = export_onnx_genai("pruned_hf/", "pruned_genai/", force=True)  # doctest: +SKIP
    >>> res.report["graph"]["ort_optimized"]["fused"]["GroupQueryAttention"]  # doctest: +SKIP
    30
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError, ExportError, UnsupportedArchitectureError, ValidationError
from compressor.core.io import WRITE_FAULT_ERRNOS, atomic_output_dir, check_output_dir
from compressor.core.lock import locks_output
from compressor.core.optional import require
from compressor.modeling.architectures import get_architecture
from compressor.modeling.save import drop_gguf_tokenizer_model, save_tokenizer
from compressor.modeling.sizes import is_per_layer, model_sizes
from exporters.loading import load_for_export
from exporters.onnx.graph_ops import matmulnbits_settings, op_counts
from exporters.onnx.int8 import INT8_CHECK_TEXT, validate_int8
from exporters.onnx.validation import DEFAULT_PROMPTS, _prompt_ids, validate_parity
from exporters.report import ExportResult, list_files, model_summary, versions, write_report

__all__ = ["GENAI_ARCHITECTURES", "GENAI_FORMAT", "GENAI_PRECISIONS", "build_genai_graph", "check_genai_model",
           "export_onnx_genai", "validate_genai_generate"]

#: ``export_report.json`` ``"format"`` of this export.
GENAI_FORMAT = "onnx-genai"
#: model types this route was checked on (parity tests); the builder knows more, unchecked here.
GENAI_ARCHITECTURES = ("llama", "qwen2")
#: ``precision`` values
GENAI_PRECISIONS = ("fp32", "int4")
#: ONNX Runtime's CPU GroupQueryAttention kernel needs head_dim % 16 == 0 (onnxruntime 1.32).
GQA_HEAD_DIM_MULTIPLE = 16
ONNX_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
#: the builder's own pip requirements (onnx_ir is imported by the builder, not declared by the wheel)
_BUILDER_MODULES = (("onnxruntime_genai", "onnxruntime-genai==0.18.0"), ("onnx_ir", "onnx-ir"))


def check_genai_model(config: Any, spec: str = "model") -> None:
    """Raise if the builder route cannot export ``config`` (see the module docstring for why).

    Raises:
        UnsupportedArchitectureError: per-layer widths, ``head_dim % 16 != 0``, or an architecture outside
            :data:`GENAI_ARCHITECTURES`.
    """
    arch = get_architecture(config, spec)
    if arch.model_type not in GENAI_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{spec!r} ({arch.model_type}): --format onnx-genai is checked for {', '.join(GENAI_ARCHITECTURES)} "
            f"only; use --format onnx (optionally --optimize) for {arch.model_type}")
    if is_per_layer(config) and not model_sizes(config).uniform:
        raise UnsupportedArchitectureError(
            f"{spec!r} has per-layer widths (heads / intermediate size differ between layers); onnxruntime-genai's "
            f"builder reads one set of widths from config.json. Use --format onnx (optionally --optimize), which "
            f"holds every layer's shapes")
    if is_per_layer(config):
        raise UnsupportedArchitectureError(
            f"{spec!r} is a per-layer-widths folder with uniform widths, written so because the installed "
            f"transformers refuses its stock config (e.g. a head count that does not divide hidden_size); "
            f"onnxruntime-genai's builder loads the stock config. Use --format onnx (optionally --optimize)")
    hd = model_sizes(config).head_dim
    if hd % GQA_HEAD_DIM_MULTIPLE:
        raise UnsupportedArchitectureError(
            f"{spec!r} has head_dim {hd}; ONNX Runtime's CPU GroupQueryAttention (used by --format onnx-genai) "
            f"needs a multiple of {GQA_HEAD_DIM_MULTIPLE}. Use --format onnx")


def _require_builder() -> None:
    for module, pip_name in _BUILDER_MODULES:
        require(module, "--format onnx-genai", extra=f'"lorapress[genai]" (or {pip_name})')


def build_genai_graph(hf_dir: Path, out: Path, precision: str, *, cache_dir: Path,
                      extra_options: Sequence[str] = ()) -> dict[str, Any]:
    """Run the builder (:mod:`exporters.onnx.genai_build`) on the saved HF folder ``hf_dir`` into ``out``.

    Returns:
        ``{"seconds", "precision", "extra_options", "command"}``.

    Raises:
        ExportError: the builder failed (the message holds the end of its output) or wrote no graph.
    """
    script = Path(__file__).with_name("genai_build.py")
    cmd = [sys.executable, str(script), str(hf_dir), str(out), precision, str(cache_dir), *extra_options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (out / ONNX_FILE).is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        raise ExportError(f"onnxruntime-genai's model builder failed (exit {proc.returncode}, precision {precision}): "
                          + " | ".join(tail))
    return {"seconds": time.perf_counter() - t0, "precision": precision, "extra_options": list(extra_options),
            "command": "onnxruntime_genai.models.builder (via exporters/onnx/genai_build.py) -e cpu -p " + precision}


def _eos_ids(config) -> set[int]:
    eos = getattr(config, "eos_token_id", None)
    return set(eos) if isinstance(eos, (list, tuple)) else ({eos} if isinstance(eos, int) else set())


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


def validate_genai_generate(model, folder: Path, tokenizer=None, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
                            max_new_tokens: int = 8, tie_tol: float = 1e-3,
                            raise_on_fail: bool = True) -> dict[str, Any]:
    """Greedy generation through the ``onnxruntime_genai`` generator on ``folder`` vs PyTorch ``generate()``.

    Both sides stop at the first EOS; a divergence where PyTorch's top-2 logits at the first differing step
    are within ``tie_tol`` is counted as a near-tie, not a failure (as :func:`exporters.onnx.validation.validate_generate`).

    Returns:
        ``{"runtime", "max_new_tokens", "tie_tol", "all_equal", "passed", "results": [...]}``.
    """
    import torch

    og = require("onnxruntime_genai", "--format onnx-genai generate validation", extra='"lorapress[genai]"')
    try:
        og_model = og.Model(str(folder))
    except Exception as exc:  # noqa: BLE001 - any loader failure means the folder is unusable
        raise ValidationError(f"onnxruntime_genai cannot load {str(folder)!r}: {type(exc).__name__}: {exc}") from exc
    cfg = model.config
    pad = cfg.pad_token_id if isinstance(cfg.pad_token_id, int) else (
        cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 0)
    eos = _eos_ids(cfg)
    results = []
    for text, ids in zip(prompts, _prompt_ids(tokenizer, prompts, cfg.vocab_size)):
        x = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            pt = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad, temperature=None, top_p=None,
                                top_k=None)[0].tolist()[len(ids):]
        try:
            params = og.GeneratorParams(og_model)
            params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
            gen = og.Generator(og_model, params)
            gen.append_tokens(ids)
            while not gen.is_done():
                gen.generate_next_token()
            on = [int(t) for t in gen.get_sequence(0)][len(ids):]
        except Exception as exc:  # noqa: BLE001 - reported as a validation failure with its cause
            raise ValidationError(f"onnxruntime_genai generation failed: {type(exc).__name__}: {exc}") from exc
        pt, on = _until_eos(pt, eos), _until_eos(on, eos)
        equal = pt == on
        tie = False
        if not equal:
            n = min(len(pt), len(on))
            first = next((i for i in range(n) if pt[i] != on[i]), n)
            if first < n:
                with torch.no_grad():
                    lg = model(input_ids=torch.tensor([ids + pt[:first]])).logits[0, -1]
                tie = float(lg[pt[first]] - lg[on[first]]) <= tie_tol
        results.append({"prompt": text, "prompt_ids": ids, "pt": pt, "ort": on, "equal": equal, "tie": tie})
    ok = all(r["equal"] or r["tie"] for r in results)
    res = {"runtime": f"onnxruntime_genai {og.__version__} Generator", "max_new_tokens": max_new_tokens,
           "tie_tol": tie_tol, "all_equal": all(r["equal"] for r in results), "passed": ok, "results": results}
    if raise_on_fail and not ok:
        bad = [r for r in results if not (r["equal"] or r["tie"])]
        raise ValidationError("greedy generation through onnxruntime_genai differs from PyTorch: "
                              + "; ".join(f"{r['prompt']!r}: pt={r['pt']} genai={r['ort']}" for r in bad))
    return res


@locks_output
def export_onnx_genai(model_dir, out: str | os.PathLike, *, precision: str = "fp32", force: bool = False,
                      validate: bool = True, atol: float = 1e-4, rtol: float = 1e-5, noise_factor: float = 8.0,
                      tokenizer=None, decode_steps: int = 4, prompts: Sequence[str] = DEFAULT_PROMPTS,
                      max_new_tokens: int = 8, int4_max_rel_nll_increase: float = 0.10,
                      int4_min_top1_agreement: float = 0.7, threads: int | None = None,
                      allow_pickle: bool = False, trust_remote_code: bool = False) -> ExportResult:
    """Export a causal LM with onnxruntime-genai's model builder (fused graph) and validate it against PyTorch.

    Args:
        model_dir: HF model folder, ``.gguf`` file, built-in name or a loaded ``PreTrainedModel`` (then pass
            ``tokenizer``).
        out: output folder, written atomically.
        precision: ``"fp32"`` (default) or ``"int4"`` (``MatMulNBits``, block 32, see the module docstring).
        force: replace a non-empty ``out``.
        validate: run the checks of the module docstring (default True).
        atol, rtol, noise_factor, decode_steps: fp32 parity tolerances and decode steps, as for
            :func:`exporters.onnx.export.export_onnx` (defaults 1e-4, 1e-5, 8.0, 4).
        prompts, max_new_tokens: the greedy-generation comparison (default :data:`DEFAULT_PROMPTS`, 8 tokens).
        int4_max_rel_nll_increase: int4 gate on the relative NLL increase over a short text (default 0.10).
        int4_min_top1_agreement: int4 gate on next-token agreement with PyTorch (default 0.7).
        threads: ONNX Runtime intra-op threads for the parity checks (default: ORT's choice).
        allow_pickle / trust_remote_code: as for :func:`compressor.modeling.loading.load_model` (default off).

    Returns:
        :class:`ExportResult` with ``format == "onnx-genai"``; ``export_report.json`` holds the same report
        (builder settings, op counts of the stored and ORT-optimized graph, measured differences).

    Raises:
        ConfigError (bad precision or tolerance), UnsupportedArchitectureError (see :func:`check_genai_model`),
        DependencyMissingError (no onnxruntime-genai / onnx-ir), ModelLoadError, OutputExistsError,
        ExportError (the builder failed), ValidationError.

    Example:
        >>> res = export_onnx_genai("pruned_hf", "pruned_genai", precision="int4")   # doctest: +SKIP
        >>> res.report["validation"]["int4"]["rel_nll_increase"]                     # doctest: +SKIP
        0.021
    """
    t_start = time.perf_counter()
    if precision not in GENAI_PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not valid; use one of {', '.join(GENAI_PRECISIONS)}")
    if not (atol > 0):
        raise ConfigError(f"atol must be > 0, got {atol!r}")
    if not (rtol >= 0):
        raise ConfigError(f"rtol must be >= 0, got {rtol!r}")
    check_output_dir(out, force)
    _require_builder()
    model, tokenizer, spec = load_for_export(model_dir, tokenizer, allow_pickle=allow_pickle,
                                             trust_remote_code=trust_remote_code)
    check_genai_model(model.config, str(spec))
    int4 = precision == "int4"
    report: dict[str, Any] = {
        "format": GENAI_FORMAT, "source": str(spec), "precision": precision, "int8": False,
        "model": model_summary(model.config), "versions": versions() | _genai_versions(),
    }
    with atomic_output_dir(out, force) as tmp:
        work = tmp / ".build"
        src = work / "hf"
        try:
            model.save_pretrained(src, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(src))
                drop_gguf_tokenizer_model(src)
            validation: dict[str, Any] = {"enabled": bool(validate)}
            t_val = 0.0
            if int4 and validate:  # the same builder route in fp32 gets the exact check first
                fp32_dir = work / "fp32"
                report["fp32_build"] = build_genai_graph(src, fp32_dir, "fp32", cache_dir=work / "cache")
                t0 = time.perf_counter()
                validation["parity"] = validate_parity(
                    model, fp32_dir / ONNX_FILE, atol=atol, rtol=rtol, noise_factor=noise_factor,
                    decode_steps=decode_steps, threads=threads, left_pad=False)
                validation["parity"]["graph"] = "fp32 build of the same route (deleted after the check)"
                t_val += time.perf_counter() - t0
                shutil.rmtree(fp32_dir)
            report["build"] = build_genai_graph(src, tmp, precision, cache_dir=work / "cache")
            shutil.copy2(src / "config.json", tmp / "config.json")
            if (src / "generation_config.json").is_file():
                shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
        except OSError as exc:
            if exc.errno in WRITE_FAULT_ERRNOS:
                raise  # atomic_output_dir names the output and the space needed
            raise ExportError(f"onnx-genai export failed: {type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report["tokenizer"] = save_tokenizer(tokenizer, tmp)
        onnx_path = tmp / ONNX_FILE
        import onnx

        proto = onnx.load(str(onnx_path), load_external_data=False)
        report["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        report["inputs"] = [i.name for i in proto.graph.input]
        report["outputs"] = [o.name for o in proto.graph.output]
        if int4:
            report["int4_settings"] = {"op": "MatMulNBits", "method": "onnxruntime-genai builder -p int4 (RTN)",
                                       **matmulnbits_settings(proto)}
        del proto
        report["graph"] = op_counts(onnx_path)
        t0 = time.perf_counter()
        if validate and not int4:
            validation["parity"] = validate_parity(model, onnx_path, atol=atol, rtol=rtol, noise_factor=noise_factor,
                                                   decode_steps=decode_steps, threads=threads, left_pad=False)
        if validate and int4:
            validation["int4"] = validate_int8(
                model, onnx_path, tokenizer, max_rel_nll_increase=int4_max_rel_nll_increase,
                min_top1_agreement=int4_min_top1_agreement, threads=threads, precision="int4")
        if validate:
            validation["generate"] = validate_genai_generate(model, tmp, tokenizer, prompts=prompts,
                                                             max_new_tokens=max_new_tokens, raise_on_fail=not int4)
            validation["seconds"] = t_val + time.perf_counter() - t0
        report["validation"] = validation
        report["tolerance"] = {"fp32_atol": atol, "fp32_rtol_of_max_abs": rtol,
                               "fp32_noise_factor_vs_float64": noise_factor} | (
            {"int4_max_rel_nll_increase": int4_max_rel_nll_increase, "int4_min_top1_agreement": int4_min_top1_agreement,
             "int4_check_text_tokens_max": 128, "int4_check_text": INT8_CHECK_TEXT[:40] + "..."} if int4 else {})
        write_report(tmp, report, t_start)
    files = list_files(out)
    return ExportResult(path=Path(out), format=GENAI_FORMAT, files=files, total_bytes=sum(files.values()),
                        validated=bool(validate), seconds=report["seconds"], report=report)


def _genai_versions() -> dict[str, str | None]:
    return versions(("onnxruntime-genai", "onnx-ir"))


