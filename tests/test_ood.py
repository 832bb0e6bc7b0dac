"""Out-of-domain signal (prune_viz/ood.py) on the shipped demo model: a val scene stays below
the calibrated threshold, a real photo (matplotlib's grace_hopper.jpg) goes above it."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from prune_viz import ood

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def demo():
    from prune_viz.backbones import build_backbone

    return build_backbone("demo")


def _score(bb, image: np.ndarray) -> float | None:
    from prune_viz.engine import run_baseline

    return ood.ood_score(bb, run_baseline(bb, image))


def test_val_scene_is_in_domain(demo):
    from prune_viz.data import synthetic

    image, _ = synthetic.split_scene("val", 0, demo.input_size)
    score = _score(demo, image)
    assert score is not None and 0.0 <= score < ood.OOD_THRESHOLD
    assert not ood.is_out_of_domain(score)


def test_grace_hopper_is_out_of_domain(demo):
    from prune_viz.io import load_image

    score = _score(demo, load_image(GRACE).rgb)
    assert score is not None and score > ood.OOD_THRESHOLD
    assert ood.is_out_of_domain(score)


def test_entropy_bounds_and_none():
    certain = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    uniform = torch.zeros(2, 3)
    assert ood.token_entropy(certain).max() < 1e-6
    assert torch.allclose(ood.token_entropy(uniform), torch.ones(2))
    assert not ood.is_out_of_domain(None)


def test_no_class_scores_gives_none(tiny_timm, rgb_image):
    from prune_viz.engine import run_baseline

    assert ood.ood_score(tiny_timm, run_baseline(tiny_timm, rgb_image)) is None
    fields = ood.ood_fields(tiny_timm, run_baseline(tiny_timm, rgb_image))
    assert fields["score"] is None and fields["out_of_domain"] is False


def test_no_score_on_a_model_the_threshold_was_not_calibrated_on(demo, rgb_image):
    """demo_matp shares demo's classes but not its entropy scale: no score, no banner, and the
    report says why."""
    from prune_viz.backbones import build_backbone
    from prune_viz.engine import run_baseline

    matp = build_backbone("demo_matp")
    base = run_baseline(matp, rgb_image)
    assert ood.ood_score(matp, base) is None
    fields = ood.ood_fields(matp, base)
    assert not fields["out_of_domain"] and "calibrated on demo only" in fields["signal"]
    assert ood.ood_score(demo, run_baseline(demo, rgb_image)) is not None
