"""compressor.algorithm.masking: the lowest-scoring groups are masked within each KV group, masks only tighten,
ties break towards the lower index, widths may differ per layer."""
from __future__ import annotations

import torch

from compressor.algorithm.groups import ModelGroups
from compressor.algorithm.masking import MaskState, mask_lowest
from compressor.algorithm.scoring import LayerScores
from tests.tiny import layer_groups


def test_mask_lowest_ranks_within_kv_groups_and_is_monotone():
    lg = layer_groups(heads=6, kv=2, inter=8)
    groups = ModelGroups("llama", 32, (lg,))
    masks = MaskState.full(groups)
    # KV group 0 = heads 0-2, group 1 = heads 3-5; the best two of each group are kept
    sc = [LayerScores(torch.tensor([5.0, 1.0, 3.0, 0.1, 0.2, 9.0]).double(), torch.arange(8.0).double())]
    mask_lowest(masks, sc, groups, 2, 5)
    assert masks.layers[0].kept_heads() == [0, 2, 4, 5]
    assert masks.layers[0].kept_channels() == [3, 4, 5, 6, 7]
    # scores change: an already-masked channel never comes back, the new lowest kept ones go
    sc2 = [LayerScores(torch.tensor([0.0, 9.0, 0.0, 9.0, 0.0, 0.0]).double(),
                       torch.tensor([9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 0.0, 4.0]).double())]
    mask_lowest(masks, sc2, groups, 1, 3)
    assert masks.layers[0].kept_channels() == [4, 5, 7]
    assert len(masks.layers[0].kept_heads()) == 2 and set(masks.layers[0].kept_heads()) <= {0, 2, 4, 5}
    # ties break towards the lower index
    m2 = MaskState.full(groups)
    mask_lowest(m2, [LayerScores(torch.zeros(6).double(), torch.zeros(8).double())], groups, 1, 2)
    assert m2.layers[0].kept_heads() == [0, 3] and m2.layers[0].kept_channels() == [0, 1]


def test_mask_lowest_per_layer_widths():
    lgs = (layer_groups(index=0, inter=8), layer_groups(index=1, inter=8))
    groups = ModelGroups("llama", 32, lgs)
    masks = MaskState.full(groups)
    sc = [LayerScores(torch.ones(6).double(), torch.arange(8.0).double()) for _ in lgs]
    mask_lowest(masks, sc, groups, [3, 1], [8, 2])
    assert [len(m.kept_heads()) for m in masks.layers] == [6, 2]
    assert [m.kept_channels() for m in masks.layers] == [list(range(8)), [6, 7]]
