"""Write a LLaMA-family Hugging Face model as a GGUF file for llama.cpp: metadata, tensors, tokenizer.

Architectures (``model_type`` -> llama.cpp ``general.architecture``): :data:`GGUF_ARCH`. Mistral is llama.cpp's
``llama`` (as llama.cpp's own converter writes it); its sliding window is not written (llama.cpp's ``llama``
has none), which the export report notes.

Metadata (``{arch}.*``): ``block_count``, ``context_length`` (``max_position_embeddings``),
``embedding_length``, ``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv``,
``attention.key_length`` and ``attention.value_length`` (always written: after head pruning
``head_dim != hidden_size / num_attention_heads``, which llama.cpp would otherwise assume),
``rope.dimension_count`` (= head_dim), ``rope.freq_base``, rope scaling (linear, yarn; llama3 as a
``rope_freqs`` tensor of per-frequency divisors), ``attention.layer_norm_rms_epsilon``, ``vocab_size``,
``general.file_type``; then the tokenizer (:mod:`exporters.gguf.vocab`).

Tensors (llama.cpp names, from ``gguf.TENSOR_NAMES``): ``token_embd``, ``blk.N.{attn_norm, attn_q, attn_k,
attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}``, ``output_norm`` and ``output`` (only when the
embeddings are untied; llama.cpp reuses ``token_embd`` otherwise), Qwen2's ``attn_q/k/v.bias``.

Q/K rows for ``llama``: Hugging Face stores the two rotary halves of each head apart (``rotate_half``);
llama.cpp's ``llama`` rope pairs adjacent dimensions. Within every head of ``q_proj`` (``num_attention_heads``
heads) and ``k_proj`` (``num_key_value_heads`` heads), row ``j`` of half ``h`` moves to row ``2*j + h``
(:func:`interleave_rope_rows`). Qwen2 uses llama.cpp's NEOX rope, which is HF's layout: no permutation; a head-pruned
Qwen2 is written as ``llama`` (see :func:`gguf_arch`).

Types (``--type``): ``f32`` (everything float32), ``f16`` (2-D weights float16, norms/biases float32),
``q8_0`` (2-D weights Q8_0 with gguf-py's ``quants.quantize``, norms/biases float32; a matrix whose rows are
not a multiple of the 32-value Q8_0 block is written f16 and listed in the report).

Per-layer widths (:mod:`compressor.modeling.perlayer`: different heads / KV heads / MLP widths per layer) are written as
llama.cpp's ``deci`` architecture, whose loader reads ``deci.attention.head_count``,
``deci.attention.head_count_kv`` and ``deci.feed_forward_length`` as per-layer arrays (every other key as for
``llama``; head size from ``key_length``). Its graph is llama's with each layer's own widths and the same
adjacent-pairs rope, so Q/K rows are interleaved per layer with that layer's head counts. Every layer here has
>= 1 head and >= 1 MLP channel (deci's special layers with 0 KV heads / 0 heads / 0 channels are not used).
Qwen2 sources are written as ``deci`` with their q/k/v biases (:func:`gguf_arch`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

from compressor.core.errors import ConfigError, UnsupportedArchitectureError
from compressor.modeling.sizes import ModelSizes, model_sizes, rope_theta, stock_model_type
from exporters.gguf.vocab import GGUFVocab, write_vocab

#: Hugging Face model_type -> llama.cpp architecture name.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
#: ``--type`` values -> (2-D weight type name, gguf LlamaFileType name).
GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
#: llama.cpp architecture of models with per-layer widths
PER_LAYER_ARCH = "deci"
#: config keys that must not be lists (per-layer widths are read from the per-layer config's own keys)
_SCALAR_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim")


def check_gguf_type(gguf_type: str) -> str:
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {gguf_type!r} is not valid; use one of {', '.join(GGUF_TYPES)}")
    return gguf_type


def check_exportable(config) -> tuple[str, ModelSizes]:
    """``(llama.cpp arch, sizes)`` of ``config``, or a clear error for what this exporter cannot write.

    Raises:
        UnsupportedArchitectureError: model type not in :data:`GGUF_ARCH` (or its per-layer variant); widths given
            as lists in a stock config; MLP biases;
            a rope scaling type llama.cpp's ``llama``/``qwen2`` cannot take from metadata.
    """
    mt = stock_model_type(config)
    if mt not in GGUF_ARCH:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support model_type {getattr(config, 'model_type', None)!r}; supported: "
            + ", ".join(f"{k} (llama.cpp {v})" for k, v in GGUF_ARCH.items())
            + f", and their per-layer-widths variants (llama.cpp {PER_LAYER_ARCH})")
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    lists = [k for k in _SCALAR_KEYS if isinstance(d.get(k), (list, tuple))]
    if lists:
        raise UnsupportedArchitectureError(
            f"the config has lists in {', '.join(lists)}; per-layer widths are read from a lorapress per-layer "
            f"config (model_type lorapress_*, see compressor.modeling.perlayer), whose scalars are numbers")
    sizes = model_sizes(config)
    if sizes.mlp_bias:
        raise UnsupportedArchitectureError("GGUF export does not support MLP biases (mlp_bias=True) yet")
    rope_scaling(config)  # raises on an unsupported type
    return gguf_arch(mt, sizes)[0], sizes


def gguf_arch(model_type: str, sizes: ModelSizes) -> tuple[str, str | None]:
    """``(llama.cpp architecture, note)``: :data:`GGUF_ARCH`, except a head-pruned Qwen2.

    llama.cpp's ``qwen2`` requires ``attn_q`` to be ``hidden x hidden`` (``heads * head_dim == hidden``). A
    head-pruned Qwen2 is the same network as a LLaMA with q/k/v biases, which llama.cpp's ``llama`` loads
    (optional ``attn_q/k/v.bias``, explicit ``key_length``): it is written as ``llama``, Q/K rows (and biases)
    interleaved for llama's rope, and the note says so.
    """
    if not sizes.uniform:
        return PER_LAYER_ARCH, (f"per-layer widths: written as llama.cpp's {PER_LAYER_ARCH!r} architecture "
                                f"(per-layer head_count, head_count_kv and feed_forward_length arrays)")
    arch = GGUF_ARCH[model_type]
    if arch == "qwen2" and sizes.heads * sizes.head_dim != sizes.hidden:
        return "llama", (f"written as llama.cpp's 'llama' architecture: its 'qwen2' needs heads*head_dim == hidden, "
                         f"this head-pruned model has {sizes.heads}*{sizes.head_dim} != {sizes.hidden}")
    return arch, None


def rope_scaling(config) -> dict[str, Any] | None:
    """The config's rope scaling as ``{"type", "factor", ...}``, None without one: ``rope_parameters``
    (transformers 5, which also holds ``rope_theta``, left out here) or ``rope_scaling`` (transformers 4).

    Raises:
        UnsupportedArchitectureError: a type other than linear, yarn, llama3 (or default).
    """
    rs = getattr(config, "rope_parameters", None)
    if not isinstance(rs, dict):
        rs = getattr(config, "rope_scaling", None)
    if not isinstance(rs, dict):
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in ("linear", "yarn", "llama3"):
        raise UnsupportedArchitectureError(
            f"GGUF export does not support rope_scaling type {kind!r}; supported: linear, yarn, llama3")
    return {"type": kind, **{k: v for k, v in rs.items() if k not in ("rope_type", "type", "rope_theta")}}


def llama3_rope_factors(config, head_dim: int):
    """Per-frequency divisors for llama3 rope scaling (llama.cpp's ``rope_freqs``): ``freq_i / factor_i`` is the
    scaled frequency transformers' ``_compute_llama3_parameters`` uses."""
    import numpy as np

    rs = rope_scaling(config) or {}
    base = rope_theta(config)
    factor = float(rs["factor"])
    lo, hi = float(rs.get("low_freq_factor", 1.0)), float(rs.get("high_freq_factor", 4.0))
    old = float(rs.get("original_max_position_embeddings", 8192))
    lo_wave, hi_wave = old / lo, old / hi
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wave = 2 * math.pi / freq
        if wave < hi_wave:
            out.append(1.0)
        elif wave > lo_wave:
            out.append(factor)
        else:
            smooth = (old / wave - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def interleave_rope_rows(w, n_heads: int):
    """Reorder the rows of a q/k projection (``[n_heads*head_dim, ...]`` or a bias) from HF's rotate-half layout
    to llama.cpp's adjacent-pairs layout, per head (see module docstring)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _name(key: str, bid: int | None = None) -> str:
    import gguf

    t = getattr(gguf.MODEL_TENSOR, key)
    base = gguf.TENSOR_NAMES[t]
    return base.format(bid=bid) if bid is not None else base


def gguf_tensors(model, arch: str, sizes: ModelSizes) -> Iterator[tuple[str, Any]]:
    """``(llama.cpp tensor name, float32 numpy array)`` for every tensor of ``model``, in file order."""
    import torch

    sd = model.state_dict()
    used: set[str] = set()

    def get(key: str):
        used.add(key)
        return sd[key].detach().to(torch.float32).cpu().numpy()

    yield _name("TOKEN_EMBD") + ".weight", get("model.embed_tokens.weight")
    rs = rope_scaling(model.config)
    if rs and rs["type"] == "llama3":
        yield _name("ROPE_FREQS") + ".weight", llama3_rope_factors(model.config, sizes.head_dim)
    permute = arch in ("llama", PER_LAYER_ARCH)
    for i in range(sizes.layers):
        p = f"model.layers.{i}."
        yield _name("ATTN_NORM", i) + ".weight", get(p + "input_layernorm.weight")
        for key, proj, heads in (("ATTN_Q", "q_proj", sizes.layer_heads[i]),
                                 ("ATTN_K", "k_proj", sizes.layer_kv_heads[i]), ("ATTN_V", "v_proj", None)):
            for part in ("weight", "bias"):
                k = p + f"self_attn.{proj}.{part}"
                if k not in sd:
                    continue
                t = get(k)
                if permute and heads is not None:
                    t = interleave_rope_rows(t, heads)
                yield _name(key, i) + "." + part, t
        for part in ("weight", "bias"):
            k = p + f"self_attn.o_proj.{part}"
            if k in sd:
                yield _name("ATTN_OUT", i) + "." + part, get(k)
        yield _name("FFN_NORM", i) + ".weight", get(p + "post_attention_layernorm.weight")
        for key, proj in (("FFN_GATE", "gate_proj"), ("FFN_UP", "up_proj"), ("FFN_DOWN", "down_proj")):
            yield _name(key, i) + ".weight", get(p + f"mlp.{proj}.weight")
    yield _name("OUTPUT_NORM") + ".weight", get("model.norm.weight")
    if not sizes.tied:
        yield _name("OUTPUT") + ".weight", get("lm_head.weight")
    else:
        used.add("lm_head.weight")
    left = sorted(k for k in sd if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if left:
        raise UnsupportedArchitectureError(f"GGUF export has no llama.cpp tensor for {', '.join(left[:8])}")


def _encode(arr, weight_type: str, gguf):
    """``(data, raw_dtype or None, written type name)`` for one tensor."""
    import numpy as np

    if arr.ndim < 2 or weight_type == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32), None, "F32"
    if weight_type == "F16":
        return np.ascontiguousarray(arr, dtype=np.float16), None, "F16"
    qt = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[qt][0]
    if arr.shape[-1] % block:
        return np.ascontiguousarray(arr, dtype=np.float16), None, "F16"
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qt), qt, "Q8_0"


def write_gguf(model, vocab: GGUFVocab, path: str | os.PathLike, gguf_type: str, *, name: str | None = None
               ) -> dict[str, Any]:
    """Write ``model`` (float32 HF llama/mistral/qwen2) and ``vocab`` to ``path`` as a GGUF file.

    Returns:
        ``{"architecture", "type", "metadata": {key: value}, "tensors": n, "tensor_types": {type: n},
        "f16_fallback": [names], "notes": [...]}``.
    """
    import gguf

    check_gguf_type(gguf_type)
    cfg = model.config
    arch, s = check_exportable(cfg)
    weight_type, file_type = GGUF_TYPES[gguf_type]
    w = gguf.GGUFWriter(str(path), arch)
    per_layer = arch == PER_LAYER_ARCH
    ff: Any = list(s.layer_intermediate) if per_layer else s.intermediate
    heads: Any = list(s.layer_heads) if per_layer else s.heads
    kv: Any = list(s.layer_kv_heads) if per_layer else s.kv_heads
    meta: dict[str, Any] = {
        "block_count": s.layers, "context_length": int(getattr(cfg, "max_position_embeddings", 2048)),
        "embedding_length": s.hidden, "feed_forward_length": ff, "attention.head_count": heads,
        "attention.head_count_kv": kv, "attention.key_length": s.head_dim,
        "attention.value_length": s.head_dim, "rope.dimension_count": s.head_dim,
        "rope.freq_base": rope_theta(cfg),
        "attention.layer_norm_rms_epsilon": float(getattr(cfg, "rms_norm_eps", 1e-6)), "vocab_size": s.vocab,
    }
    if name:
        w.add_name(name)
    w.add_block_count(meta["block_count"])
    w.add_context_length(meta["context_length"])
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(meta["rope.freq_base"])
    w.add_layer_norm_rms_eps(meta["attention.layer_norm_rms_epsilon"])
    w.add_vocab_size(s.vocab)
    w.add_file_type(int(getattr(gguf.LlamaFileType, file_type)))
    rs = rope_scaling(cfg)
    notes = [n for n in (gguf_arch(s.model_type or "", s)[1],) if n]
    if rs and rs["type"] in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if rs["type"] == "linear" else gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rs["factor"]))
        meta["rope.scaling.type"], meta["rope.scaling.factor"] = rs["type"], float(rs["factor"])
        if rs["type"] == "yarn" and rs.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
            meta["rope.scaling.original_context_length"] = int(rs["original_max_position_embeddings"])
    elif rs:
        meta["rope_freqs"] = "llama3 factors as the rope_freqs tensor"
    window = getattr(cfg, "sliding_window", None)
    if s.model_type == "mistral" and isinstance(window, int) and window < meta["context_length"]:
        notes.append(f"sliding_window={window} is not written: llama.cpp's llama architecture attends to the whole "
                     f"context, so outputs differ from PyTorch beyond {window} tokens")
    write_vocab(w, vocab)
    types: dict[str, int] = {}
    fallback = []
    n = 0
    for tname, arr in gguf_tensors(model, arch, s):
        data, raw, written = _encode(arr, weight_type, gguf)
        if raw is not None:
            w.add_tensor(tname, data, raw_shape=data.shape, raw_dtype=raw)
        else:
            w.add_tensor(tname, data)
        if written != weight_type and arr.ndim >= 2:
            fallback.append(tname)
        types[written] = types.get(written, 0) + 1
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": arch, "type": gguf_type, "metadata": {f"{arch}.{k}": v for k, v in meta.items()},
            "tensors": n, "tensor_types": types, "f16_fallback": fallback, "notes": notes}
