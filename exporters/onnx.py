"""Export a (pruned) LLaMA-family causal LM to ONNX with a KV cache, and validate it against PyTorch.

The graph is produced by optimum's exporter (task ``text-generation-with-past``): one decoder graph
``model.onnx`` with inputs ``input_ids``, ``attention_mask``, ``position_ids`` and
``past_key_values.{i}.key/value`` and outputs ``logits`` and ``present.{i}.key/value``. The folder
also holds ``config.json``, ``generation_config.json``, the tokenizer files and ``export_report.json``,
and loads with stock ``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(folder)``.

Head-pruned models and optimum's ORT model
------------------------------------------
Pruning attention heads keeps ``hidden_size`` and writes an explicit ``head_dim``, so
``head_dim != hidden_size // num_attention_heads``. The exporter honours ``head_dim``, but
``ORTModelForCausalLM`` (optimum-onnx 0.1.0, ``modeling_decoder.py``) sizes the empty KV cache it feeds
on the first step as ``hidden_size // num_attention_heads`` for llama/mistral/qwen2, which then fails
with ``past_key_values... Got: 64 Expected: 32``. That is the only use it makes of ``hidden_size``,
so the *exported folder's* ``config.json`` gets ``hidden_size = num_attention_heads * head_dim``
(the width of the attention projection, which is also what ONNX Runtime's transformer optimizer calls
``hidden_size``) and keeps the model's real width under ``"lorapress_export": {"model_hidden_size": ..}``.
The HF model's own config is never changed. Dense models need no adjustment and are written as is.

Validation (on by default; a failure raises :class:`ValidationError` and leaves ``out`` untouched)
----------------------------------------------------------------------------------------------------
* fp32 parity (:func:`validate_parity`): logits and KV cache, prefill + 4 cached decode steps, per output
  ``max|ort - pt| <= 1e-4 + 1e-5 * max|pt|``; if that fails, a float64 PyTorch run decides whether the
  difference is float32 rounding noise (ORT within 4x of PyTorch fp32's own error) or a real mismatch.
* greedy ``generate()`` through ``ORTModelForCausalLM.from_pretrained(out)`` == PyTorch on a few prompts
  (:func:`validate_generate`), which also proves the folder loads with stock optimum.
* ``int8``: :func:`validate_int8` - relative NLL increase <= 5 % and next-token agreement >= 80 % on a short
  text, instead of exact parity (the intermediate fp32 graph still gets the exact check).

Example:
    >>> from exporters import export_onnx                                        # doctest: +SKIP
    >>> res = export_onnx("pruned_hf/", "pruned_onnx/", force=True)              # doctest: +SKIP
    >>> res.report["validation"]["parity"]["max_abs_diff"]                       # doctest: +SKIP
    9.6e-05
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import (
    ConfigError,
    DependencyMissingError,
    ExportError,
    ModelLoadError,
    ValidationError,
)
from compressor.io import atomic_output_dir, check_output_dir, write_json
from compressor.models import is_onnx_folder  # noqa: F401  (part of this module's API)
from compressor.save import drop_gguf_tokenizer_model, save_tokenizer

#: Name of the ONNX graph inside an exported folder (optimum's standard name).
ONNX_FILE = "model.onnx"
#: Name of the JSON report written into every export folder.
REPORT_FILE = "export_report.json"
#: Key added to an exported folder's config.json when the ORT config adjustment was applied.
CONFIG_KEY = "lorapress_export"

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, a small cat",
    "def add(a, b):",
)

#: Short English text for the int8 perplexity-style check (teacher-forced NLL, fp32 vs int8).
INT8_CHECK_TEXT = (
    "The city council met on Tuesday to discuss the new budget for public libraries. Several members "
    "argued that reading rooms should stay open later in the evening, because many students have no "
    "quiet place to work at home. Others pointed out that the cost of heating and staff would rise, and "
    "asked whether volunteers could help. After a long debate, the council agreed to try longer hours "
    "in two branches for six months and to report the results to the public in the spring."
)


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        path: the output folder.
        format: ``"onnx"`` or ``"safetensors"``.
        files: file name (relative to ``path``) -> size in bytes.
        total_bytes: sum of ``files``.
        validated: whether validation ran (and passed: a failed validation raises instead).
        seconds: wall time of the whole export, validation included.
        report: the content of ``export_report.json``.
    """

    path: Path
    format: str
    files: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    validated: bool = False
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- shared helpers


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyMissingError(
            f"{what} needs the Python package {module.split('.')[0]!r}, which cannot be imported ({exc}); "
            f"install the project's dependencies (pip install -e .)"
        ) from exc


