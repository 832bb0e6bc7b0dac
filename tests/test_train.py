"""Training is reproducible: the same config gives the same weights and the same card numbers."""

import json

import pytest
from safetensors.torch import load_file

from prune_viz.backbones.demo import DemoConfig
from prune_viz.data import synthetic
from prune_viz.train import TrainConfig, cell_labels, run


def test_two_runs_of_the_same_config_give_identical_weights(tmp_path):
    """Pruning-aware steps included (p_prune + p_exit = 1: every step prunes or exits)."""
    cfg = TrainConfig(
        steps=2, batch=2, crop=64, finetune_steps=1, finetune_batch=1, warmup=1, val=2, threads=1, p_prune=0.5, p_exit=0.5
    )
    small = DemoConfig(
        classes=synthetic.CLASSES, palette=tuple(map(tuple, synthetic.PALETTE.tolist())), img_size=128, depth=4,
        aux_layers=(1, 2), mix_depth=1,
    )
    cards = [run(cfg, tmp_path / name, small) for name in ("a", "b")]
    a = load_file(str(tmp_path / "a" / "demo_segmenter.safetensors"))
    b = load_file(str(tmp_path / "b" / "demo_segmenter.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any(k.startswith("mixer.") for k in a)
    assert json.dumps(cards[0]["metrics_val"]) == json.dumps(cards[1]["metrics_val"])  # NaN-safe
    card_md = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert card_md.count("| main |") == 1 and "| shift |" in card_md
    assert set(cards[0]["splits"]) == {"val", "test", "shift"}

    # A warm start from run a's weights records the file and leaves nothing fresh.
    warm = run(TrainConfig(steps=1, batch=2, crop=64, finetune_steps=0, warmup=1, val=1, threads=1), tmp_path / "c", small,
               init=tmp_path / "a" / "demo_segmenter.safetensors")
    assert warm["init"]["fresh"] == [] and len(warm["init"]["sha256"]) == 64


def test_cell_labels_take_the_majority_of_each_cell():
    import numpy as np

    cfg = DemoConfig(classes=("a", "b", "c"), palette=((0, 0, 0),) * 3)
    labels = np.zeros((16, 16), np.uint8)
    labels[:4, :3] = 2  # 12 of 16 pixels of the first 4x4 cell
    cells = cell_labels(labels, cfg)
    assert cells.shape == (4, 4) and cells[0, 0] == 2 and cells[0, 1] == 0


def test_training_and_evaluation_splits_are_the_configs(tmp_path):
    """``split`` / ``eval_splits`` choose the scenes: the card evaluates exactly the named splits,
    the first as its "val" metrics, and the run trains on the named split (its first batch is
    that split's scene 0, up to the flips)."""
    import numpy as np

    from prune_viz.train import SceneDataset

    small = DemoConfig(
        classes=synthetic.CLASSES, palette=tuple(map(tuple, synthetic.PALETTE.tolist())), img_size=64, depth=2,
        aux_layers=(1,), mix_depth=1,
    )
    pixels, _, _ = SceneDataset(0, 1, 64, small, 0, split="train_varied")[0]
    image = synthetic.split_scene("train_varied", 0, 64)[0].astype(np.float32)
    restored = pixels.permute(1, 2, 0).numpy() * (np.array(small.std) * 255) + np.array(small.mean) * 255
    views = (image, image[:, ::-1], image.transpose(1, 0, 2), image[:, ::-1].transpose(1, 0, 2))
    assert min(np.abs(restored - v).max() for v in views) < 1e-2
    cfg = TrainConfig(steps=1, batch=1, crop=64, finetune_steps=0, warmup=1, val=1, threads=1,
                      split="train_varied", eval_splits="val_varied")
    card = run(cfg, tmp_path / "v", small)
    assert set(card["splits"]) == {"val_varied"}
    assert card["metrics_val"]["main"]["miou"] == card["splits"]["val_varied"]["main"]["miou"]
    assert "Trained on `train_varied`, drawn with the `varied` style" in (tmp_path / "v" / "MODEL_CARD.md").read_text()


def test_an_unknown_split_is_refused_before_training(capsys):
    """A misspelt split stops the command at once (error line, exit 2), not after the training."""
    from prune_viz.train import main

    with pytest.raises(ValueError, match="unknown split"):
        TrainConfig(split="train_variied")
    assert main(["--eval-splits", "val,tset", "--out", "/nonexistent"]) == 2
    assert "error: unknown split(s) ['tset']" in capsys.readouterr().err


def test_the_card_names_the_training_style():
    """The card's domain sentence describes a pilot style from the style itself, lookalike roofs
    included, and keeps the standard sentence for the standard split."""
    from prune_viz.train_eval import training_domain

    assert training_domain("train").startswith("`val` and `test` are i.i.d. draws")
    varied = training_domain("train_varied")
    assert "summer or autumn per scene, ground sampling 0.7-1.5x, haze in 35 % of scenes)" in varied
    assert "lookalike" not in varied
    assert "lookalikes: 50 % of roofs as pavement)" in training_domain("train_context")
    assert "lookalikes: 100 % of roofs as pavement)" in training_domain("train_context_all")
    many = training_domain("train_context_many")
    assert "lookalikes: 50 % of roofs as pavement, tree groups as grass, water as asphalt)" in many
