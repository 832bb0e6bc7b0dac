"""Swin adapter: rate-0 exactness against timm, subset blocks against a masked full block, MACs
against FlopCounterMode, the merged-token aliveness rule, and the engine end to end across stages.

A small Swin is built directly (128 px, patch 4, 4 x 4 windows: stage grids 32, 16, 8, 4; stages
1-3 have shifted blocks, stage 4's window covers its whole grid so timm turns its shift off)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from timm.models.swin_transformer import SwinTransformer, window_partition, window_reverse

from prune_viz.analysis import analyze
from prune_viz.backbones import TIMM_SWIN, check_backbone_name, input_size_for
from prune_viz.backbones.swin import SwinBackbone, merged_alive
from prune_viz.engine import estimate_macs, run_baseline, run_pruned
from prune_viz.errors import ParamError
from prune_viz.flops import measure_macs
from prune_viz.params import make_plan, method_availability
from prune_viz.ui.charts import charts
from prune_viz.ui.inspect import forced_plan, inspect_token
from prune_viz.ui.tables import metrics_rows
from prune_viz.ui.views import token_map_view
from tests.swin_tiny import tiny_swin_unet


@pytest.fixture(scope="module")
def swin() -> SwinBackbone:
    torch.manual_seed(0)
    enc = SwinTransformer(img_size=128, patch_size=4, embed_dim=32, depths=(2, 2, 4, 2), num_heads=(2, 2, 4, 4),
                          window_size=4, num_classes=0)
    return SwinBackbone(enc, "timm:swin_test")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(96, 120, 3), dtype=np.uint8)


def _masked_block(block, x: torch.Tensor, alive: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's block arithmetic on the full grid with pruned tokens removed as keys (-inf): what
    the subset path must give for the kept tokens. x: 1 x N x C; alive: N bool. Returns the
    block output 1 x N x C and, per token, the attention it received (mean over heads and the
    alive queries of its window)."""
    gh, gw = grid
    c = x.shape[-1]
    a = block.window_area
    s, ws = block.shift_size, block.window_size
    y = torch.roll(block.norm1(x).reshape(1, gh, gw, c), (-s[0], -s[1]), (1, 2))
    live = torch.roll(alive.reshape(1, gh, gw, 1).float(), (-s[0], -s[1]), (1, 2))
    yw, lw = window_partition(y, ws).reshape(-1, a, c), window_partition(live, ws).reshape(-1, a)
    attn = block.attn
    q, k, v = attn.qkv(yw).reshape(yw.shape[0], a, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    scores = (q * attn.scale) @ k.transpose(-2, -1) + attn._get_rel_pos_bias()
    if block.attn_mask is not None:
        scores = scores + block.attn_mask[:, None]
    scores = scores.masked_fill(lw[:, None, None, :] == 0, float("-inf"))
    probs = scores.softmax(-1)  # windows x heads x A x A
    o = attn.proj((probs @ v).transpose(1, 2).reshape(yw.shape[0], a, -1))
    o = torch.roll(window_reverse(o.reshape(-1, ws[0], ws[1], c), ws, gh, gw), s, (1, 2)).reshape(1, gh * gw, c)
    recv = (probs * lw[:, None, :, None]).sum(dim=(1, 2)) / (attn.num_heads * lw.sum(1, keepdim=True))
    recv = torch.roll(window_reverse(recv.reshape(-1, ws[0], ws[1], 1), ws, gh, gw), s, (1, 2)).reshape(gh * gw)
    out = x + o
    return out + block.mlp(block.norm2(out)), recv


@torch.no_grad()
def test_rate0_matches_timm_forward(swin: SwinBackbone, image: np.ndarray) -> None:
    prep = swin.prepare(image)
    ref = swin.encoder.forward_features(prep.pixels)  # 1 x 4 x 4 x C, after the final norm
    stock = copy.deepcopy(swin.encoder)  # timm's default (unfused) attention path, as built
    for module in stock.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    assert torch.allclose(stock.forward_features(prep.pixels), ref, atol=1e-4)
    base = run_baseline(swin, image)
    assert torch.allclose(swin.encoder.norm(base.x_after[-1]).reshape(ref.shape), ref, atol=1e-4)
    # The subset code path with every token kept, through every stage and merge.
    plan = make_plan(swin, "random", (1,), values={"rate": 0.0})
    trace = run_pruned(swin, image, plan)
    assert np.array_equal(trace.seg.labels, base.seg.labels)
    assert [r.tokens for r in trace.layers] == [r.tokens for r in base.layers] == [1024] * 2 + [256] * 2 + [64] * 4 + [16] * 2
    assert trace.macs["total"] == base.macs
    x, grid = swin.embed(prep), prep.grid
    for layer in range(1, swin.num_blocks + 1):
        x = swin.run_block(layer, x, torch.arange(grid[0] * grid[1]), grid).x
        if layer in swin.stage_ends:
            x, _, grid = swin.downsample(layer, x, torch.ones(x.shape[1], dtype=torch.bool), grid)
    assert torch.allclose(swin.encoder.norm(x).reshape(ref.shape), ref, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("layer", [1, 2, 4, 10])  # unshifted, shifted, shifted at stage 2, stage 4 (no shift)
def test_subset_block_matches_masked_full_block(swin: SwinBackbone, layer: int) -> None:
    grid = swin.grid_at(layer, (32, 32))
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(layer)
    x = torch.randn(1, n, swin.dim_at(layer), generator=g)
    kept = torch.sort(torch.randperm(n, generator=g)[: n // 2]).values
    alive = torch.zeros(n, dtype=torch.bool)
    alive[kept] = True
    block = swin._block(layer)
    assert any(block.shift_size) == (layer in (2, 4))
    out = swin.run_block(layer, x[:, kept], kept, grid, want_attn=True)
    ref, received = _masked_block(block, x, alive, grid)
    assert torch.allclose(out.x, ref[:, kept], atol=1e-5)
    assert torch.allclose(out.received, received[kept], atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("layer", [1, 2, 4])  # unshifted, shifted, shifted at stage 2
def test_fully_kept_windows_take_the_stock_path_beside_partial_ones(swin: SwinBackbone, layer: int) -> None:
    """Half the windows keep every token, the others 1, 7 (pads to 8), 9 and 15 of 16 (pads to
    16, the window area, but must not join the full windows' batch): exact against the masked
    full block, and the MACs formula (full windows at ws^2 pairs, no padding) against the counter."""
    from prune_viz.backbones.swin_attention import window_layout

    grid = swin.grid_at(layer, (32, 32))
    n = grid[0] * grid[1]
    block = swin._block(layer)
    ws, sh = tuple(block.window_size), tuple(block.shift_size)
    g = torch.Generator().manual_seed(10 + layer)
    # Window membership as the block sees it (after the shift), then pick per window.
    pos = torch.arange(n)
    win = window_layout(pos, grid, ws, sh)
    r, c = torch.remainder(pos // grid[1] - sh[0], grid[0]), torch.remainder(pos % grid[1] - sh[1], grid[1])
    wid = (r // ws[0]) * (grid[1] // ws[1]) + c // ws[1]
    nw, area = int(win.counts.numel()), ws[0] * ws[1]
    keep_n = [area if w % 2 == 0 else (1, 7, 9, 15)[(w // 2) % 4] for w in range(nw)]
    alive = torch.zeros(n, dtype=torch.bool)
    for w in range(nw):
        members = pos[wid == w]
        alive[members[torch.randperm(area, generator=g)[: keep_n[w]]]] = True
    kept = torch.nonzero(alive).flatten()
    lay = window_layout(kept, grid, ws, sh)
    full = [b for b in lay.buckets if b.full]
    assert len(full) == 1 and full[0].m == nw // 2 and full[0].slot is None
    assert any(b.p == area and not b.full for b in lay.buckets)  # 15 of 16 pads to the area, apart
    x = torch.randn(1, n, swin.dim_at(layer), generator=g)
    out = swin.run_block(layer, x[:, kept], kept, grid, want_attn=True)
    ref, received = _masked_block(block, x, alive, grid)
    assert torch.allclose(out.x, ref[:, kept], atol=1e-5)
    assert torch.allclose(out.received, received[kept], atol=1e-6)
    measured, _ = measure_macs(lambda: swin.run_block(layer, x[:, kept], kept, grid))
    analytic = swin.block_macs(layer, kept, grid)
    assert abs(measured - analytic) <= 0.01 * analytic, (measured, analytic)
    # Full windows cost exactly the stock block's share: ws^2 pairs each.
    pairs = sum(min(area, -(-k // 8) * 8) ** 2 for k in keep_n)
    assert int((lay.padded * lay.padded).sum()) == pairs


@torch.no_grad()
@pytest.mark.parametrize("layer", [2, 3, 6, 9])
def test_block_macs_match_flop_counter(swin: SwinBackbone, layer: int) -> None:
    grid = swin.grid_at(layer, (32, 32))
    n = grid[0] * grid[1]
    x = torch.randn(1, n, swin.dim_at(layer))
    kept = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(1))[: (2 * n) // 3]).values
    for idx, xs in ((None, x), (kept, x[:, kept])):
        measured, _ = measure_macs(lambda: swin.run_block(layer, xs, idx, grid))
        analytic = swin.block_macs(layer, idx, grid)
        assert abs(measured - analytic) <= 0.01 * analytic, (layer, idx is None, measured, analytic)


def test_merged_token_alive_if_any_child_was() -> None:
    alive = torch.zeros(4, 4, dtype=torch.bool)
    alive[0, 1] = True  # one child of the top-left group
    alive[2:, 2:] = True  # the whole bottom-right group
    alive[3, 0] = True  # one child of the bottom-left group
    merged = merged_alive(alive.flatten(), (4, 4)).view(2, 2)
    assert merged.tolist() == [[True, False], [True, True]]


@torch.no_grad()
def test_pruning_at_a_stage_end_carries_into_the_next_stage(swin: SwinBackbone, image: np.ndarray) -> None:
    base = run_baseline(swin, image)
    plan = make_plan(swin, "random", (4,), values={"rate": 0.8})
    trace = run_pruned(swin, image, plan, baseline=base)
    kept = trace.kept_per_step[0]  # on the 16 x 16 stage-2 grid
    alive = torch.zeros(256, dtype=torch.bool)
    alive[kept] = True
    expected = int(merged_alive(alive, (16, 16)).sum())
    assert trace.layers[4].tokens == expected < 64  # block 5 runs on the merged alive tokens only
    assert trace.layers[4].grid == (8, 8) and trace.steps[0].status_grid.shape == (16, 16)
    assert [d.shape for d in trace.stage_drop_layer] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert trace.status_at(5).shape == (8, 8) and trace.drop_layer.shape == (32, 32)
    # Same run without the prefix cache: same tokens, same segmentation, same MACs.
    fresh = run_pruned(swin, image, plan)
    assert np.array_equal(fresh.seg.labels, trace.seg.labels) and fresh.macs == trace.macs
    measured, _ = measure_macs(lambda: run_pruned(swin, image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * trace.macs["total"]
    assert estimate_macs(swin, base, plan)["macs"] == trace.macs["total"] - trace.macs["decision"]


@torch.no_grad()
@pytest.mark.parametrize("method,layers", [("random", (2, 5)), ("evit", (3,)), ("lvtp", (3,)), ("lvtp", (6,))])
def test_methods_run_on_swin(swin: SwinBackbone, image: np.ndarray, method: str, layers: tuple[int, ...]) -> None:
    base = run_baseline(swin, image, attn_layers=layers[:1])
    trace = run_pruned(swin, image, make_plan(swin, method, layers), baseline=base)
    assert trace.macs["total"] - trace.macs["decision"] < base.macs
    for step in trace.steps:
        grid = swin.grid_at(step.layer, (32, 32))
        assert step.status_grid.shape == grid and step.tokens_kept < step.tokens_in
    assert trace.layers[-1].grid == (4, 4)


def test_merging_runs_within_a_stage(swin: SwinBackbone, image: np.ndarray) -> None:
    trace = run_pruned(swin, image, make_plan(swin, "tome", (3,), values={"rate": 0.5}))
    assert [r.tokens for r in trace.layers[2:5]] == [256, 128, 64]  # groups undone before the merge (tests/test_swin_merge.py)


def test_views_and_report_name_stages(swin: SwinBackbone, image: np.ndarray) -> None:
    analysis = analyze(swin, image, make_plan(swin, "random", (4,)))
    stages = analysis.report["stages"]
    assert [s["grid"] for s in stages] == [[32, 32], [16, 16], [8, 8], [4, 4]]
    kept = analysis.trace.steps[0].tokens_kept
    assert stages[0]["frozen_share"] == 0.0 and stages[1]["frozen_share"] == pytest.approx(1 - kept / 256)
    assert analysis.report["layers"][6]["grid"] == [8, 8]
    rows = {r[0] for r in metrics_rows(analysis)}
    assert "  stage 3 (blocks 5-8, 8 x 8 grid)" in rows and "  patch merging" in rows
    tokens, _, cumulative = charts(analysis)
    assert tokens["data"][1]["y"] == [1024] * 2 + [256] * 2 + [64] * 4 + [16] * 2  # unpruned, per stage grid
    assert abs(cumulative["data"][0]["y"][-1] - analysis.baseline.macs / 1e9) < 1e-3
    drawn, caption = token_map_view(analysis, 6, swin.num_blocks, swin.patch_size)
    assert "stage 3, block 2" in caption and "8 x 8 grid" in caption
    assert drawn.shape[0] >= 128
    # The inspector takes input-grid (row, col) and reads the stage token that holds it.
    step = analysis.trace.steps[0]
    r, c = (int(v[0]) for v in np.nonzero(step.status_grid == 2))  # a token pruned at layer 4 (16 x 16 grid)
    info = inspect_token(analysis, 2 * r + 1, 2 * c)
    assert "random removed" in info.rule and "pruned" in info.rule
    plan = forced_plan(make_plan(swin, "random", (4,)), analysis.trace, 2 * r + 1, 2 * c, keep=True)
    assert plan.overrides == ((4, (r * 16 + c,), ()),)
    forced = run_pruned(swin, image, plan, baseline=analysis.baseline)
    assert forced.steps[0].status_grid[r, c] == 0


def test_registry_sends_swin_names_to_the_swin_adapter() -> None:
    assert check_backbone_name("timm:swin_tiny_patch4_window7_224") is TIMM_SWIN
    assert check_backbone_name("timm:vit_tiny_patch16_224") is not TIMM_SWIN
    assert input_size_for("timm:swin_tiny_patch4_window7_224", None) == 512


@pytest.fixture(scope="module")
def unet() -> SwinBackbone:
    return tiny_swin_unet(1, (2, 4), "swin_unet_test")


@torch.no_grad()
def test_swin_unet_decoder_gets_every_stage(unet: SwinBackbone, image: np.ndarray) -> None:
    base = run_baseline(unet, image)
    assert base.seg.kind == "semantic" and unet.aux_layers == (2, 4) and unet.num_classes == 3
    prep = base.prep
    x, feats = unet.encoder.patch_embed(prep.pixels), []
    for stage in unet.encoder.layers:
        x = stage.blocks(stage.downsample(x))
        feats.append(x.permute(0, 3, 1, 2))
    ref = unet.decoder(feats)[0].flatten(1).T  # N x K on the stage-1 grid
    assert torch.allclose(base.seg.token_logits, ref, atol=1e-4)
    plan = make_plan(unet, "random", (4,), values={"rate": 0.0})
    assert np.array_equal(run_pruned(unet, image, plan, baseline=base).seg.labels, base.seg.labels)
    plan = make_plan(unet, "matp", (4,))
    trace = run_pruned(unet, image, plan, baseline=base)
    measured, _ = measure_macs(lambda: run_pruned(unet, image, plan))
    assert trace.macs["aux_heads"] > 0 and abs(measured - trace.macs["total"]) <= 0.01 * trace.macs["total"]
    assert method_availability(unet)["dtop"] is None and method_availability(unet)["tome"] is None
    assert not method_availability(unet)["matp"]


def test_demo_swin_is_registered_and_labelled() -> None:
    from prune_viz.backbones import build_backbone, describe, facts_of
    from prune_viz.ui.choices import layer_choices, layer_slider_info

    built = build_backbone("demo_swin", random_weights=True)
    assert isinstance(built, SwinBackbone) and built.input_size == 512 and built.stage_ends == (2, 4, 8)
    assert built.aux_layers == (2, 4, 6, 8) and built.num_classes == 7 and built.decoder is not None
    facts = describe("demo_swin")  # from the weights when they are here, else from the config
    assert facts.stage_ends == facts_of(built).stage_ends == (2, 4, 8) and facts.num_blocks == 10
    labels = dict((v, k) for k, v in layer_choices(facts))
    assert labels[3] == "3 (stage 2, block 1)" and labels[4] == "4 (stage 2, block 2, aux head)"
    assert "stage 3: 5-8" in layer_slider_info(facts)
    with pytest.raises(ParamError, match="512 px"):
        build_backbone("demo_swin", input_size=256, random_weights=True)
