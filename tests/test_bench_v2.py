"""Bench v2: CI code on known distributions, budgets by interpolation, decision MACs in rows,
the baselines (exit@L, lowres), LVTP's literal Eq. 4, and a tiny suite end to end."""

import csv
import json

import numpy as np
import pytest
import torch

from prune_viz import stats
from prune_viz.cli import main
from prune_viz.metrics import ConfusionMatrix


# ------------------------------------------------------------------------------------ stats


def test_bootstrap_ci_of_a_mean_matches_the_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.1, size=400)
    mean, lo, hi = stats.bootstrap_ci(x, n_boot=4000, seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))  # ~0.0098
    assert lo < mean < hi and abs((hi - lo) / 2 - half) < 0.15 * half
    assert abs((lo + hi) / 2 - mean) < 0.2 * half


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for t in range(200):
        x = rng.exponential(1.0, size=60)  # skewed, true mean 1
        _, lo, hi = stats.bootstrap_ci(x, n_boot=500, seed=t)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def _cm(pred, gt, k=3):
    cm = ConfusionMatrix(k)
    cm.update(np.asarray(pred), np.asarray(gt))
    return cm.mat


def test_split_miou_and_its_replicates():
    a = _cm([[0, 1], [2, 2]], [[0, 1], [2, 1]])
    b = _cm([[0, 0], [1, 2]], [[0, 1], [1, 2]])
    cms = np.stack([a, b, a, b])[None]  # 1 seed x 4 scenes
    total = ConfusionMatrix(3)
    total.mat = cms[0].sum(0)
    counts = stats.resample_counts(4, 300, seed=0)
    point, samples = stats.point_and_samples(cms, counts)
    assert point == pytest.approx(total.miou()) and samples.shape == (300,)
    same = np.stack([a] * 5)[None]
    p2, s2 = stats.point_and_samples(same, stats.resample_counts(5, 50))
    assert np.allclose(s2, p2)  # identical scenes: no spread
    # Two seeds are averaged inside each replicate.
    p3, _ = stats.point_and_samples(np.stack([same[0], np.stack([b] * 5)]), stats.resample_counts(5, 10))
    assert p3 == pytest.approx((stats.miou_of_cms(a) + stats.miou_of_cms(b)) / 2)


def _pt(red, miou):
    return stats.CurvePoint(red, miou, np.full(20, miou), latency_ms=100.0 - red, label=f"{red}")


def test_budgets_interpolate_or_say_unreachable():
    curve = [_pt(10, 0.9), _pt(40, 0.8), _pt(60, 0.6)]
    v = stats.at_budget(curve, 50)
    assert v.reached and v.miou == pytest.approx(0.7) and v.ci_low == pytest.approx(0.7) and v.latency_ms == pytest.approx(50)
    assert stats.at_budget(curve, 40).miou == pytest.approx(0.8)
    assert not stats.at_budget(curve, 70).reached  # no point saves that much
    cheap = stats.at_budget([_pt(73.5, 0.85)], 30)  # every point saves more: a lower bound
    assert cheap.reached and cheap.miou == 0.85 and cheap.how.startswith("cheaper point")
    assert stats.area_under_curve([_pt(0, 0.5), _pt(80, 0.5)]) == pytest.approx(0.5)
    assert stats.area_under_curve([_pt(0, 1.0), _pt(80, 0.2)]) == pytest.approx(1.0 - 0.8 * 40 / 80)
    assert stats.area_under_curve([_pt(20, 0.5), _pt(80, 0.5)]) is None  # does not cover -10 %
    assert stats.median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0)


# ------------------------------------------------------------------------- methods, inputs


def test_lvtp_literal_alpha_is_the_clamped_rms():
    from prune_viz.methods import lvtp

    x = torch.randn(50, 32) * torch.linspace(0.2, 3.0, 50)[:, None]
    _, _, _, a = lvtp.multiscale_tsallis(x, 1.5, 0.5, "literal")
    assert torch.allclose(a, (x.norm(dim=-1) / 32**0.5).clamp(0, 1))
    assert (a == 1).any() and (a < 1).any()
    with pytest.raises(ValueError, match="alpha_mode"):
        lvtp.LVTPParams(alpha_mode="paper")


