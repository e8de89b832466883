"""Model plumbing shared by the evaluators: device, context length, one logits call for torch and ORT models."""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any


def torch_module():
    import torch

    return torch


def model_device(model: Any):
    torch = torch_module()
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    dev = getattr(model, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return name in params


def forward_logits(model: Any, input_ids, attention_mask=None, logits_to_keep: int = 0):
    """Call any HF-style causal LM (torch module or ORTModelForCausalLM) and return float32 logits."""
    torch = torch_module()
    kwargs: dict[str, Any] = {"input_ids": input_ids}
    kwargs["attention_mask"] = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    if isinstance(model, torch.nn.Module) and accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if logits_to_keep and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = logits_to_keep
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(logits)
    if logits_to_keep and logits.shape[1] > logits_to_keep:
        logits = logits[:, -logits_to_keep:]
    return logits.float()


class EvalMode:
    """Context manager: model.eval() + inference mode; restores the training flag afterwards."""

    def __init__(self, model: Any):
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self):
        torch = torch_module()
        if hasattr(self.model, "eval"):
            self.model.eval()
        self._ctx = torch.inference_mode()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        if self.was_training and hasattr(self.model, "train"):
            self.model.train()
        return False


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)
