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


def test_demo_prepare_is_channels_first_in_memory_with_the_same_outputs(monkeypatch):
    """The contiguous input gives bit-identical pixels, decisions and labels to the permuted view
    it replaced (the patch embedding's conv sees another memory layout)."""
    from prune_viz.backbones.base import Prepared
    from prune_viz.backbones.vit import resize_rgb
    from prune_viz.engine import run_pruned
    from prune_viz.io import load_image
    from prune_viz.params import make_plan

    def permuted(self, image):  # the previous prepare
        s = self.cfg.img_size
        image01 = torch.from_numpy(np.ascontiguousarray(resize_rgb(image, s, s))).permute(2, 0, 1).float().div_(255.0)
        return Prepared((image01[None] - self.mean).div_(self.std), image01, (s // 16, s // 16), (s, s), image.shape[:2])

    bb = build_backbone("demo_matp")
    image = load_image("examples/parking.png").rgb
    prep = bb.prepare(image)
    assert prep.pixels.is_contiguous() and prep.image01.is_contiguous()
    assert torch.equal(prep.pixels, permuted(bb, image).pixels)
    plan = make_plan(bb, "matp", None, 0, {})
    new = run_pruned(bb, image, plan, diagnostics=False)
    monkeypatch.setattr(type(bb), "prepare", permuted)
    old = run_pruned(bb, image, plan, diagnostics=False)
    assert np.array_equal(new.seg.labels, old.seg.labels) and torch.equal(new.seg.token_logits, old.seg.token_logits)
    assert all(torch.equal(a, b) for a, b in zip(new.kept_per_step, old.kept_per_step, strict=True))
