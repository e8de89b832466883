"""compressor.algorithm.groups: the head / KV-group / MLP-channel groups of each decoder layer, read from the
model and its config; a layer that does not fit is named."""
from __future__ import annotations

import pytest
import torch

from compressor.algorithm.groups import decoder_layers, discover_groups
from compressor.core.errors import GroupDiscoveryError
from tests.tiny import CASES, tiny_model

CASE_NAMES = list(CASES)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_groups_match_config(case):
    m = tiny_model(case)
    g = discover_groups(m)
    _, heads, kv, hd, hidden, inter = CASES[case]
    assert g.num_layers == 2 and g.hidden_size == hidden
    for lg in g.layers:
        assert (lg.num_heads, lg.num_kv_heads, lg.head_dim, lg.intermediate_size) == (heads, kv, hd, inter)


def test_groups_error_names_layer():
    m = tiny_model("llama-mha")
    layer = decoder_layers(m)[1]
    layer.mlp.up_proj = torch.nn.Linear(32, 40, bias=False)
    with pytest.raises(GroupDiscoveryError, match="layer 1 up_proj"):
        discover_groups(m)
