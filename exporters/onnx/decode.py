"""Prefill + cached decode loops of a PyTorch model and an ONNX Runtime session, and their comparison.

Both sides return ``{output name: [2-D float64 arrays]}`` with the same names (``prefill.logits``,
``prefill.present.key/value``, ``decode.logits``, ``decode.present.key/value``), holding only the valid
(unpadded) positions, so :func:`max_abs` compares them directly.
"""
from __future__ import annotations

from exporters.onnx.torch_export import cache_tensors


def kv_layout(session) -> tuple[list[str], list[str], dict[str, tuple]]:
    """Past input names, present output names and past input shapes (with str for symbolic dims)."""
    past_in = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    present_out = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    shapes = {i.name: tuple(i.shape) for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    return past_in, present_out, shapes


class OrtDecoder:
    """Minimal ONNX Runtime decoder loop: prefill then decode steps with its own KV cache."""

    def __init__(self, session, num_kv_heads: int, head_dim: int):
        import numpy as np

        self.np = np
        self.s = session
        self.inputs = {i.name for i in session.get_inputs()}
        self.past_in, self.present_out, _ = kv_layout(session)
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


def pt_run(model, ids, mask, steps: int, forced=None, *, index_positions: bool = False, offset: int = 0):
    """PyTorch prefill + ``steps`` greedy decode steps (or the ``forced`` tokens); returns (outputs, tokens).

    Positions count the unpadded tokens (what a graph with a ``position_ids`` input is fed), plus ``offset``;
    ``index_positions=True`` uses the index in the padded sequence instead, as a graph without that input
    (optimum's gemma exports) computes them from the cache length. RoPE is relative, so logits agree either
    way; the cached keys (rotated by absolute position) only agree with the same positions.
    """
    import numpy as np
    import torch

    outs: dict[str, list] = {}
    tokens = []
    with torch.no_grad():
        if index_positions:
            pos = np.broadcast_to(np.arange(mask.shape[1], dtype=np.int64), mask.shape).copy() + offset
        else:
            pos = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1) + offset
        o = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  position_ids=torch.from_numpy(pos), use_cache=True)
        cache, valid = o.past_key_values, mask.astype(bool)
        _collect(outs, "prefill.logits", o.logits.numpy(), valid)
        n_layers = model.config.num_hidden_layers
        for i in range(n_layers):
            k, v = cache_tensors(cache, i)
            _collect(outs, "prefill.present.key", k.numpy(), valid)
            _collect(outs, "prefill.present.value", v.numpy(), valid)
        logits = o.logits
        for step in range(steps):
            nxt = forced[step] if forced is not None else logits[:, -1, :].argmax(-1, keepdim=True).numpy()
            tokens.append(nxt)
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
            if index_positions:
                pos = np.full((mask.shape[0], 1), mask.shape[1] - 1 + offset, np.int64)
            else:
                pos = (np.cumsum(mask, axis=1) - 1)[:, -1:] + offset
            o = model(input_ids=torch.from_numpy(nxt), attention_mask=torch.from_numpy(mask),
                      position_ids=torch.from_numpy(pos), past_key_values=cache, use_cache=True)
            cache, logits = o.past_key_values, o.logits
            _collect(outs, "decode.logits", logits.numpy(), None)
        if steps:
            valid = mask.astype(bool)
            for i in range(n_layers):
                k, v = cache_tensors(cache, i)
                _collect(outs, "decode.present.key", k.numpy(), valid)
                _collect(outs, "decode.present.value", v.numpy(), valid)
    return outs, tokens


def ort_run(dec: OrtDecoder, ids, mask, tokens):
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


def max_abs(a: dict, b: dict) -> dict[str, tuple[float, float]]:
    """name -> (max |a - b|, max |b|) over all arrays of that output."""
    import numpy as np

    out = {}
    for name, refs in b.items():  # np.max propagates NaN, so a NaN anywhere fails the comparison that follows
        d = np.max([np.abs(x - y).max() if x.size else 0.0 for x, y in zip(a[name], refs)])
        r = np.max([np.abs(y).max() if y.size else 0.0 for y in refs])
        out[name] = (float(d), float(r))
    return out

