"""The timed path: view-only diagnostics stay out of it, decisions do not depend on it, and
``--repeat`` timings are interleaved and come with their spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prune_viz import analysis, engine
from prune_viz.analysis import analyze, time_forwards
from prune_viz.backbones.demo import DemoBackbone, DemoConfig, DemoSegmenter
from prune_viz.engine import Plan, run_pruned
from prune_viz.methods import METHODS, dtop, lvtp
from prune_viz.methods.base import Decision, MethodSpec, decision_from_keep_mask
from prune_viz.methods.baselines import RateParams
from prune_viz.methods.dtop import DToPParams
from prune_viz.methods.lvtp import LVTPParams
from prune_viz.methods.matp import MATPParams


@pytest.fixture(scope="module")
def demo() -> DemoBackbone:
    torch.manual_seed(0)
    cfg = DemoConfig(classes=("a", "b", "c"), palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), img_size=128, depth=4,
                     aux_layers=(1, 2))
    return DemoBackbone(DemoSegmenter(cfg).eval())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)


def plans() -> list[Plan]:
    return [
        Plan(METHODS["random"], RateParams(0.5), (1, 2)),
        Plan(METHODS["evit"], RateParams(0.5), (1, 2)),
        Plan(METHODS["lvtp"], LVTPParams(k=4), (1,)),
        Plan(METHODS["lvtp"], LVTPParams(k=4, entropy="shannon", second="simple"), (1, 2)),
        Plan(METHODS["dtop"], DToPParams(threshold=0.4, k=1), (1, 2)),
        Plan(METHODS["matp"], MATPParams(alpha=1.0), (1, 2)),
    ]


def _refuse(*args, **kwargs):
    raise AssertionError("a view-only diagnostic was computed on the timed path")


def test_timed_pruned_forward_does_not_compute_view_only_diagnostics(demo, image, monkeypatch):
    """analyze --repeat and the Metrics timing run the pruned forward with diagnostics=False:
    no diagnostic maps, no DToP entropy, no LVTP Sobel map unless the decision uses it, and no
    Tsallis scales when the score is Shannon's."""
    seen: list[bool] = []

    def spy(ctx, params) -> Decision:
        seen.append(ctx.want_diagnostics)
        mask = torch.ones(ctx.tokens.shape[0], dtype=torch.bool)
        mask[::2] = False
        decision = decision_from_keep_mask(mask)
        if ctx.want_diagnostics:
            decision.diagnostics["costly_map"] = ctx.tokens.norm(dim=-1)
        return decision

    spy_plan = Plan(MethodSpec("spy", RateParams, spy, "records what it was asked"), RateParams(), (1,))
    monkeypatch.setattr(engine, "_diagnostics_to_maps", _refuse)
    for plan in plans() + [spy_plan]:
        with monkeypatch.context() as m:
            if plan.method.name == "dtop":  # MATP's score does use the entropy
                m.setattr(dtop, "prediction_entropy", _refuse)
            if plan.method.name == "lvtp" and plan.params.second != "sobel":
                m.setattr(lvtp, "sobel_magnitude", _refuse)
            if plan.method.name == "lvtp" and plan.params.entropy != "mtsallis":
                m.setattr(lvtp, "multiscale_tsallis", _refuse)
            timing = time_forwards(demo, image, plan, repeat=2)
        assert timing["interleaved"] and timing["repeat"] == 2
        assert len(timing["baseline"]["runs"]) == len(timing["pruned"]["runs"]) == 2
    assert seen and not any(seen)
    trace = run_pruned(demo, image, spy_plan, diagnostics=False)
    assert all(step.diagnostics == {} for step in trace.steps)


def test_decisions_do_not_depend_on_diagnostics(demo, image):
    for plan in plans():
        with_maps = run_pruned(demo, image, plan)
        without = run_pruned(demo, image, plan, diagnostics=False)
        assert with_maps.steps and all(s.diagnostics for s in with_maps.steps) or plan.method.name == "random"
        for a, b in zip(with_maps.steps, without.steps):
            assert np.array_equal(a.status_grid, b.status_grid)
        assert np.array_equal(with_maps.seg.labels, without.seg.labels)
        assert with_maps.macs == without.macs


def test_repeat_interleaves_and_reports_spread_and_efficiency(demo, image, monkeypatch):
    order: list[str] = []
    real_base, real_pruned = analysis.run_baseline, analysis.run_pruned

    def base(*a, **k):
        order.append("u")
        return real_base(*a, **k)

    def pruned(*a, **k):
        if k.get("diagnostics") is False:
            order.append("p")
        return real_pruned(*a, **k)

    monkeypatch.setattr(analysis, "run_baseline", base)
    monkeypatch.setattr(analysis, "run_pruned", pruned)
    result = analyze(demo, image, Plan(METHODS["random"], RateParams(0.5), (1,)), repeat=3)
    timed = [c for c in order if c in "up"][-8:]  # warm-up pair, then 3 rounds, order alternating
    assert timed == ["u", "p", "u", "p", "p", "u", "u", "p"]
    lat = result.report["latency_ms"]
    assert lat["repeat"] == 3 and lat["interleaved"]
    for name in ("baseline", "pruned", "speedup"):
        s = lat["spread"][name]
        assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"] and len(s["runs"]) == 3
    assert lat["baseline"] == lat["spread"]["baseline"]["median"]
    assert lat["mac_ratio"] == pytest.approx(result.report["macs"]["baseline"] / result.report["macs"]["pruned"])
    assert lat["efficiency"] == pytest.approx(lat["speedup"] / lat["mac_ratio"])


