"""The demo segmenter through the engine (random weights; the shipped checkpoint is tested in
test_demo_checkpoint.py)."""

import numpy as np
import pytest
import torch

from prune_viz.backbones.demo import DemoBackbone, DemoConfig, DemoSegmenter, logits_to_labels
from prune_viz.engine import Plan, run_baseline, run_pruned
from prune_viz.flops import measure_macs
from prune_viz.methods.base import EXITED, Decision, KEPT, MethodSpec, PRUNED
from prune_viz.methods.baselines import NONE, RANDOM, NoParams, RateParams

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    cfg = DemoConfig(
        classes=CLASSES, palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), img_size=128, depth=4, aux_layers=(1, 2), mix_depth=2
    )
    net = DemoSegmenter(cfg)
    for pw in net.mixer.pw:  # the mixer starts as the identity: make it mix
        torch.nn.init.normal_(pw.weight, std=0.05)
    return DemoBackbone(net.eval())


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)


def test_none_reproduces_plain_forward(demo, image):
    prep = demo.prepare(image)
    with torch.no_grad():
        main, aux = demo.net(prep.pixels)
    expected = logits_to_labels(main, image.shape[:2])
    trace = run_pruned(demo, image, Plan(RANDOM, RateParams(0.0), (1,)))
    assert np.array_equal(trace.seg.labels, expected)
    base = run_baseline(demo, image)
    assert np.array_equal(base.seg.labels, expected)


def test_training_crop_sees_its_window_of_the_position_grid(demo, image):
    prep = demo.prepare(image)
    full = demo.net.embed(prep.pixels)  # 1 x (1 + 64) x C
    crop = demo.net.embed(prep.pixels[..., 32:96, 16:80], offset=(2, 1))  # 4 x 4 tokens at (2, 1)
    grid = full[:, 1:].view(1, 8, 8, -1)
    assert torch.allclose(crop[:, 1:].view(1, 4, 4, -1), grid[:, 2:6, 1:5], atol=1e-5)


def exit_half(ctx, params):
    """Exit the first half of the tokens (a stand-in for DToP's rule)."""
    n = ctx.tokens.shape[0]
    status = torch.full((n,), KEPT, dtype=torch.long)
    status[: n // 2] = EXITED
    return Decision(keep=torch.arange(n // 2, n), status=status)


def test_exited_tokens_take_the_aux_prediction(demo, image):
    spec = MethodSpec("exit_half", NoParams, exit_half, "test", needs_aux=True)
    trace = run_pruned(demo, image, Plan(spec, NoParams(), (1,)))
    assert trace.exited.sum() == 32 and trace.macs["aux_heads"] > 0
    prep = demo.prepare(image)
    with torch.no_grad():
        x = demo.run_block(1, demo.embed(prep), None, prep.grid).x
        aux = demo.aux_logits(1, x[0, 1:])  # N x K x s²
    logits = trace.seg.token_logits  # N x K (mean over sub-cells)
    exited = torch.from_numpy(trace.exited.ravel())
    assert torch.allclose(logits[exited], aux.mean(-1)[exited], atol=1e-5)


def test_aux_method_on_layer_without_head_is_refused(demo, image):
    spec = MethodSpec("exit_half", NoParams, exit_half, "test", needs_aux=True)
    with pytest.raises(ValueError, match="auxiliary head"):
        run_pruned(demo, image, Plan(spec, NoParams(), (3,)))


def test_demo_macs_match_counter(demo, image):
    spec = MethodSpec("exit_half", NoParams, exit_half, "test", needs_aux=True)
    plan = Plan(spec, NoParams(), (1, 2))
    trace = run_pruned(demo, image, plan)
    measured, _ = measure_macs(lambda: run_pruned(demo, image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * measured