def test_exit_everything_takes_the_aux_prediction(tiny_demo, rgb_image):
    from prune_viz.backbones import build_backbone
    from prune_viz.params import make_plan
    from prune_viz.engine import run_pruned

    bb = build_backbone("demo")
    trace = run_pruned(bb, rgb_image, make_plan(bb, "exit", "2"))
    assert trace.exited.all() and [r.tokens for r in trace.layers][2:] == [0, 0]
    prep = bb.prepare(rgb_image)
    with torch.no_grad():
        x = bb.embed(prep)
        for layer in (1, 2):
            x = bb.run_block(layer, x, None, prep.grid).x
        aux = bb.aux_logits(2, x[0, 1:])
    assert torch.allclose(trace.seg.token_logits, aux.mean(-1), atol=1e-5)


def test_lowres_input_resamples_positions_and_counts_fewer_macs(tiny_demo, rgb_image):
    from timm.layers import resample_abs_pos_embed

    from prune_viz.backbones import build_backbone
    from prune_viz.bench_suite import ResizedInput
    from prune_viz.engine import run_baseline

    bb = build_backbone("demo")
    small = ResizedInput(bb, 64)
    prep = small.prepare(rgb_image)
    assert prep.grid == (4, 4) and prep.orig_hw == rgb_image.shape[:2]
    with torch.no_grad():
        x = small.embed(prep)
        patches = bb.net.vit.patch_embed(prep.pixels).reshape(1, 16, -1)
        pos = resample_abs_pos_embed(bb.net.vit.pos_embed, (4, 4), num_prefix_tokens=1)
    assert torch.allclose(x[:, 1:], bb.net.vit.norm_pre(patches + pos[:, 1:]), atol=1e-5)
    base, low = run_baseline(bb, rgb_image), run_baseline(small, rgb_image)
    assert low.macs < base.macs / 3 and low.seg.labels.shape == base.seg.labels.shape
    with pytest.raises(ValueError, match="multiple"):
        ResizedInput(bb, 70)


# ------------------------------------------------------------------------------ the command