def test_cheap_class_attention_equals_the_full_map(tiny_timm, rgb_image):
    """With a class token, EViT's statistics compute only the class token's attention row; it
    equals that row of the full map, and the counted MACs follow."""
    from prune_viz.backbones.vit import attention_statistics
    from prune_viz.flops import measure_macs

    prep = tiny_timm.prepare(rgb_image)
    x = tiny_timm.embed(prep)
    block = tiny_timm.model.blocks[0]
    with torch.no_grad():
        received_none, cls_attn = attention_statistics(block, x, 1, True)
        received, none = attention_statistics(block, x, 1, False)
        attn = block.attn
        y = block.norm1(x)
        qkv = attn.qkv(y).reshape(1, x.shape[1], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        full = ((qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1).mean(1)[0]
    assert received_none is None and none is None
    assert torch.allclose(cls_attn, full[0, 1:], atol=1e-6)
    assert torch.allclose(received, full[:, 1:].mean(0), atol=1e-6)
    measured, _ = measure_macs(lambda: tiny_timm.run_block(1, x, None, prep.grid, want_attn=True))
    assert measured == tiny_timm.block_macs(1, None, prep.grid, want_attn=True)


def test_metrics_timing_is_same_request_median_of_three(demo, image, tmp_path, monkeypatch):
    """The Metrics tab's times: unpruned and pruned timed together in one call (3 rounds each,
    interleaved), from the cached prefix; or no time and the reason."""
    import cv2

    from prune_viz.params import make_plan
    from prune_viz.ui import session as session_mod
    from prune_viz.ui.session import Session
    from prune_viz.ui.tables import metrics_rows

    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image)
    session = Session()
    session.set_image(str(path), "scene.png")
    key = ("demo", None)
    plan = make_plan(demo, "random", "1", 0, {"rate": 0.5})
    analysis = session.run(demo, key, plan)
    assert any(row[1] == "timing…" for row in metrics_rows(analysis))
    timing = session.time_last_run(demo, key)
    assert timing["same_request"] and timing["from_cache"] and timing["first_layer"] == 1
    assert len(timing["baseline"]["runs"]) == len(timing["pruned"]["runs"]) == len(timing["speedup"]["runs"]) == 3
    rows = {row[0]: row for row in metrics_rows(analysis, None, timing)}
    assert {"Wall time, unpruned (measured)", "Wall time, pruned (measured)", "Speedup (measured)"} <= set(rows)
    assert "(analytic)" in " ".join(rows)  # MACs say what they are
    monkeypatch.setattr(session_mod, "TIMING_BUDGET_MS", 0.0)
    skipped = session.time_last_run(demo, key)
    assert "would take" in skipped["skipped"]
    assert {row[1] for row in metrics_rows(analysis, None, skipped)} >= {"not measured"}


def test_sam_rate_zero_saving_is_the_engines_not_pruning(rgb_image):
    """SAM's subset path skips pad queries of windowed blocks even at rate 0: the report and the
    readout show it on its own line, and the pruning saving is measured against that path."""
    from prune_viz.backbones.sam import SamBackbone
    from prune_viz.backbones.sam_variants import _build_sam_model
    from prune_viz.ui.tables import metrics_rows, readout_markdown, report_summary

    torch.manual_seed(0)
    sam = SamBackbone(_build_sam_model(embed_dim=96, depth=4, num_heads=3, global_attn_indexes=(1, 3), img_size=256),
                      "sam_tiny", points_per_side=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        at_zero = analyze(sam, rgb_image, Plan(METHODS["random"], RateParams(0.0), (1,)))
        at_half = analyze(sam, rgb_image, Plan(METHODS["random"], RateParams(0.5), (1,)))
    finally:
        torch.set_num_threads(before)
    m = at_zero.report["macs"]
    assert m["engine_delta_pct"] < -1.0  # 16 x 16 grid in 14 px windows: many pad queries
    assert m["pruning_delta_pct"] == 0.0 and m["delta_pct"] == pytest.approx(m["engine_delta_pct"])
    assert m["subset_rate0"] == m["pruned"] < m["baseline"]
    readout = readout_markdown(report_summary(at_zero), "exact")
    assert f"engine: pad queries skipped, **−{-m['engine_delta_pct']:.1f} %**" in readout
    assert "pruning: **+0.0 %**" in readout
    rows = {row[0].strip(): row[1] for row in metrics_rows(at_zero)}
    assert rows["engine: pad queries skipped"] == f"{m['engine_delta_pct']:+.1f} %" and rows["pruning"] == "+0.0 %"
    h = at_half.report["macs"]
    assert h["subset_rate0"] == m["subset_rate0"] and h["pruning_delta_pct"] < 0
    assert h["pruning_delta_pct"] == pytest.approx(100 * (h["pruned"] - h["subset_rate0"]) / h["subset_rate0"])


def test_no_engine_line_without_windows(demo, image):
    from prune_viz.ui.tables import readout_markdown, report_summary

    result = analyze(demo, image, Plan(METHODS["random"], RateParams(0.5), (1,)))
    assert result.report["macs"]["engine_delta_pct"] == 0.0
    assert "pad queries" not in readout_markdown(report_summary(result), "exact")


def test_argmax_channels_equals_torch_argmax():
    from prune_viz.backbones.base import argmax_channels

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, 48, generator=g)
    x[3, :10] = x[1, :10] = 5.0  # ties: the first maximum wins
    x[:, 20, 20] = 1.0
    assert torch.equal(argmax_channels(x), x.argmax(0))
    assert torch.equal(argmax_channels(x[:1]), torch.zeros(64, 48, dtype=torch.long))
