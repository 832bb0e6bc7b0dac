"""The teaching view without a browser: fixed colours, the token inspector and its rule sentences,
forced decisions re-run from the prefix cache, explanations checked against measured behaviour.

Runs on the shipped demo model where it exists (the measured statements are about it); numbers
are measured here, never hard-coded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prune_viz import viz
from prune_viz.analysis import analyze
from prune_viz.engine import apply_overrides, run_baseline, run_pruned
from prune_viz.methods.base import EXITED, GONE, KEPT, PENDING_KEPT, PRUNED
from prune_viz.params import make_plan
from prune_viz.ui import inspect, views

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "demo_segmenter.safetensors"


@pytest.fixture(scope="module")
def demo():
    from prune_viz.backbones import build_backbone

    if not SHIPPED.is_file():
        pytest.skip("the shipped demo model is not here")
    return build_backbone("demo")


@pytest.fixture(scope="module")
def water():
    from prune_viz.io import load_image

    return load_image(str(ROOT / "examples" / "water.png")).rgb


def test_apply_overrides_forces_in_and_out():
    status = torch.tensor([KEPT, PRUNED, EXITED, PENDING_KEPT])
    kept_idx = torch.tensor([3, 5, 7, 9])
    keep, st = apply_overrides(status, kept_idx, force_keep=(5, 7), force_prune=(9, 42))
    assert st.tolist() == [KEPT, KEPT, KEPT, PRUNED] and keep.tolist() == [0, 1, 2]


def test_status_colours_do_not_depend_on_the_method(demo, water):
    """Without the image every status is its one flat colour, whatever the method."""
    seen = {}
    for method in ("random", "lvtp", "dtop"):
        a = analyze(demo, water, make_plan(demo, method, None, 0, {}))
        layer = a.trace.plan_layers[0]
        rgb, _ = views.token_map_view(a, layer, demo.num_blocks, demo.patch_size, show_image=False)
        grid = a.trace.status_at(layer)
        for code in np.unique(grid):
            r, c = np.argwhere(grid == code)[0]
            centre = rgb[r * demo.patch_size + demo.patch_size // 2, c * demo.patch_size + demo.patch_size // 2]
            seen.setdefault(int(code), set()).add(tuple(int(x) for x in centre))
    assert {KEPT, PRUNED, EXITED} <= set(seen)
    for code, colours in seen.items():
        assert colours == {viz.STATUS_COLOURS[code]}, (code, colours)


def test_depth_colours_are_fixed_per_depth():
    assert viz.depth_colour(12, 12) == viz.depth_colour(12, 12) != viz.depth_colour(6, 12)
    assert len({viz.depth_colour(layer, 12) for layer in range(1, 13)}) == 12


def test_inspector_rule_and_signals(demo, water):
    a = analyze(demo, water, make_plan(demo, "lvtp", "6", 0, {}))
    grid = a.trace.steps[0].status_grid
    r, c = np.argwhere(grid == PRUNED)[0]
    ins = inspect.inspect_token(a, r, c)
    assert ins.status == "pruned" and ins.decided_at_layer == 6
    assert "cluster" in ins.rule and "pruned" in ins.rule
    assert set(ins.signals) >= {"entropy", "cluster1", "edge_energy"} and ins.signals["entropy"][6] is not None
    assert ins.thresholds[6]["rate"] == a.trace.params["rate"]
    r, c = np.argwhere(grid == KEPT)[0]
    assert inspect.inspect_token(a, r, c).status == "kept to the end"
    with pytest.raises(ValueError, match="outside"):
        inspect.inspect_token(a, 99, 0)


@pytest.mark.parametrize("method", ["none", "random", "evit", "dtop", "matp"])
def test_every_method_has_a_rule_sentence(demo, water, method):
    a = analyze(demo, water, make_plan(demo, method, None, 0, {}))
    for r, c in ((0, 0), (16, 16), (31, 31)):
        rule = inspect.inspect_token(a, r, c).rule
        assert rule.endswith(".") and len(rule) > 30, rule


def test_token_at_maps_clicks_proportionally():
    assert inspect.token_at(0, 0, (341, 512), (32, 32)) == (0, 0)
    assert inspect.token_at(511, 340, (341, 512), (32, 32)) == (31, 31)
    assert inspect.token_at(256, 170, (341, 512), (32, 32)) == (15, 16)


def test_force_keep_reruns_from_the_cache_and_changes_macs(demo, water):
    from prune_viz.ui.session import Session

    session = Session(image=water)
    plan = make_plan(demo, "random", "3", 0, {"rate": 0.5})
    before = session.run(demo, ("demo", None), plan)
    r, c = np.argwhere(before.trace.steps[0].status_grid == PRUNED)[0]
    after, text = inspect.what_if(session, demo, ("demo", None), plan, r, c, keep=True)
    assert after.trace.from_cache and after.trace.drop_layer[r, c] == demo.num_blocks
    assert after.report["macs"]["pruned"] > before.report["macs"]["pruned"]
    assert "What if token" in text and "MMACs" in text
    assert inspect.inspect_token(after, r, c).status == "kept to the end"
    assert "You forced it to stay" in inspect.inspect_token(after, r, c).rule
    # the engine hook alone: the same kept set plus that token
    baseline = run_baseline(demo, water)
    forced = run_pruned(demo, water, inspect.forced_plan(plan, before.trace, r, c, keep=True), baseline=baseline)
    assert forced.steps[0].tokens_kept == before.trace.steps[0].tokens_kept + 1


def test_lvtp_explanation_matches_what_it_does_on_water(demo, water):
    """The LVTP text says it keeps most flat water tokens and prunes more of the textured
    vegetation: measure it on water.png."""
    from prune_viz.ui import lesson, texts

    text = texts.method_explanation("lvtp")
    assert "water" in text and "keeps most" in text
    a = analyze(demo, water, make_plan(demo, "lvtp", None, 0, {}))
    shares = lesson.kept_by_class(a)
    assert shares["water"][0] >= 0.8, shares
    assert shares["low_vegetation"][0] < shares["water"][0] - 0.3, shares
    assert "water" in lesson.kept_by_class_line(a)


def test_glossary_covers_the_terms():
    from prune_viz.ui import glossary

    for term in ("token", "MAC", "FLOP", "mIoU", "boundary F", "γ", "Tsallis entropy", "Sobel", "k-means",
                 "early exit", "merging"):
        assert term in glossary.GLOSSARY
    assert "Tsallis entropy" in glossary.glossary_markdown()


# ----------------------------------------------------------------------------- the app's endpoints


def _call(client, *args, api_name):
    from gradio_client import handle_file

    args = [handle_file(str(a)) if isinstance(a, Path) else a for a in args]
    return client.predict(*args, api_name=api_name)


def test_inspect_token_endpoint(client, scene):
    out = _call(client, scene / "scene.png", "demo", "lvtp", "6", "{}", 0, None, 3, 4, api_name="/inspect_token")
    assert out["row"] == 3 and out["col"] == 4
    assert out["status"] in ("kept to the end", "pruned") and out["rule"].endswith(".")
    assert "6" in out["signals"]["entropy"] and out["decided_at_layer"] in (None, 6)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside"):
        _call(client, scene / "scene.png", "demo", "lvtp", "6", "{}", 0, None, 500, 0, api_name="/inspect_token")


def test_animate_endpoint_writes_a_gif(client, scene):
    from PIL import Image

    path = _call(client, scene / "scene.png", "demo", "random", "3", "{}", 0, None, api_name="/animate")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 4


def test_choosing_matp_on_the_demo_switches_to_its_weights(app_module):
    from prune_viz.webapp import handlers

    out = dict(zip(handlers.SETUP_OUT, handlers.on_method(None, "demo", None, "matp")))
    assert out["backbone"].value == "demo_matp" and "demo_matp" in out["method_info"]
    out = dict(zip(handlers.SETUP_OUT, handlers.on_method(None, "demo", None, "lvtp")))
    assert not hasattr(out["backbone"], "choices")  # left as it is


def test_dtop_explanation_matches_what_it_does_on_water(demo, water):
    """The DToP text says easy tokens such as open water leave early with their prediction."""
    from prune_viz.ui import texts

    assert "open water" in texts.method_explanation("dtop")
    a = analyze(demo, water, make_plan(demo, "dtop", None, 0, {}))
    labels = lesson_classes(a)
    water_id = a.baseline.seg.class_names.index("water")
    assert a.trace.exited[labels == water_id].mean() >= 0.5


def lesson_classes(a):
    from prune_viz.ui.lesson import token_classes

    return token_classes(a.baseline.seg.labels, a.trace.grid)


def test_per_class_line_by_the_ground_truth(demo, water):
    from prune_viz.io import load_mask
    from prune_viz.ui import lesson

    gt, _ = load_mask(str(ROOT / "examples" / "water_mask.png"), water.shape[:2], demo.num_classes, demo.palette)
    a = analyze(demo, water, make_plan(demo, "random", "6", 0, {"rate": 0.5}), gt=gt)
    line = lesson.kept_by_class_line(a, gt)
    assert "ground-truth mask" in line and "water" in line
    assert abs(sum(s * n for s, n in lesson.kept_by_class(a, gt).values()) / 1024 - 0.5) < 0.01


def test_methods_play_in_sync_as_one_gif(demo, water):
    from PIL import Image

    from prune_viz.ui import animate

    runs = [analyze(demo, water, make_plan(demo, m, None, 0, {})) for m in ("random", "dtop")]
    frames = animate.frames_in_sync(runs, demo.num_blocks, demo.patch_size)
    assert len(frames) == demo.num_blocks and len({f.shape for f in frames}) == 1
    with Image.open(animate.write_gif(runs, demo.num_blocks, demo.patch_size)) as gif:
        assert gif.n_frames == demo.num_blocks


def test_matched_budget_turns_each_methods_knob_and_says_when_it_cannot():
    """Compare's matched budget: rate for random, threshold for DToP, alpha for MATP; a budget
    out of reach is said, never filed as reached."""
    from prune_viz.backbones import build_backbone
    from prune_viz.engine import estimate_macs, run_baseline
    from prune_viz.ui.compare import match_budget

    image = np.random.default_rng(3).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    for name, method, layers in (("demo", "random", "6"), ("demo", "dtop", "6"), ("demo_matp", "matp", "6")):
        backbone = build_backbone(name)
        baseline = run_baseline(backbone, image)
        plan, note = match_budget(backbone, baseline, method, layers, 0, 30.0, {})
        est = estimate_macs(backbone, baseline, plan)
        saved = 100.0 * (est["baseline"] - est["macs"]) / est["baseline"]
        if note.startswith("cannot reach"):
            assert saved < 30.0
        else:
            assert saved >= 30.0 - 1e-6 and ("chosen for the budget" in note or "already saves" in note)
    backbone = build_backbone("demo")
    plan, note = match_budget(backbone, run_baseline(backbone, image), "random", "11", 0, 60.0, {})
    assert note.startswith("cannot reach the budget: saves at most")  # pruning after block 11 saves little