def test_plain_bench_rows_carry_decision_macs_and_cis(tiny_demo, tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["bench", "--methods", "none,random,evit,lvtp,tome", "--split", "val", "--n", "2", "--layers", "2",
                 "--time-scenes", "0", "--boot", "50", "--sweep", "alpha_mode=rescaled,literal", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = {(r["method"], r["params"]): r for r in csv.DictReader(open(out / "results.csv"))}
    by_method = {}
    for (m, _), r in rows.items():
        by_method.setdefault(m, []).append(r)
    assert int(by_method["none"][0]["decision_macs"]) == 0
    for m in ("evit", "lvtp", "tome"):  # attention statistics, k-means, matching
        assert all(int(r["decision_macs"]) > 0 for r in by_method[m])
    assert len(by_method["lvtp"]) == 2 and all(r["alpha_mean"] for r in by_method["lvtp"])
    for r in rows.values():
        assert float(r["miou_ci_low"]) <= float(r["miou"]) + 1e-9 <= float(r["miou_ci_high"]) + 2e-9


def test_unknown_split_names_the_offered_ones(tiny_demo, tmp_path, capsys):
    assert main(["bench", "--suite", "v2", "--split", "nowhere", "--n", "1", "--out", str(tmp_path)]) == 2
    assert "val" in capsys.readouterr().err


def test_tiny_suite_writes_budgets_and_curves(tiny_demo, tmp_path, capsys):
    from prune_viz.bench_report import BUDGET_COLUMNS, BUDGET_METHODS

    out = tmp_path / "suite"
    code = main(["bench", "--suite", "v2", "--quick", "--split", "val", "--n", "2", "--matp-backbone", "demo",
                 "--time-runs", "1", "--threads", "1", "--boot", "50", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "budgets.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == BUDGET_COLUMNS
        rows = list(reader)
    names = list(dict.fromkeys(r["method"] for r in rows))
    assert names == ["random", "evit", "tome", "lvtp", "dtop", "matp", "exit@3", "lowres"]  # the tiny model's stages: 3
    assert set(names) <= set(BUDGET_METHODS)
    assert all([r["budget_pct"] for r in rows if r["method"] == m] == ["30", "50", "70"] for m in names)
    for r in rows:
        assert r["reached"] in ("true", "false")
        if r["reached"] == "true":
            assert 0 <= float(r["ci_low"]) <= float(r["miou"]) <= float(r["ci_high"]) <= 1
        else:
            assert r["miou"] == "" and r["ci_low"] == ""
    curves = json.loads((out / "curves.json").read_text())
    methods = {r["method"] for r in curves["rows"]}
    assert {"none", "exit@3", "lowres"} <= methods and "random@demo" not in methods  # MATP on demo itself: no duplicate random curve
    assert all(r["decision_gmacs"] is not None for r in curves["rows"])
    assert any(r["decision_gmacs"] > 0 for r in curves["rows"] if r["method"] == "tome")
    for name in ("tradeoff.png", "summary.md", "budgets.md", "curves.csv", "raw.npz"):
        assert (out / name).exists()
    # The spread by layout kind: a row per kind of the scenes, then all scenes, whose figures are
    # the run's own at the middle budget (50).
    from prune_viz.data.synthetic import split_kind

    by_kind = {r["kind"]: r for r in curves["by_kind"]}
    assert curves["by_kind_budget"] == 50.0
    assert set(by_kind) == {split_kind("val", i) for i in range(2)} | {"all"}
    reached = [b for b in curves["budgets"] if b["budget_pct"] == 50.0 and b["reached"] and b["method"] in names]
    best = max(reached, key=lambda b: b["miou"])
    assert by_kind["all"]["best"] == f"{best['method']} {best['miou']:.3f}" and by_kind["all"]["scenes"] == 2
    assert "## By scene layout kind, at -50 % MACs" in (out / "summary.md").read_text()


def test_retime_fills_latency_and_keeps_accuracy(tiny_demo, tmp_path, capsys):
    """A long accuracy run without timings (--time-runs 0), then --from-raw --retime: every
    budget row gets a latency, and the accuracy columns are the earlier run's."""
    first, second = tmp_path / "acc", tmp_path / "timed"
    common = ["--quick", "--split", "val", "--n", "2", "--matp-backbone", "demo", "--boot", "50"]
    assert main(["bench", "--suite", "v2", *common, "--time-runs", "0", "--out", str(first)]) == 0
    assert main(["bench", "--suite", "v2", "--from-raw", str(first), "--retime", "--time-runs", "1", "--threads", "1",
                 "--boot", "50", "--out", str(second)]) == 0, capsys.readouterr().err
    before = list(csv.DictReader(open(first / "budgets.csv")))
    after = list(csv.DictReader(open(second / "budgets.csv")))
    assert [r["latency_ms"] for r in before if r["reached"] == "true"] == [""] * sum(r["reached"] == "true" for r in before)
    assert all(float(r["latency_ms"]) > 0 for r in after if r["reached"] == "true")
    strip = [{k: v for k, v in r.items() if k != "latency_ms"} for r in before]
    assert strip == [{k: v for k, v in r.items() if k != "latency_ms"} for r in after]
    assert "timed afterwards by" in (second / "budgets.md").read_text()
    assert main(["bench", "--suite", "v2", "--retime", "--out", str(second)]) == 2  # --retime needs --from-raw


def test_suite_subsets_all_scenes_reproduce_budgets(tiny_demo, tmp_path, capsys):
    """bench/suite_subsets.py on every scene gives budgets.csv's values; a subset is a subset."""
    import importlib.util
    from pathlib import Path

    out = tmp_path / "suite"
    assert main(["bench", "--suite", "v2", "--quick", "--split", "val", "--n", "3", "--matp-backbone", "demo",
                 "--time-runs", "0", "--boot", "50", "--out", str(out)]) == 0
    spec = importlib.util.spec_from_file_location("suite_subsets", Path(__file__).parents[1] / "bench" / "suite_subsets.py")
    subsets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(subsets)
    from prune_viz.bench_suite import load_raw

    measured, refs, meta = load_raw(out)
    meta["boot"] = 50
    rows = [r for r in csv.DictReader(open(out / "budgets.csv")) if r["budget_pct"] == "30" and r["reached"] == "true"]
    got = subsets.spread_at(measured, refs, meta, np.arange(3), 30.0)
    best = max(rows, key=lambda r: float(r["miou"]))
    assert got["best"] == best["method"] and abs(got["best_miou"] - float(best["miou"])) < 1e-4
    one = subsets.scenes_subset(measured[0], np.array([1]))
    assert one.cms.shape[1] == 1 and np.array_equal(one.cms[:, 0], measured[0].cms[:, 1])
    assert subsets.main([str(out), "--top", "1", "--budget", "30", "--boot", "50"]) == 0
    assert "top 1 by share of 4" in capsys.readouterr().out
    from prune_viz.data.synthetic import split_kind

    assert subsets.main([str(out), "--by-kind", "--control", "2", "--budget", "30", "--boot", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = {split_kind("val", i) for i in range(3)}
    assert {line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ")} >= kinds | {"all"}
    all_row = next(line for line in lines if line.startswith("| all |"))
    assert f"{got['best']} {got['best_miou']:.3f}" in all_row  # every scene: the suite's own figure