def load_for_export(model, tokenizer=None, *, require_fp32_cpu: bool = True):
    """Return ``(model, tokenizer, spec)`` from a model spec or an already loaded model.

    Args:
        model: anything :func:`compressor.models.load_model` accepts (HF folder, ``.gguf`` file, built-in
            name) or a loaded ``PreTrainedModel``.
        tokenizer: the tokenizer to use with a loaded model (ignored for a spec, whose own tokenizer is
            loaded). May be None for a loaded model: the export then has no tokenizer files.
        require_fp32_cpu: refuse a loaded model that is not float32 on the CPU (ONNX export and its fp32
            validation need one; a spec is always loaded that way).

    Raises:
        ModelLoadError: not a model folder / unreadable model.
        UnsupportedArchitectureError: the model type is not llama, mistral or qwen2.
        ConfigError: ``require_fp32_cpu`` and the loaded model is not float32 on the CPU.
    """
    from compressor.models import check_architecture, load_model, resolve_model

    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        resolve_model(spec)  # fast, clear ModelLoadError before importing torch
        model, tokenizer, _ = load_model(spec)
        model.eval()
        return model, tokenizer, spec
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "forward"):
        raise ModelLoadError(f"expected a model path or a transformers PreTrainedModel, got {type(model).__name__}")
    check_architecture(config, getattr(config, "_name_or_path", "model") or "model")
    import torch

    param = next(model.parameters(), None)
    if require_fp32_cpu and param is not None and (param.dtype != torch.float32 or param.device.type != "cpu"):
        raise ConfigError(f"export expects a float32 model on the CPU, got {param.dtype} on {param.device}; "
                          f"use model.float().cpu() first")
    model.eval()
    return model, tokenizer, getattr(config, "_name_or_path", "") or type(model).__name__


def write_report(folder: Path, report: dict, t_start: float) -> None:
    """Add the folder's files, their total size and the elapsed time to ``report``; write ``REPORT_FILE``."""
    files = list_files(folder)
    report["files"] = files
    report["total_bytes"] = sum(files.values())
    report["seconds"] = time.perf_counter() - t_start
    write_json(folder / REPORT_FILE, report)


