"""Physical slicing of linear layers (rows = output features, columns = input features)."""
from __future__ import annotations

import torch
from torch import nn


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.to(dtype))
        if bias is not None:
            lin.bias.copy_(bias.to(dtype))
    return lin


def slice_rows(weight: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor):
    keep = keep.to(weight.device)  # masks live on the CPU, weights where the model runs
    return weight.index_select(0, keep).contiguous(), None if bias is None else bias.index_select(0, keep).contiguous()


def slice_cols(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return weight.index_select(1, keep.to(weight.device)).contiguous()

