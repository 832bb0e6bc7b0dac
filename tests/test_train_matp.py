"""MATP fine-tuning (prune_viz/train_matp.py): the emulated pruned forward matches the engine,
the gradient stop detaches, the retention gate retains its scheduled fraction, and a 2-step run
writes a loadable checkpoint with engine-evaluated metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from prune_viz.backbones.demo import DemoBackbone, DemoConfig, DemoSegmenter, build_demo, tokens_to_map
from prune_viz.data import synthetic
from prune_viz.engine import Plan, run_pruned
from prune_viz.methods import matp
from prune_viz.methods.matp import MATPParams
from prune_viz.train_matp import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    MATPTrainConfig,
    apply_gate,
    gate_fraction,
    main,
    pruned_forward,
)

TINY = dict(img_size=128, depth=4, aux_layers=(1, 2))
LAYERS = (1, 2)


def tiny_model(seed: int = 0, classes: int = 3, **overrides) -> DemoSegmenter:
    torch.manual_seed(seed)
    names = tuple("abcdefg"[:classes])
    cfg = DemoConfig(classes=names, palette=tuple((10 * i, 0, 0) for i in range(classes)), **{**TINY, **overrides})
    return DemoSegmenter(cfg)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)


def test_gate_schedule_and_exact_retention() -> None:
    cfg = MATPTrainConfig(gate_start=0.5, gate_steps=100)
    assert gate_fraction(0, cfg) == 0.5 and gate_fraction(50, cfg) == pytest.approx(0.25)
    assert gate_fraction(100, cfg) == 0.0 and gate_fraction(500, cfg) == 0.0
    assert gate_fraction(0, replace(cfg, gate=False)) == 0.0
    prune = torch.zeros(300, dtype=torch.bool)
    prune[::3] = True  # 100 candidates
    g = torch.Generator().manual_seed(0)
    for fraction, expected in ((0.0, 100), (0.3, 70), (0.25, 75), (1.0, 0)):
        out = apply_gate(prune, fraction, g)
        assert int(out.sum()) == expected and not (out & ~prune).any()  # only candidates are retained


@torch.no_grad()
def test_masked_training_forward_matches_the_engine(image: np.ndarray) -> None:
    """Key masking + frozen features reproduce real token removal: same decisions, same logits."""
    model = tiny_model().eval()
    backbone = DemoBackbone(model)
    params = MATPParams()
    trace = run_pruned(backbone, image, Plan(matp.SPEC, params, LAYERS))
    prep = backbone.prepare(image)
    out = pruned_forward(model, prep.pixels, (0, 0), params, LAYERS)
    assert torch.equal(torch.nonzero(out.alive[0]).flatten(), trace.kept_per_step[-1])
    assert 0 < trace.kept_per_step[-1].numel() < 64
    assert torch.allclose(out.main[0].mean(-1), trace.seg.token_logits, atol=1e-4)


def _grad_at_pruning_layer(grad_stop: bool, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the main-head loss w.r.t. the features after block 1 (the first pruning layer),
    and which tokens were pruned there."""
    model = tiny_model(seed=1).train()
    captured = {}

    def keep_grad(_module, _inputs, output):
        output.retain_grad()
        captured["x"] = output

    handle = model.vit.blocks[0].register_forward_hook(keep_grad)
    try:
        out = pruned_forward(model, pixels, (0, 0), MATPParams(), (1,), grad_stop=grad_stop)
    finally:
        handle.remove()
    target = torch.randint(0, 3, (pixels.shape[0], 32, 32), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(tokens_to_map(out.main, 8, 8), target).backward()
    return captured["x"].grad[:, 1:], ~out.alive  # B x N x C, B x N (pruned at layer 1)


def test_gradient_stop_detaches_pruned_tokens() -> None:
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    grad, pruned = _grad_at_pruning_layer(True, pixels)
    assert pruned.any() and (~pruned).any()
    # Nothing reaches a pruned token's layer-1 features: not through later blocks (it is no key
    # there, and its own later rows are discarded), not through its frozen copy (detached).
    assert grad[pruned].abs().max() == 0
    assert grad[~pruned].abs().sum(-1).min() > 0  # kept tokens do get gradient
    # Without the stop, the main loss on the frozen copy flows back into those features.
    grad_open, pruned_open = _grad_at_pruning_layer(False, pixels)
    assert torch.equal(pruned_open, pruned)
    assert grad_open[pruned].abs().sum(-1).min() > 0


@torch.no_grad()
def test_gate_retains_scheduled_fraction_in_the_forward() -> None:
    model = tiny_model(seed=3).eval()
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    full = pruned_forward(model, pixels, (0, 0), MATPParams(), (1,), gate=0.0)
    gated = pruned_forward(model, pixels, (0, 0), MATPParams(), (1,), gate=0.4, generator=torch.Generator().manual_seed(5))
    n = full.candidates[1]
    assert n > 10 and gated.candidates[1] == n and full.pruned[1] == n
    assert gated.pruned[1] == n - round(0.4 * n)
    assert ((~gated.alive) <= (~full.alive)).all()  # the gate only retains candidates


def test_two_step_run_writes_a_loadable_checkpoint(tmp_path) -> None:
    model = tiny_model(seed=0, classes=len(synthetic.CLASSES), img_size=64, embed_dim=32, num_heads=2, aux_layers=(1, 2, 3))
    model_cfg = replace(model.cfg, classes=synthetic.CLASSES, palette=tuple(map(tuple, synthetic.PALETTE.tolist())))
    init = tmp_path / "init" / "demo_segmenter.safetensors"
    init.parent.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(init))
    init.with_suffix(".json").write_text(model_cfg.to_json())
    out = tmp_path / "out"
    argv = ["--init", str(init), "--out", str(out), "--steps", "2", "--batch", "2", "--crop", "32", "--val", "1",
            "--layers", "1,2", "--gate-steps", "2", "--warmup", "1", "--threads", "1"]
    assert main(argv) == 0
    for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
        assert (out / name).is_file()
    card = json.loads((out / CONFIG_NAME).read_text())["extra"]
    engine = card["matp_engine_val"]
    assert engine["layers"] == [1, 2] and engine["scenes"] == 1 and 0 <= engine["miou"] <= 1
    assert engine["macs"] < engine["macs_unpruned"] or engine["kept_fraction_after"]["2"] == 1.0
    assert card["matp_engine_val_init"]["scenes"] == 1  # MATP on the starting model, for comparison
    assert card["train_config"]["gate"] is True and card["train_config"]["steps"] == 2
    assert "main" in card["metrics_val"] and "MATP" in (out / CARD_NAME).read_text()
    assert "Validation: 1 scenes of `val`" in (out / CARD_NAME).read_text()
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(out / WEIGHTS_NAME)).values())
    assert build_demo(out / WEIGHTS_NAME).num_blocks == 4
    # The ablation flags reach the config.
    assert main(argv[:-2] + ["--threads", "1", "--no-gate", "--no-grad-stop", "--val", "0", "--out", str(tmp_path / "abl"),
                             "--split", "train_varied", "--val-split", "val_varied"]) == 0
    abl = json.loads((tmp_path / "abl" / CONFIG_NAME).read_text())["extra"]["train_config"]
    assert abl["gate"] is False and abl["grad_stop"] is False
    assert abl["split"] == "train_varied" and abl["val_split"] == "val_varied"


def test_an_unknown_split_is_refused_before_fine_tuning(tmp_path, capsys) -> None:
    assert main(["--init", str(tmp_path / "none.safetensors"), "--val-split", "vall"]) == 2
    assert "error: unknown split(s) ['vall']" in capsys.readouterr().err
