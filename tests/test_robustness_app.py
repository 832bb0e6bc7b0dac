"""The app's out-of-domain banner and Robustness tab, at handler level (no browser): the banner
text comes out of the run handler for grace_hopper.jpg and not for a demo scene; the noise
handler draws the clean / noisy / flip maps with the stability figure."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
ROOT = Path(__file__).resolve().parents[1]


def _run(path: Path):
    from prune_viz.ui.session import Session
    from prune_viz.webapp import handlers

    session = Session()
    session.set_image(str(path), path.name)
    params = [c.default for c in handlers.CONTROLS]
    out = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, "demo", 1024, "lvtp", [6], 0, 6, *params)))
    return session, out


@pytest.fixture(scope="module")
def scene_run():
    return _run(ROOT / "examples" / "mixed.png")


def test_banner_on_grace_hopper_not_on_a_demo_scene(scene_run):
    _, out = _run(GRACE)
    banner = out["ood_banner"]
    assert banner.visible is True
    assert "does not know images like this" in banner.value and "model failure, not pruning failure" in banner.value
    _, scene = scene_run
    assert scene["ood_banner"].visible is False and scene["ood_banner"].value == ""


def test_noise_tab_draws_maps_and_stability(scene_run):
    from prune_viz.webapp import noise_view as nv

    session, _ = scene_run
    out = dict(zip(nv.NOISE_OUT, nv.on_noise(session, "demo", 1024, "gaussian", 4)))
    for key in ("noise_clean", "noise_noisy", "noise_flips"):
        img = cv2.imread(out[key])
        assert img is not None and img.shape[1] == 360
    assert "Decision stability" in out["noise_caption"] and "sigma (0..255) = 40" in out["noise_caption"]
    empty = dict(zip(nv.NOISE_OUT, nv.on_noise(None, "demo", 1024, "gaussian", 4)))
    assert "Run an image first" in empty["noise_caption"]


def test_clean_strength_flips_nothing_and_strong_noise_flips_some(scene_run):
    from prune_viz.ui.robustness import level_of, run_noisy

    session, _ = scene_run
    from prune_viz.backbones import build_backbone

    bb = build_backbone("demo")
    same = run_noisy(bb, session.image, session.analysis, session.plan, "blur", 0)
    assert same.flip_share == 0.0 and not same.flips.any()
    strong = run_noisy(bb, session.image, session.analysis, session.plan, "gaussian", 4)
    assert 0.0 < strong.flip_share < 1.0
    assert np.array_equal(strong.flips > 0, strong.clean != strong.noisy)
    assert level_of("jpeg", 4) == 10.0 and level_of("haze", 0) == 0.0
    from prune_viz.errors import ParamError

    with pytest.raises(ParamError):
        level_of("gaussian", 9)
