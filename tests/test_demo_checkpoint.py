"""The shipped demo segmenter: loads offline from assets/, is small, and segments a val scene."""

import json
import os
import socket

import numpy as np
import pytest

from prune_viz.backbones.demo import DEMO_CONFIG, DEMO_MATP_WEIGHTS, DEMO_WEIGHTS, build_demo
from prune_viz.data import synthetic
from prune_viz.engine import run_baseline
from prune_viz.metrics import miou


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("PRUNE_VIZ_DEMO_WEIGHTS", raising=False)


@pytest.mark.parametrize("path", [DEMO_WEIGHTS, DEMO_MATP_WEIGHTS])
def test_shipped_weights_exist_and_are_small(path):
    assert path.is_file(), f"{path} must be committed"
    assert path.stat().st_size <= 15 * 1024 * 1024


def test_shipped_model_loads_offline_and_segments(no_network):
    backbone = build_demo()
    assert backbone.name == "demo" and backbone.num_classes == len(synthetic.CLASSES)
    assert backbone.cfg.img_size >= 512 and backbone.cfg.img_size // backbone.patch_size >= 32
    image, gt = synthetic.split_scene("val", 0, backbone.cfg.img_size)
    base = run_baseline(backbone, image)
    # A trained model, not random weights: well above chance on a val scene.
    assert miou(base.seg.labels, gt, backbone.num_classes) > 0.5


def test_model_card_numbers_come_from_the_evaluation():
    card = json.loads(DEMO_CONFIG.read_text())["extra"]
    assert card["val_scenes"] == 100 and card["command"].startswith("python -m prune_viz.train")
    heads = card["metrics_val"]
    assert set(heads) == {"main", "aux3", "aux6", "aux8", "aux9"}
    for head in heads.values():
        ious = [v for v in head["iou"].values() if not np.isnan(v)]
        assert abs(np.mean(ious) - head["miou"]) < 1e-9
        lo, hi = head["ci95"]
        assert 0 <= lo <= head["miou"] <= hi <= 1
    assert os.path.exists(DEMO_CONFIG.with_name("MODEL_CARD.md"))


def test_shipped_model_is_v2_and_shift_shows_a_drop():
    """The shipped decoder mixes tokens, and the shift split is measurably harder: its mIoU lies
    below the lower end of val's bootstrap CI."""
    cfg = json.loads(DEMO_CONFIG.read_text())
    assert cfg["mix_depth"] >= 1
    splits = cfg["extra"]["splits"]
    assert set(splits) == {"val", "test", "shift"}
    for split in splits.values():
        assert abs(sum(split["class_shares"].values()) - 1.0) < 1e-6
    assert splits["shift"]["main"]["miou"] < splits["val"]["main"]["ci95"][0]


def test_card_machine_note_reads_after_the_training_time():
    """A bare note gets its own "; " (it once ran on as "(1560 steps)probe"); a note typed with
    the separator, as the shipped card's was, is kept as typed."""
    from prune_viz.train_eval import _note_suffix

    assert _note_suffix("") == ""
    assert _note_suffix("quiet machine") == "; quiet machine"
    assert _note_suffix("; machine shared") == "; machine shared"
