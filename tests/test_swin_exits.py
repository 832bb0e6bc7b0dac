"""Early exits (DToP, ``exit``) on a hierarchical backbone: a tiny random-weight Swin-UNet with
aux heads at the ends of stages 1, 2 and 3 (layers 2, 4, 6; stage grids 32, 16, 8, 4 at 128 px,
patch 4), so exits happen on three grids and cross two patch merges."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prune_viz.backbones.swin import SwinBackbone
from prune_viz.engine import estimate_macs, run_baseline, run_pruned
from prune_viz.exits import Exits, cells_of
from prune_viz.flops import measure_macs
from prune_viz.methods.base import EXITED, KEPT
from prune_viz.methods.dtop import confidence
from prune_viz.params import make_plan, method_availability
from tests.swin_tiny import tiny_swin_unet


@pytest.fixture(scope="module")
def unet() -> SwinBackbone:
    # a sharper head at layer 4, so one threshold lets tokens exit at both 2 and 4
    return tiny_swin_unet(2, (2, 4, 6), "swin_unet_exit_test", aux_gain={4: 4.0})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, size=(90, 124, 3), dtype=np.uint8)  # not square: the decoder stretches


@pytest.fixture(scope="module")
def base(unet: SwinBackbone, image: np.ndarray):
    return run_baseline(unet, image)


def _aux_at(unet: SwinBackbone, base, layer: int) -> torch.Tensor:
    """The aux head at ``layer`` on the unpruned features: N_s x K."""
    return unet.aux_logits(layer, base.x_after[layer][0])[..., 0]


def _pixels(values: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """N x K on ``grid`` -> K x H x W, nearest-neighbour."""
    return F.interpolate(values.T.reshape(1, -1, *grid).float(), size=hw, mode="nearest")[0]


def test_dtop_is_offered_on_swin_with_aux_heads(unet: SwinBackbone) -> None:
    available = method_availability(unet)
    assert available["dtop"] is None and available["exit"] is None


@torch.no_grad()
def test_nothing_exits_equals_the_unpruned_run(unet: SwinBackbone, image: np.ndarray, base) -> None:
    plan = make_plan(unet, "dtop", (2, 4, 6), values={"threshold": 1.0})
    trace = run_pruned(unet, image, plan, baseline=base)
    assert all((s.status_grid == KEPT).all() for s in trace.steps)  # precondition: random heads are never saturated
    assert not trace.exited.any() and np.array_equal(trace.seg.labels, base.seg.labels)
    assert torch.allclose(trace.seg.token_logits, base.seg.token_logits, atol=1e-4)
    assert trace.macs["total"] == base.macs + trace.macs["aux_heads"] and trace.macs["aux_heads"] > 0


@torch.no_grad()
@pytest.mark.parametrize("layer", [2, 4, 6])
def test_everything_exiting_at_a_layer_gives_its_aux_argmax(unet: SwinBackbone, image: np.ndarray, base, layer: int) -> None:
    plan = make_plan(unet, "exit", (layer,))
    trace = run_pruned(unet, image, plan, baseline=base)
    grid = unet.grid_at(layer, base.prep.grid)
    expected = _pixels(_aux_at(unet, base, layer), grid, base.prep.orig_hw).argmax(0).numpy()
    assert np.array_equal(trace.seg.labels, expected)
    assert trace.exited.all() and (trace.drop_layer == layer).all()
    assert trace.steps[0].status_grid.shape == grid and (trace.steps[0].status_grid == EXITED).all()
    assert all(r.tokens == 0 for r in trace.layers[layer:])  # nothing is computed after the exit
    assert [r.grid for r in trace.layers] == [(32, 32)] * 2 + [(16, 16)] * 2 + [(8, 8)] * 2 + [(4, 4)] * 2
    stage = unet.stage_of(layer)
    assert (trace.status_at(layer + 1) == EXITED).all() and trace.status_at(layer + 1).shape == (32 >> (stage + 1),) * 2
    measured, _ = measure_macs(lambda: run_pruned(unet, image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * trace.macs["total"]
    assert trace.macs["aux_heads"] == unet.aux_macs(layer, grid[0] * grid[1])
    assert estimate_macs(unet, base, plan)["macs"] == trace.macs["total"]


@torch.no_grad()
def test_exits_at_several_stages_carry_across_merges(unet: SwinBackbone, image: np.ndarray, base) -> None:
    conf2, _, _ = confidence(_aux_at(unet, base, 2))
    threshold = float(conf2.quantile(0.6))  # about 40 % of stage 1 exits at layer 2
    plan = make_plan(unet, "dtop", (2, 4), values={"threshold": threshold, "k": 0})
    trace = run_pruned(unet, image, plan, baseline=base)
    s2, s4 = (torch.from_numpy(s.status_grid == EXITED) for s in trace.steps)
    assert s2.shape == (32, 32) and s4.shape == (16, 16) and s2.any() and s4.any()
    # Layer-4 exits on the stage-1 grid: each stage-2 token covers 2 x 2 cells.
    s4_cells = s4.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert np.array_equal(trace.exited, (s2 | s4_cells).numpy())
    # The earliest exit wins: cells exited at 2 keep layer 2 even where their parent exited at 4.
    assert (s2 & s4_cells).any()
    assert np.array_equal(trace.drop_layer[s2.numpy()], np.full(int(s2.sum()), 2))
    assert (trace.drop_layer[(s4_cells & ~s2).numpy()] == 4).all()
    # Layer-2 exits keep the layer-2 head's prediction, down to pixels.
    cell_px = _pixels(torch.arange(32 * 32)[:, None].float(), (32, 32), base.prep.orig_hw)[0].long()
    at2 = s2.flatten()[cell_px]
    aux2 = _pixels(_aux_at(unet, base, 2), (32, 32), base.prep.orig_hw).argmax(0)
    assert np.array_equal(trace.seg.labels[at2.numpy()], aux2[at2].numpy())
    # A stage-2 token that exited gives its 4 cells one prediction; pixels never exited keep the decoder's.
    only4 = (s4_cells & ~s2).flatten()
    logits = trace.seg.token_logits.reshape(16, 2, 16, 2, -1)
    spread = (logits.amax(dim=(1, 3)) - logits.amin(dim=(1, 3))).abs().amax(-1)  # 16 x 16
    assert (spread[s4 & ~s2.reshape(16, 2, 16, 2).any(3).any(1)] < 1e-6).all() and only4.any()
    # A merged token is frozen only when its 4 children all left (exited or pruned).
    kept4 = torch.from_numpy(trace.steps[1].status_grid == KEPT)
    assert trace.layers[4].tokens == int(kept4.reshape(8, 2, 8, 2).any(3).any(1).sum())
    assert trace.status_at(5).shape == (8, 8)
    measured, _ = measure_macs(lambda: run_pruned(unet, image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * trace.macs["total"]
    fresh = run_pruned(unet, image, plan)
    assert np.array_equal(fresh.seg.labels, trace.seg.labels) and fresh.macs == trace.macs


def test_exits_on_a_coarse_grid_fill_their_cells_and_keep_earlier_ones() -> None:
    assert cells_of(torch.tensor([0, 3]), (2, 2), 2).tolist() == [[0, 1, 4, 5], [10, 11, 14, 15]]
    exits = Exits.none((4, 4))
    exits.add(2, torch.tensor([0]), torch.tensor([[[1.0], [0.0]]]), (4, 4))  # cell 0 exits at layer 2
    exits.add(4, torch.tensor([0]), torch.tensor([[[0.0], [5.0]]]), (2, 2))  # its parent at layer 4
    assert exits.mask.tolist() == [True, True, False, False, True, True] + [False] * 10
    assert exits.layer[[0, 1, 4, 5]].tolist() == [2, 4, 4, 4]
    assert exits.logits[0, :, 0].tolist() == [1.0, 0.0] and exits.logits[5, :, 0].tolist() == [0.0, 5.0]
