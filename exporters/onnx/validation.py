"""Validation of an exported fp32 graph against PyTorch: logits/KV parity and greedy ``generate()``.

* fp32 parity (:func:`validate_parity`): logits and KV cache, prefill + 4 cached decode steps, per output
  ``max|ort - pt| <= 1e-4 + 1e-5 * max|pt|``; if that fails, a float64 PyTorch run decides whether the
  difference is float32 rounding noise (ORT within ``noise_factor``, default 8x, of PyTorch fp32's own error)
  or a real mismatch.
* greedy generation == PyTorch's greedy ``generate()`` on a few prompts (:func:`validate_generate`): through
  stock optimum's ``ORTModelForCausalLM.from_pretrained(out)`` where ``optimum.onnxruntime`` imports (which also
  proves the folder loads there), else a greedy loop with the KV cache over ``model.onnx`` in plain ONNX Runtime.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from compressor.core.errors import ConfigError, ExportError, ValidationError
from compressor.core.optional import require
from compressor.core.ort import ort_session
from compressor.modeling.sizes import model_sizes
from exporters.onnx.decode import OrtDecoder, max_abs, ort_run, pt_run

#: Name of the ONNX graph inside an exported folder (optimum's standard name; re-exported by :mod:`exporters.onnx.export`).
ONNX_FILE = "model.onnx"

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, a small cat",
    "def add(a, b):",
)


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
                    raise_on_fail: bool = True, left_pad: bool = True) -> dict[str, Any]:
    """Compare ONNX Runtime and PyTorch logits and KV cache for a prefill and ``decode_steps`` decode steps.

    The prefill is a batch of ``batch`` random sequences of ``prompt_len`` tokens, the second one
    left-padded by 3 tokens (only unpadded positions are compared; ``left_pad=False`` keeps every row whole,
    for graphs whose attention takes no padding inside a sequence, e.g. ``GroupQueryAttention``). Each decode step feeds both models the
    PyTorch greedy token; each side keeps its own cache. A graph with no ``position_ids`` input (gemma family)
    numbers positions by index, padding included; the PyTorch reference then does the same.

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
        left_pad: left-pad the second row (default True).

    Returns:
        ``{"atol", "rtol", "max_abs_diff", "judged_by", "per_output": {name: {"max_abs_diff", "max_abs_ref",
        "tol", "passed", ...}}, "passed"}``; names are ``prefill.logits``, ``prefill.present.key/value``
        (max over layers), ``decode.logits``, ``decode.present.key/value`` (max over steps and layers).

    Example:
        >>> validate_parity(model, Path("out/model.onnx"))["passed"]        # doctest: +SKIP
        True
    """
    import numpy as np

    sizes = model_sizes(model.config)
    window = _sliding_window(model.config)
    if window and prompt_len + decode_steps > window - 1:
        # PyTorch's sliding-window cache keeps only the last ``window - 1`` positions, the exported graph's
        # cache keeps all: compare within the window, where both caches hold the same positions.
        decode_steps = min(decode_steps, max(1, (window - 1) // 3))
        prompt_len = max(1, window - 1 - decode_steps)
    sess = ort_session(onnx_path, threads=threads, what="ONNX validation", load_error=ExportError)
    dec = OrtDecoder(sess, sizes.kv_heads, sizes.head_dim)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, sizes.vocab, size=(batch, prompt_len), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1 and left_pad:
        npad = min(3, prompt_len - 1)
        mask[1, :npad] = 0
        pad = model.config.pad_token_id
        ids[1, :npad] = pad if isinstance(pad, int) else 0

    # a graph without a position_ids input (optimum's gemma exports) numbers positions by index, padding included
    index_positions = "position_ids" not in dec.inputs
    pt, tokens = pt_run(model, ids, mask, decode_steps, index_positions=index_positions)
    got = ort_run(dec, ids, mask, tokens)
    per = {}
    for name, (d, ref) in max_abs(got, pt).items():
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
                o, _ = pt_run(m64, ids[r:r + 1, keep], np.ones((1, int(keep.sum())), np.int64), decode_steps,
                               forced=[t[r:r + 1] for t in tokens],
                               offset=int((~keep).sum()) if index_positions else 0)
                rows.append(o)
            del m64
            ref64 = {k: [np.concatenate([row[k][i] for row in rows], axis=0) for i in range(len(rows[0][k]))]
                     for k in rows[0]}
            d_ort, d_pt = max_abs(got, ref64), max_abs(pt, ref64)
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
           "decode_steps": decode_steps, "left_padded_row": bool(batch > 1 and left_pad)}
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


#: ``validate_generate(runner=...)`` values
GENERATE_RUNNERS = ("auto", "optimum", "onnxruntime")


def _optimum_ort_model():
    """``(optimum's ORTModelForCausalLM class, None)``, or ``(None, why)`` when ``optimum.onnxruntime`` does not
    import."""
    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except Exception as exc:  # noqa: BLE001 - not installed, or installed beside a transformers it cannot import with
        return None, f"{type(exc).__name__}: {exc}"
    return ORTModelForCausalLM, None


def _eos_ids(model) -> set[int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class _OrtGreedy:
    """Greedy generation over an exported folder's ``model.onnx`` in plain ONNX Runtime, with its KV cache
    (:class:`exporters.onnx.decode.OrtDecoder`): argmax of the last position, stop after ``max_new_tokens`` or an EOS."""

    def __init__(self, model, folder: Path, threads: int | None):
        sizes = model_sizes(model.config)
        self.session = ort_session(Path(folder) / ONNX_FILE, threads=threads, what="ONNX generate validation",
                                   load_error=ValidationError)
        self.kv_heads, self.head_dim = sizes.kv_heads, sizes.head_dim
        self.eos = _eos_ids(model)

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        import numpy as np

        dec = OrtDecoder(self.session, self.kv_heads, self.head_dim)
        mask = np.ones((1, len(ids)), np.int64)
        logits, _ = dec.step(np.asarray([ids], np.int64), mask)
        out = list(ids)
        for i in range(max_new_tokens):
            nxt = int(np.argmax(logits[0, -1]))
            out.append(nxt)
            if nxt in self.eos or i == max_new_tokens - 1:
                break
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            logits, _ = dec.step(np.asarray([[nxt]], np.int64), mask)
        return out


@contextlib.contextmanager
def _plain_greedy(model, pad: int, eos: set[int]) -> Iterator[None]:
    """Inside the block ``model.generate()`` is plain greedy decoding, stopping at ``eos``, as the ONNX Runtime loop
    of :class:`_OrtGreedy`: the model's own generation config, whose processors (repetition penalty, minimum
    length, suppressed tokens, ...) would change the argmax, is set aside (transformers fills every option left
    unset in a given config from it)."""
    from transformers import GenerationConfig

    old = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=pad, eos_token_id=sorted(eos) or None,
                                               bos_token_id=getattr(old, "bos_token_id", None))
    try:
        yield
    finally:
        model.generation_config = old


def validate_generate(model, folder: Path, tokenizer=None, *, prompts: Sequence[str] = DEFAULT_PROMPTS,
                      max_new_tokens: int = 8, tie_tol: float = 1e-3, raise_on_fail: bool = True,
                      runner: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Greedy generation from the exported ``folder`` vs PyTorch's greedy ``generate()``, per prompt.

    ``runner``: ``"optimum"`` runs ``generate()`` of stock optimum's ``ORTModelForCausalLM.from_pretrained(folder)``,
    which also checks that the folder's config works with its KV cache sizing (:mod:`exporters.onnx.ort_config`);
    ``"onnxruntime"`` runs a greedy loop with the KV cache over ``folder/model.onnx`` in plain ONNX Runtime
    (``threads`` intra-op threads) against plain greedy ``generate()`` (argmax, stop at EOS; the model's own
    generation config is set aside for it, see :func:`_plain_greedy`);
    ``"auto"`` (default): ``"optimum"`` where ``optimum.onnxruntime`` imports, else ``"onnxruntime"``.
    A divergence where PyTorch's top-2 logits at the first differing step are within ``tie_tol`` of each
    other is counted as a near-tie, not a failure.

    Returns:
        ``{"runner", "max_new_tokens", "tie_tol", "all_equal", "passed", "results": [{"prompt", "prompt_ids",
        "pt", "ort", "equal", "tie"}]}`` (with ``"optimum_unavailable"``, the import error, when ``"auto"`` fell
        back to ONNX Runtime).

    Raises:
        ConfigError: unknown ``runner``.
        DependencyMissingError: ``runner="optimum"`` and optimum cannot be imported.
        ValidationError: the folder does not load, generation fails, or (``raise_on_fail``) tokens differ.
    """
    import torch

    if runner not in GENERATE_RUNNERS:
        raise ConfigError(f"runner {runner!r} is not valid; use one of {', '.join(GENERATE_RUNNERS)}")
    ort_cls, why = (None, None) if runner == "onnxruntime" else _optimum_ort_model()
    if runner == "optimum" and ort_cls is None:
        require("optimum.onnxruntime", "ONNX generate validation through optimum (runner='optimum')")
    used = "optimum" if ort_cls is not None else "onnxruntime"
    cfg = model.config
    pad = cfg.pad_token_id if isinstance(cfg.pad_token_id, int) else (
        cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else 0)
    gen_kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1,
                              "pad_token_id": pad, "temperature": None, "top_p": None, "top_k": None}
    if ort_cls is not None:
        try:
            ort_model = ort_cls.from_pretrained(str(folder), provider="CPUExecutionProvider")
        except Exception as exc:
            raise ValidationError(
                f"optimum's ORTModelForCausalLM cannot load the exported folder: {type(exc).__name__}: {exc}"
            ) from exc

        def run_ort(x, m, ids):
            return ort_model.generate(input_ids=x, attention_mask=m, **gen_kw)[0].tolist()
    else:
        greedy = _OrtGreedy(model, folder, threads)

        def run_ort(x, m, ids):
            return greedy.generate(ids, max_new_tokens)
    results = []
    for text, ids in zip(prompts, _prompt_ids(tokenizer, prompts, cfg.vocab_size)):
        x = torch.tensor([ids], dtype=torch.long)
        m = torch.ones_like(x)
        with torch.no_grad():
            if used == "optimum":
                pt = model.generate(input_ids=x, attention_mask=m, **gen_kw)[0].tolist()
            else:
                with _plain_greedy(model, pad, greedy.eos):
                    pt = model.generate(input_ids=x, attention_mask=m, **gen_kw)[0].tolist()
            try:
                on = run_ort(x, m, ids)
            except Exception as exc:
                where = "ORTModelForCausalLM" if used == "optimum" else "ONNX Runtime"
                raise ValidationError(
                    f"generate() through {where} failed: {type(exc).__name__}: {exc}"
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
    res = {"runner": used, "max_new_tokens": max_new_tokens, "tie_tol": tie_tol,
           "all_equal": all(r["equal"] for r in results), "passed": ok, "results": results}
    if why is not None and runner == "auto":
        res["optimum_unavailable"] = why
    if raise_on_fail and not ok:
        bad = [r for r in results if not (r["equal"] or r["tie"])]
        raise ValidationError(
            f"greedy generation through {'ORTModelForCausalLM' if used == 'optimum' else 'ONNX Runtime'} differs "
            "from PyTorch: " + "; ".join(f"{r['prompt']!r}: pt={r['pt']} ort={r['ort']}" for r in bad)
        )
    return res
