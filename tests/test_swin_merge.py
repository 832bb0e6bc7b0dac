"""ToMe on a hierarchical backbone: groups stay inside one attention window and are undone
(every member takes its group's feature) before the stage's patch merging, so no group
crosses a merge. A tiny random-weight Swin-UNet (128 px, patch 4, 4 x 4 windows: stage grids
32, 16, 8, 4)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from prune_viz.backbones.swin import SwinBackbone
from prune_viz.engine import estimate_macs, run_baseline, run_pruned
from prune_viz.flops import measure_macs
from prune_viz.methods import tome
from prune_viz.methods.base import KEPT, PRUNED, PruneContext
from prune_viz.params import make_plan, method_availability
from prune_viz.stages import downsample_full
from tests.swin_tiny import tiny_swin_unet


@pytest.fixture(scope="module")
def unet() -> SwinBackbone:
    return tiny_swin_unet(4, (), "swin_unet_merge_test")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 255, size=(100, 100, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def base(unet: SwinBackbone, image: np.ndarray):
    return run_baseline(unet, image)


def _ctx(x: torch.Tensor, grid: tuple[int, int], window: tuple[int, int] | None) -> PruneContext:
    return PruneContext(layer=1, step=0, num_steps=1, tokens=x, kept_idx=torch.arange(x.shape[0]), grid=grid,
                        patch_size=4, image=torch.zeros(3, 4 * grid[0], 4 * grid[1]), window=window)


def test_window_matching_pairs_only_within_a_window() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    for rate in (0.3, 0.5, 0.8):
        d = tome.decide(_ctx(x, (16, 16), (4, 4)), tome.ToMeParams(rate))
        win = tome.window_of(torch.arange(256), (16, 16), (4, 4))
        assert torch.equal(win[d.merge_into], win)  # every token's representative is in its window
        assert d.keep.numel() == 256 - round(rate * 256)
        assert set(d.status[d.keep].tolist()) == {KEPT} and (d.status == PRUNED).sum() == 256 - d.keep.numel()
    # One window covering the grid: the same pairs as the global matching.
    one, _ = tome.window_soft_matching(x[:64], 20, torch.zeros(64, dtype=torch.long))
    ref, _ = tome.bipartite_soft_matching(x[:64], 20)
    assert torch.equal(one, ref)
    # Windows of one token have nobody to merge with: the rounds stop instead of looping.
    into, _ = tome.window_soft_matching(x[:4], 3, torch.arange(4))
    assert torch.equal(into, torch.arange(4))
    keep, *_ = tome.merge_rounds(x[:4], torch.ones(4), 3, torch.tensor([0, 0, 1, 2]))
    assert keep.numel() == 3


def test_tome_is_offered_on_swin(unet: SwinBackbone) -> None:
    assert method_availability(unet)["tome"] is None


@torch.no_grad()
def test_rate0_equals_the_unpruned_run(unet: SwinBackbone, image: np.ndarray, base) -> None:
    trace = run_pruned(unet, image, make_plan(unet, "tome", (1, 3), values={"rate": 0.0}), baseline=base)
    assert np.array_equal(trace.seg.labels, base.seg.labels) and trace.macs["total"] == base.macs


@torch.no_grad()
def test_groups_are_undone_before_the_patch_merge(unet: SwinBackbone, image: np.ndarray, base) -> None:
    """ToMe at the last block of stage 1 (layer 2): every member takes its group's mean, then the
    rest runs unpruned on the full grid. The reference does exactly that by hand."""
    plan = make_plan(unet, "tome", (2,), values={"rate": 0.5})
    trace = run_pruned(unet, image, plan, baseline=base)
    x2 = base.x_after[2][0]
    d = tome.decide(_ctx(x2, (32, 32), (4, 4)), tome.ToMeParams(0.5))
    feats = x2.clone()
    feats[d.keep] = d.features
    x, grid, skips = feats[d.merge_into][None], (32, 32), []
    skips.append(x)
    x, grid = downsample_full(unet, 2, x, grid)
    for layer in range(3, unet.num_blocks + 1):
        x = unet.run_block(layer, x, None, grid).x
        if layer in unet.stage_ends:
            skips.append(x)
            x, grid = downsample_full(unet, layer, x, grid)
    ref = unet.decode(x, x[:, :0], base.prep, stage_outputs=skips)
    assert torch.allclose(trace.seg.token_logits, ref.token_logits, atol=1e-4)
    assert [r.tokens for r in trace.layers] == [1024, 1024, 256, 256, 64, 64, 16, 16]  # nothing saved: undone at once


@torch.no_grad()
def test_merging_inside_a_stage_saves_there_only(unet: SwinBackbone, image: np.ndarray, base) -> None:
    plan = make_plan(unet, "tome", (3,), values={"rate": 0.5})
    trace = run_pruned(unet, image, plan, baseline=base, count_decisions=True)
    assert [r.tokens for r in trace.layers] == [1024, 1024, 256, 128, 64, 64, 16, 16]
    assert trace.steps[0].status_grid.shape == (16, 16) and trace.merged_into is None
    assert (trace.stage_drop_layer[1] == 3).sum() == 128 and (trace.stage_drop_layer[2] == unet.num_blocks).all()
    assert (trace.status_at(5) == KEPT).all()  # every member is alive again at stage 3
    measured, _ = measure_macs(lambda: run_pruned(unet, image, plan, count_decisions=True))
    assert abs(measured - trace.macs["total"]) <= 0.01 * trace.macs["total"]
    assert estimate_macs(unet, base, plan)["macs"] == trace.macs["total"] - trace.macs["decision"]
    assert trace.macs["total"] - trace.macs["decision"] < base.macs
