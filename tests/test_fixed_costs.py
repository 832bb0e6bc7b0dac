"""Fixed costs on the timed path made cheaper without changing a value (issue #12): the demo
decoder's one-call upsampling and the remembered per-block linear MACs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prune_viz.backbones import build_backbone, demo
from prune_viz.flops import attention_core_macs, linear_macs


@pytest.mark.parametrize("out_hw", [(64, 64), (61, 90)])
def test_one_call_upsampling_gives_the_class_by_class_labels(out_hw, monkeypatch):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 16, 16, generator=g) * 3
    logits[:, :, :3, :3] = 0.5  # ties: the lowest class wins either way
    one_call = demo.logits_to_labels(logits, out_hw)
    monkeypatch.setattr(demo, "ONE_CALL_BYTES", 0)  # force the class-by-class path
    by_class = demo.logits_to_labels(logits, out_hw)
    assert one_call.dtype == by_class.dtype == np.int32
    assert np.array_equal(one_call, by_class)


def test_block_macs_remembered_per_block_are_the_counted_ones():
    bb = build_backbone("demo")
    for layer in (1, 6, 12):
        block = bb.model.blocks[layer - 1]
        attn_dim = block.attn.num_heads * block.attn.head_dim
        for kept in (None, torch.arange(37)):
            n = bb.num_prefix_tokens + (32 * 32 if kept is None else kept.numel())
            expected = linear_macs(block, n) + attention_core_macs(n, n, attn_dim)
            assert bb.block_macs(layer, kept, (32, 32)) == expected
