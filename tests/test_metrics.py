"""Metrics: mIoU bookkeeping, boundaries, segment matching, LVTP's gamma (Eq. 11)."""

import numpy as np
import pytest

from prune_viz.metrics import ConfusionMatrix, agreement_miou, boundary_f1, boundary_region, gamma, match_segments, miou


def test_gamma_matches_paper_tables():
    assert gamma(-46.2, -5.0) == pytest.approx(9.24)  # LVTP Table 1 (signed changes)
    assert gamma(-45.5, -3.1) == pytest.approx(14.68, abs=0.01)  # Table 4, COCO
    assert gamma(-20.0, 0.0) is None  # no accuracy lost: undefined, never a big number
    assert gamma(-20.0, 1.0) is None  # accuracy gained
    assert gamma(5.0, -2.0) == pytest.approx(-2.5)  # costlier and worse: honestly negative
    assert gamma(float("nan"), -1.0) is None


def test_miou_perfect_and_disjoint():
    gt = np.array([[0, 0, 1, 1]] * 4)
    assert miou(gt, gt, 2) == 1.0
    assert miou(1 - gt, gt, 2) == 0.0
    cm = ConfusionMatrix(3)
    cm.update(gt, gt)
    assert np.isnan(cm.iou()[2])  # absent class not counted
    ignore = gt.copy()
    ignore[0, 0] = 255
    assert miou(gt, ignore, 2) == 1.0


def test_boundary_region_and_f1():
    gt = np.zeros((20, 20), int)
    gt[:, 10:] = 1
    region = boundary_region(gt, 2)
    assert region[:, 8:12].all() and not region[:, :7].any()
    assert boundary_f1(gt, gt) == 1.0
    shifted = np.zeros_like(gt)
    shifted[:, 15:] = 1
    assert boundary_f1(shifted, gt, tolerance=2) == 0.0


def test_segments_are_matched_before_scoring():
    ref = np.array([[1, 1, 2, 2]] * 3)
    pred = np.array([[7, 7, 3, 3]] * 3)  # same partition, other ids
    assert np.array_equal(match_segments(pred, ref), ref)
    assert agreement_miou(pred, ref, "segments") == 1.0
