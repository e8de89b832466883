"""An exported ONNX folder as a causal LM for evaluation, in plain ONNX Runtime (no optimum).

``compress eval`` on a folder written by ``compress export --format onnx`` loads it with optimum's
``ORTModelForCausalLM`` where ``optimum.onnxruntime`` imports, else with :class:`OrtCausalLM`: the folder's
``model.onnx`` in an ``onnxruntime.InferenceSession`` with an empty KV cache, called like a Hugging Face model
(``model(input_ids=..., attention_mask=...).logits``), which is all perplexity and lm-eval's log-likelihood
scoring ask of it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compressor.core.errors import ModelLoadError

#: the graph inside an exported folder
ONNX_FILE = "model.onnx"


class OrtCausalLM:
    """The decoder graph of an exported ONNX folder, called like a causal LM (one forward, no cache reuse).

    Attributes:
        config: the folder's ``config.json`` as a transformers config.
        session: the ``onnxruntime.InferenceSession``.
        device: ``cpu`` (feeds and logits are CPU tensors).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, provider: str = "cpu"):
        from transformers import AutoConfig

        from compressor.core.ort import ort_session

        self.folder = Path(folder)
        self.session = ort_session(self.folder / ONNX_FILE, provider=provider, threads=threads,
                                   what="evaluating an ONNX folder")
        self.config = AutoConfig.from_pretrained(str(self.folder))
        self.name_or_path = str(self.folder)
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        for i in self._past:
            if not (isinstance(i.shape[1], int) and isinstance(i.shape[3], int)):
                raise ModelLoadError(f"{str(self.folder)!r}: the graph's {i.name} has no fixed KV heads / head_dim "
                                     f"({i.shape}); re-export it with `compress export --format onnx`")
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "position_ids", "use_cache_branch"} - {
            i.name for i in self._past}
        if unknown or "input_ids" not in self._inputs:
            raise ModelLoadError(f"{str(self.folder)!r}: the graph's inputs {sorted(self._inputs)} are not those of "
                                 f"`compress export --format onnx` (input_ids, attention_mask, position_ids, "
                                 f"past_key_values.*)")

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        """Logits of ``input_ids`` (B, T) with ``attention_mask`` (default all ones), as ``out.logits``."""
        import numpy as np
        import torch
        from transformers.modeling_outputs import CausalLMOutput

        ids = np.asarray(input_ids.detach().cpu() if hasattr(input_ids, "detach") else input_ids, dtype=np.int64)
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = np.asarray(attention_mask.detach().cpu() if hasattr(attention_mask, "detach") else attention_mask,
                              dtype=np.int64)
        feed: dict[str, Any] = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1).astype(np.int64)
        if "use_cache_branch" in self._inputs:
            feed["use_cache_branch"] = np.array([False])
        for i in self._past:
            feed[i.name] = np.zeros((ids.shape[0], i.shape[1], 0, i.shape[3]), np.float32)
        logits = self.session.run(["logits"], feed)[0]
        out: Any = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))  # FloatTensor in 4.57's hints
        return CausalLMOutput(logits=out)

    __call__ = forward

    # what lm-eval's HFLM calls on a model instance
    def eval(self) -> OrtCausalLM:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OrtCausalLM:
        return self

    def tie_weights(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"OrtCausalLM({str(self.folder)!r})"