def list_files(folder: str | os.PathLike) -> dict[str, int]:
    """File name (relative, sorted) -> size in bytes for every file under ``folder``."""
    root = Path(folder)
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _model_summary(config) -> dict[str, Any]:
    heads = int(config.num_attention_heads)
    return {
        "model_type": config.model_type,
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": heads,
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        "intermediate_size": int(config.intermediate_size),
        "vocab_size": int(config.vocab_size),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


# --------------------------------------------------------------------------- ORT config adjustment


def adjust_config_for_ort(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Make an exported folder's ``config.json`` loadable by ``ORTModelForCausalLM`` when heads were pruned.

    Sets ``hidden_size = num_attention_heads * head_dim`` when the two differ and records the model's real
    ``hidden_size`` under ``config["lorapress_export"]["model_hidden_size"]`` (see the module docstring).
    Idempotent. Returns a description of the change, or None when the config needed none.
    """
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim")
    hidden = cfg.get("hidden_size")
    if not heads or not head_dim or not hidden or hidden // heads == head_dim:
        return None
    ort_hidden = int(heads) * int(head_dim)
    extra = dict(cfg.get(CONFIG_KEY) or {})
    extra.setdefault("model_hidden_size", int(hidden))
    extra["note"] = (
        "hidden_size here is num_attention_heads * head_dim so that optimum's ORTModelForCausalLM sizes the "
        "KV cache correctly (it uses hidden_size // num_attention_heads); the model's real hidden size is "
        "model_hidden_size"
    )
    cfg["hidden_size"] = ort_hidden
    cfg[CONFIG_KEY] = extra
    write_json(path, cfg)
    return {"hidden_size": {"model": int(extra["model_hidden_size"]), "onnx_config": ort_hidden},
            "reason": "head_dim != hidden_size // num_attention_heads"}


def true_hidden_size(config: dict) -> int:
    """The model's hidden size from an exported (possibly adjusted) config dict."""
    extra = config.get(CONFIG_KEY) or {}
    return int(extra.get("model_hidden_size") or config["hidden_size"])


# --------------------------------------------------------------------------- ONNX Runtime helpers


def _session(path: Path, threads: int | None = None):
    ort = _require("onnxruntime", "ONNX validation")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _kv_layout(session) -> tuple[list[str], list[str], dict[str, tuple]]:
    """Past input names, present output names and past input shapes (with str for symbolic dims)."""
    past_in = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    present_out = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    shapes = {i.name: tuple(i.shape) for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    return past_in, present_out, shapes


class _OrtDecoder:
    """Minimal ONNX Runtime decoder loop: prefill then decode steps with its own KV cache."""

    def __init__(self, session, num_kv_heads: int, head_dim: int):
        import numpy as np

        self.np = np
        self.s = session
        self.inputs = {i.name for i in session.get_inputs()}
        self.past_in, self.present_out, _ = _kv_layout(session)
        self.out_names = ["logits"] + self.present_out
        self.kv_heads, self.head_dim = num_kv_heads, head_dim
        self.past: list | None = None
        self.mask = None

    def step(self, input_ids, attention_mask):
        """``input_ids``: (B, S) new tokens; ``attention_mask``: (B, past + S) for past + new tokens."""
        np = self.np
        b, s = input_ids.shape
        if self.past is None:
            self.past = [np.zeros((b, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past_in]
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if "position_ids" in self.inputs:
            pos = np.cumsum(attention_mask, axis=1) - 1
            pos = np.where(attention_mask == 0, 1, pos)
            feed["position_ids"] = pos[:, -s:].astype(np.int64)
        if "use_cache_branch" in self.inputs:
            feed["use_cache_branch"] = np.array([self.past[0].shape[2] > 0])
        feed.update(dict(zip(self.past_in, self.past)))
        outs = self.s.run(self.out_names, feed)
        self.past = outs[1:]
        return outs[0], outs[1:]


def _pt_kv(cache, layer: int):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer][0], cache[layer][1]


# --------------------------------------------------------------------------- validation


def _collect(outputs: dict, name: str, arr, valid) -> None:
    """Append the valid positions of ``arr`` to ``outputs[name]`` as a float64 2-D array.

    ``arr`` is logits (B, T, V) or a KV tensor (B, heads, T, head_dim); ``valid`` a (B, T) bool mask or None.
    """
    import numpy as np

    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 4:
        a = a.transpose(0, 2, 1, 3)
    if valid is not None:
        a = a[valid]
    outputs.setdefault(name, []).append(a.reshape(a.shape[0] if a.ndim > 1 else 1, -1))


def _pt_run(model, ids, mask, steps: int, forced=None):
    """PyTorch prefill + ``steps`` greedy decode steps (or the ``forced`` tokens); returns (outputs, tokens)."""
    import numpy as np
    import torch

    outs: dict[str, list] = {}
    tokens = []
    with torch.no_grad():
        pos = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)
        o = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  position_ids=torch.from_numpy(pos), use_cache=True)
        cache, valid = o.past_key_values, mask.astype(bool)
        _collect(outs, "prefill.logits", o.logits.numpy(), valid)
        n_layers = model.config.num_hidden_layers
        for i in range(n_layers):
            k, v = _pt_kv(cache, i)
            _collect(outs, "prefill.present.key", k.numpy(), valid)
            _collect(outs, "prefill.present.value", v.numpy(), valid)
        logits = o.logits
        for step in range(steps):
            nxt = forced[step] if forced is not None else logits[:, -1, :].argmax(-1, keepdim=True).numpy()
            tokens.append(nxt)
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
            pos = (np.cumsum(mask, axis=1) - 1)[:, -1:]
            o = model(input_ids=torch.from_numpy(nxt), attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(pos), past_key_values=cache, use_cache=True)
            cache, logits = o.past_key_values, o.logits
            _collect(outs, "decode.logits", logits.numpy(), None)
        if steps:
            valid = mask.astype(bool)
            for i in range(n_layers):
                k, v = _pt_kv(cache, i)
                _collect(outs, "decode.present.key", k.numpy(), valid)
                _collect(outs, "decode.present.value", v.numpy(), valid)
    return outs, tokens


def _ort_run(dec: _OrtDecoder, ids, mask, tokens):
    """The same sequence through ONNX Runtime, feeding ``tokens`` at the decode steps."""
    import numpy as np

    outs: dict[str, list] = {}
    logits, kv = dec.step(ids, mask)
    valid = mask.astype(bool)
    _collect(outs, "prefill.logits", logits, valid)

    def add_kv(prefix, kv, valid):
        for name, arr in zip(dec.present_out, kv):
            _collect(outs, f"{prefix}.present.{name.rsplit('.', 1)[1]}", arr, valid)

    add_kv("prefill", kv, valid)
    for nxt in tokens:
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        logits, kv = dec.step(nxt, mask)
        _collect(outs, "decode.logits", logits, None)
    if tokens:
        add_kv("decode", kv, mask.astype(bool))
    return outs


def _max_abs(a: dict, b: dict) -> dict[str, tuple[float, float]]:
    """name -> (max |a - b|, max |b|) over all arrays of that output."""
    import numpy as np

    out = {}
    for name, refs in b.items():  # np.max propagates NaN, so a NaN anywhere fails the comparison that follows
        d = np.max([np.abs(x - y).max() if x.size else 0.0 for x, y in zip(a[name], refs)])
        r = np.max([np.abs(y).max() if y.size else 0.0 for y in refs])
        out[name] = (float(d), float(r))
    return out


def _fp64_affordable(model) -> bool:
    try:
        import psutil

        need = 2 * sum(p.numel() * p.element_size() for p in model.parameters()) * 1.3
        return need < 0.8 * psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - no psutil / no memory figure: skip the optional fallback
        return False


def _sliding_window(config) -> int | None:
    """The attention window the model's own KV cache applies, or None (Qwen2 sets it but may not use it)."""
    w = getattr(config, "sliding_window", None)
    if not isinstance(w, int) or w <= 0 or getattr(config, "use_sliding_window", True) is False:
        return None
    return w


def validate_parity(model, onnx_path: Path, *, atol: float = 1e-4, rtol: float = 1e-5, decode_steps: int = 4,
                    batch: int = 2, prompt_len: int = 12, seed: int = 0, threads: int | None = None,
                    noise_factor: float = 8.0, fp64_fallback: bool = True,
                    raise_on_fail: bool = True) -> dict[str, Any]:
    """Compare ONNX Runtime and PyTorch logits and KV cache for a prefill and ``decode_steps`` decode steps.

    The prefill is a batch of ``batch`` random sequences of ``prompt_len`` tokens, the second one
    left-padded by 3 tokens (only unpadded positions are compared). Each decode step feeds both models the
    PyTorch greedy token; each side keeps its own cache.

    Primary gate, per output: ``max|ort - pt| <= atol + rtol * max|pt|``. The ``rtol`` term matters only for
    large outputs (logits of a 30-layer model reach |30|); for small tensors the bound is ``atol``.

    fp32 noise-floor fallback: PyTorch fp32 is not exact either. Models with massive activations (SmolLM2's
    residual stream reaches ~2e4; head-sliced copies of it more) carry float32 rounding noise of 1e-4 .. 1e-3
    in their logits whatever the runtime. When the primary gate fails and a float64 copy of the model fits in
    memory (``fp64_fallback``), the same sequence is run in float64 and an output passes if ONNX Runtime is
    within ``noise_factor`` (default 8) times PyTorch fp32's own error against float64:
    ``max|ort - pt64| <= max(atol + rtol * max|pt64|, noise_factor * max|pt32 - pt64|)``.
    ``judged_by`` in the result says which gate decided.

    Args:
        model: the PyTorch model (eval mode, float32).
        onnx_path: the exported ``model.onnx``.
        atol: absolute tolerance on the max absolute difference of every output (default 1e-4, fp32).
        rtol: tolerance relative to the output's largest magnitude (default 1e-5).
        decode_steps: decode steps after the prefill (default 4).
        batch, prompt_len, seed: shape and seed of the random prefill batch (defaults 2, 12, 0).
        threads: ONNX Runtime intra-op threads (default: ORT's choice).
        noise_factor: allowed ratio to PyTorch fp32's own error in the fallback (default 8.0; 0 disables it).
        fp64_fallback: allow the float64 fallback (default True).
        raise_on_fail: raise :class:`ValidationError` if an output is outside its tolerance.

    Returns:
        ``{"atol", "rtol", "max_abs_diff", "judged_by", "per_output": {name: {"max_abs_diff", "max_abs_ref",
        "tol", "passed", ...}}, "passed"}``; names are ``prefill.logits``, ``prefill.present.key/value``
        (max over layers), ``decode.logits``, ``decode.present.key/value`` (max over steps and layers).

    Example:
        >>> validate_parity(model, Path("out/model.onnx"))["passed"]        # doctest: +SKIP
        True
    """
    import numpy as np

    summ = _model_summary(model.config)
    window = _sliding_window(model.config)
    if window and prompt_len + decode_steps > window - 1:
        # PyTorch's sliding-window cache keeps only the last ``window - 1`` positions, the exported graph's
        # cache keeps all: compare within the window, where both caches hold the same positions.
        decode_steps = min(decode_steps, max(1, (window - 1) // 3))
        prompt_len = max(1, window - 1 - decode_steps)
    sess = _session(onnx_path, threads)
    dec = _OrtDecoder(sess, summ["num_key_value_heads"], summ["head_dim"])
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, summ["vocab_size"], size=(batch, prompt_len), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        npad = min(3, prompt_len - 1)
        mask[1, :npad] = 0
        pad = model.config.pad_token_id
        ids[1, :npad] = pad if isinstance(pad, int) else 0

    pt, tokens = _pt_run(model, ids, mask, decode_steps)
    got = _ort_run(dec, ids, mask, tokens)
    per = {}
    for name, (d, ref) in _max_abs(got, pt).items():
        tol = atol + rtol * ref
        per[name] = {"max_abs_diff": d, "max_abs_ref": ref, "tol": tol, "passed": d <= tol}
    judged_by = "fp32_reference"
    note = None
    if not all(v["passed"] for v in per.values()) and fp64_fallback and noise_factor > 0:
        if _fp64_affordable(model):
            import copy

            m64 = copy.deepcopy(model).double()
            # One row at a time without its left padding: float64 eager attention turns fully masked
            # (padding) rows into NaN, which then leaks through 0 * NaN. Same positions, same result.
            rows = []
            for r in range(batch):
                keep = mask[r].astype(bool)
                o, _ = _pt_run(m64, ids[r:r + 1, keep], np.ones((1, int(keep.sum())), np.int64), decode_steps,
                               forced=[t[r:r + 1] for t in tokens])
                rows.append(o)
            del m64
            ref64 = {k: [np.concatenate([row[k][i] for row in rows], axis=0) for i in range(len(rows[0][k]))]
                     for k in rows[0]}
            d_ort, d_pt = _max_abs(got, ref64), _max_abs(pt, ref64)
            judged_by = "fp64_noise_floor"
            for name, v in per.items():
                noise = d_pt[name][0]
                tol = max(atol + rtol * d_ort[name][1], noise_factor * noise)
                v.update({"max_abs_diff_vs_fp64": d_ort[name][0], "pt_fp32_error_vs_fp64": noise,
                          "tol_fp64": tol, "passed": d_ort[name][0] <= tol})
        else:
            note = "float64 fallback skipped: a float64 copy of the model does not fit in memory"
    res = {"atol": atol, "rtol": rtol, "noise_factor": noise_factor, "judged_by": judged_by,
           "max_abs_diff": max(v["max_abs_diff"] for v in per.values()), "per_output": per,
           "passed": all(v["passed"] for v in per.values()), "batch": batch, "prompt_len": prompt_len,
           "decode_steps": decode_steps}
    if note:
        res["note"] = note
    if raise_on_fail and not res["passed"]:
        def line(k, v):
            s = f"{k}: max diff {v['max_abs_diff']:.3g} (tol {v['tol']:.3g})"
            if "tol_fp64" in v:
                s += (f", vs float64 {v['max_abs_diff_vs_fp64']:.3g} (PyTorch fp32 vs float64 "
                      f"{v['pt_fp32_error_vs_fp64']:.3g}, tol {v['tol_fp64']:.3g})")
            return s + ("" if v["passed"] else " FAIL")

        raise ValidationError(
            f"ONNX Runtime output differs from PyTorch by more than atol={atol:g} + rtol={rtol:g} * max|ref|"
            + (f" and by more than {noise_factor:g}x PyTorch fp32's own float64 error" if judged_by != "fp32_reference"
               else "") + ": " + "; ".join(line(k, v) for k, v in per.items())
            + (f" ({note})" if note else "")
            + ". Pass --no-validate (validate=False) to keep the export anyway, or a larger --atol."
        )
    return res


def _prompt_ids(tokenizer, prompts: Sequence[str], vocab: int, seed: int = 1) -> list[list[int]]:
    import numpy as np

    if tokenizer is not None:
        out = []
        for p in prompts:
            ids = tokenizer(p, add_special_tokens=True)["input_ids"]
            out.append(list(ids) or [0])
        return out
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=6).tolist() for _ in prompts]


def validate_generate(model, folder: Path, tokenizer=None, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
                      max_new_tokens: int = 8, tie_tol: float = 1e-3, raise_on_fail: bool = True) -> dict[str, Any]:
    """Greedy ``generate()`` through ``ORTModelForCausalLM.from_pretrained(folder)`` vs PyTorch, per prompt.

    Loading through stock optimum also checks that the folder's config works with its KV cache sizing.
    A divergence where PyTorch's top-2 logits at the first differing step are within ``tie_tol`` of each
    other is counted as a near-tie, not a failure.

    Returns:
        ``{"prompts", "max_new_tokens", "all_equal", "results": [{"prompt", "pt", "ort", "equal", "tie"}]}``.
    """
    import torch

    _require("optimum.onnxruntime", "ONNX generate validation")
    from optimum.onnxruntime import ORTModelForCausalLM

    try:
        ort_model = ORTModelForCausalLM.from_pretrained(str(folder), provider="CPUExecutionProvider")
    except Exception as exc:
        raise ValidationError(
            f"optimum's ORTModelForCausalLM cannot load the exported folder: {type(exc).__name__}: {exc}"
        ) from exc
    cfg = model.config
    pad = cfg.pad_token_id if isinstance(cfg.pad_token_id, int) else (
        cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 0)
    gen_kw = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, "pad_token_id": pad,
              "temperature": None, "top_p": None, "top_k": None}
    results = []
    for text, ids in zip(prompts, _prompt_ids(tokenizer, prompts, cfg.vocab_size)):
        x = torch.tensor([ids], dtype=torch.long)
        m = torch.ones_like(x)
        with torch.no_grad():
            pt = model.generate(input_ids=x, attention_mask=m, **gen_kw)[0].tolist()
            try:
                on = ort_model.generate(input_ids=x, attention_mask=m, **gen_kw)[0].tolist()
            except Exception as exc:
                raise ValidationError(
                    f"generate() through ORTModelForCausalLM failed: {type(exc).__name__}: {exc}"
                ) from exc
        equal = pt == on
        tie = False
        if not equal:
            n = min(len(pt), len(on))
            first = next((i for i in range(n) if pt[i] != on[i]), n)
            if first < n and first >= len(ids):
                with torch.no_grad():
                    lg = model(input_ids=torch.tensor([pt[:first]])).logits[0, -1]
                tie = float(lg[pt[first]] - lg[on[first]]) <= tie_tol
        results.append({"prompt": text, "prompt_ids": ids, "pt": pt[len(ids):], "ort": on[len(ids):],
                        "equal": equal, "tie": tie})
    ok = all(r["equal"] or r["tie"] for r in results)
    res = {"max_new_tokens": max_new_tokens, "tie_tol": tie_tol, "all_equal": all(r["equal"] for r in results),
           "passed": ok, "results": results}
    if raise_on_fail and not ok:
        bad = [r for r in results if not (r["equal"] or r["tie"])]
        raise ValidationError(
            "greedy generate() through ONNX Runtime differs from PyTorch: "
            + "; ".join(f"{r['prompt']!r}: pt={r['pt']} ort={r['ort']}" for r in bad)
        )
    return res


def validate_int8(model, onnx_path: Path, tokenizer=None, *, text: str = INT8_CHECK_TEXT, max_tokens: int = 128,
                  decode_steps: int = 8, max_rel_nll_increase: float = 0.05, min_top1_agreement: float = 0.8,
                  threads: int | None = None, raise_on_fail: bool = True) -> dict[str, Any]:
    """Looser validation of an int8 graph against the fp32 PyTorch model on a short text.

    The text (at most ``max_tokens`` tokens) is run teacher-forced through both models in one pass, then
    the second half again through the int8 graph's KV cache path (prefill of the first half, then
    ``decode_steps`` one-token steps fed with the true text). Gates:

    * relative NLL increase ``(nll_int8 - nll_fp32) / nll_fp32 <= max_rel_nll_increase`` (default 5 %),
      NLL being the mean next-token cross-entropy over the text;
    * next-token (argmax) agreement with PyTorch ``>= min_top1_agreement`` (default 0.8), over the
      full-sequence pass and the decode steps.

    The mean and max absolute logit differences are reported, not gated. If the tokenizer is None or maps
    the text to fewer than 16 distinct known ids (e.g. a toy vocabulary), seeded random ids are used
    instead (``"input": "random_ids"`` in the result).
    """
    import numpy as np
    import torch

    summ = _model_summary(model.config)
    ids, source = [], "random_ids"
    if tokenizer is not None:
        ids = list(tokenizer(text)["input_ids"])[:max_tokens]
        unk = getattr(tokenizer, "unk_token_id", None)
        # A tokenizer that maps the text to a few ids (e.g. all <unk>) would make the check meaningless.
        if len(set(ids) - {unk}) >= min(16, len(ids) // 2):
            source = "text"
    if source == "random_ids":
        ids = np.random.default_rng(2).integers(0, summ["vocab_size"], size=max_tokens).tolist()
    if len(ids) < 4:
        raise ValidationError(f"the int8 check text has only {len(ids)} tokens")
    x = np.array([ids], dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(x)).logits[0].double().numpy()
    sess = _session(onnx_path, threads)
    dec = _OrtDecoder(sess, summ["num_key_value_heads"], summ["head_dim"])
    q, _ = dec.step(x, np.ones_like(x))
    q = q[0].astype(np.float64)

    def nll(lg):
        lg = lg[:-1]
        m = lg.max(-1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
        return float(np.mean(lse - lg[np.arange(len(lg)), x[0, 1:]]))

    nll_ref, nll_q = nll(ref), nll(q)
    agree_full = float(np.mean(ref.argmax(-1) == q.argmax(-1)))
    # KV-cache path: prefill half, then decode with the true tokens.
    half = max(1, len(ids) // 2)
    steps = min(decode_steps, len(ids) - half)
    dec2 = _OrtDecoder(sess, summ["num_key_value_heads"], summ["head_dim"])
    lg, _ = dec2.step(x[:, :half], np.ones((1, half), np.int64))
    dec_agree, dec_diff = [], []
    for i in range(steps):
        pos = half + i
        lg, _ = dec2.step(x[:, pos:pos + 1], np.ones((1, pos + 1), np.int64))
        dec_agree.append(int(lg[0, -1].argmax() == ref[pos].argmax()))
        dec_diff.append(float(np.abs(lg[0, -1] - ref[pos]).mean()))
    agreement = (agree_full * len(ids) + sum(dec_agree)) / (len(ids) + len(dec_agree))
    rel = (nll_q - nll_ref) / nll_ref if nll_ref > 0 else 0.0
    res = {
        "tokens": len(ids), "input": source,
        "nll_fp32": nll_ref, "nll_int8": nll_q, "rel_nll_increase": rel,
        "max_rel_nll_increase": max_rel_nll_increase,
        "top1_agreement": agreement, "top1_agreement_full_pass": agree_full,
        "top1_agreement_decode": float(np.mean(dec_agree)) if dec_agree else None,
        "min_top1_agreement": min_top1_agreement,
        "mean_abs_logit_diff": float(np.abs(ref - q).mean()),
        "max_abs_logit_diff": float(np.abs(ref - q).max()),
        "mean_abs_logit_diff_decode": float(np.mean(dec_diff)) if dec_diff else None,
        "logit_std_fp32": float(ref.std()),
    }
    res["passed"] = rel <= max_rel_nll_increase and agreement >= min_top1_agreement
    if raise_on_fail and not res["passed"]:
        raise ValidationError(
            f"int8 graph is outside its tolerance: relative NLL increase {rel:.3%} (max "
            f"{max_rel_nll_increase:.1%}), next-token agreement {agreement:.3f} (min {min_top1_agreement}), "
            f"mean |logit diff| {res['mean_abs_logit_diff']:.3g}, max {res['max_abs_logit_diff']:.3g}. "
            f"Pass --no-validate (validate=False) to keep it anyway."
        )
    return res


# --------------------------------------------------------------------------- export


#: MatMul nodes whose name contains one of these stay fp32 under ``--int8`` (see :func:`quantize_int8`).
INT8_EXCLUDE_DEFAULT = ("down_proj",)


def quantize_int8(src: Path, dst: Path, *, per_channel: bool = True,
                  exclude: Sequence[str] = INT8_EXCLUDE_DEFAULT) -> dict[str, Any]:
    """ONNX Runtime dynamic int8 quantization of the MatMul weights of ``src`` into ``dst``.

    Weights are signed int8 (``QInt8``), symmetric, per output channel by default; activations are
    quantized per tensor at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``). MatMul nodes whose
    name contains a string of ``exclude`` stay fp32: by default the MLP ``down_proj``, whose input
    (``silu(gate) * up``) has large outlier channels. Measured on SmolLM2-135M: quantizing it too costs
    +10 % NLL and 55 % next-token agreement; keeping it fp32 gives -0.4 % NLL and 91 % agreement.

    Returns:
        the settings used, with the number of quantized and excluded MatMul nodes.
    """
    q = _require("onnxruntime.quantization", "--int8")
    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    matmuls = [n.name for n in proto.graph.node if n.op_type == "MatMul"]
    del proto
    excluded = [n for n in matmuls if any(e in n for e in exclude)]
    external = any(p.name.startswith(src.name) and p.name != src.name for p in src.parent.iterdir())
    try:
        q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                           weight_type=q.QuantType.QInt8, nodes_to_exclude=excluded,
                           use_external_data_format=external)
    except Exception as exc:
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    return {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": ["MatMul"], "weight_type": "QInt8",
            "activations": "uint8, dynamic per tensor", "per_channel": per_channel,
            "excluded_patterns": list(exclude), "excluded_nodes": len(excluded), "matmul_nodes": len(matmuls)}


def export_onnx(model_dir, out: str | os.PathLike, *, force: bool = False, validate: bool = True,
                int8: bool = False, atol: float = 1e-4, rtol: float = 1e-5, noise_factor: float = 8.0,
                opset: int | None = None, tokenizer=None, decode_steps: int = 4,
                prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 8,
                int8_max_rel_nll_increase: float = 0.05, int8_min_top1_agreement: float = 0.8,
                int8_per_channel: bool = True, int8_exclude: Sequence[str] = INT8_EXCLUDE_DEFAULT,
                threads: int | None = None) -> ExportResult:
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
        opset: ONNX opset (default: optimum's default for the architecture).
        decode_steps: decode steps checked after the prefill (default 4).
        prompts: prompts for the greedy ``generate()`` comparison (default :data:`DEFAULT_PROMPTS`).
        max_new_tokens: tokens generated per prompt in that comparison (default 8).
        int8_max_rel_nll_increase: int8 gate on the relative NLL increase over a short text (default 0.05).
        int8_min_top1_agreement: int8 gate on next-token agreement with PyTorch (default 0.8).
        int8_per_channel: per-channel weight scales for int8 (default True).
        int8_exclude: MatMul node-name substrings kept fp32 under int8 (default ``("down_proj",)``, see
            :func:`quantize_int8`).
        threads: ONNX Runtime intra-op threads for validation (default: ORT's choice).

    Checks (``validate=True``): fp32 logits/KV parity for a prefill and ``decode_steps`` cached decode steps
    (max abs diff <= ``atol + rtol * max|pt|``, float64 fallback, see :func:`validate_parity`); greedy
    ``generate()`` through ``ORTModelForCausalLM.from_pretrained(out)`` equals PyTorch's on ``prompts``. With ``int8``: fp32 parity on the intermediate fp32 graph, then
    :func:`validate_int8` on the int8 graph; generate is run and reported but not gated.

    Returns:
        :class:`ExportResult`; ``export_report.json`` in ``out`` holds the same report.

    Raises:
        ModelLoadError, UnsupportedArchitectureError, OutputExistsError, ConfigError, ExportError,
        ValidationError, DependencyMissingError.

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
    check_output_dir(out, force)
    model, tokenizer, spec = load_for_export(model_dir, tokenizer)
    _require("optimum.exporters.onnx", "ONNX export")
    _require("onnx", "ONNX export")
    from optimum.exporters.onnx import onnx_export_from_model

    report: dict[str, Any] = {
        "format": "onnx", "source": str(spec), "task": "text-generation-with-past",
        "model": _model_summary(model.config), "int8": int8, "versions": _versions(),
    }
    with atomic_output_dir(out, force) as tmp:
        report["tokenizer"] = save_tokenizer(tokenizer, tmp)
        old_name = getattr(model.config, "_name_or_path", "")
        # optimum copies preprocessors from config._name_or_path; point it at the folder we already filled
        # so it never tries the hub for a built-in or GGUF name.
        model.config._name_or_path = str(tmp)
        t0 = time.perf_counter()
        try:
            onnx_export_from_model(model, tmp, task="text-generation-with-past", opset=opset,
                                   do_validation=False, device="cpu")
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        finally:
            model.config._name_or_path = old_name
        report["export_seconds"] = time.perf_counter() - t0
        onnx_path = tmp / ONNX_FILE
        if not onnx_path.is_file():
            raise ExportError(f"the exporter wrote no {ONNX_FILE} (files: {sorted(list_files(tmp))})")
        drop_gguf_tokenizer_model(tmp)
        report["ort_config_adjustment"] = adjust_config_for_ort(tmp)
        import onnx

        proto = onnx.load(str(onnx_path), load_external_data=False)
        report["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        report["inputs"] = [i.name for i in proto.graph.input]
        report["outputs"] = [o.name for o in proto.graph.output]
        del proto
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
                                                       max_new_tokens=max_new_tokens, raise_on_fail=not int8)
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
