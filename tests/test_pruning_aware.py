"""The pruning-aware training forward (DemoSegmenter.forward_pruned) is the engine's pruned
forward: same kept sets and exits give the same final logits; the mixing decoder's MACs are
counted exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prune_viz.backbones.demo import DemoBackbone, DemoConfig, DemoSegmenter
from prune_viz.engine import Plan, run_pruned
from prune_viz.flops import measure_macs
from prune_viz.methods.base import EXITED, KEPT, PRUNED, Decision, MethodSpec
from prune_viz.methods.baselines import NoParams
from prune_viz.train import sample_schedule

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def demo() -> DemoBackbone:
    torch.manual_seed(0)
    cfg = DemoConfig(
        classes=CLASSES, palette=((0, 0, 0), (255, 0, 0), (0, 255, 0)), img_size=128, depth=4, aux_layers=(1, 2), mix_depth=2
    )
    net = DemoSegmenter(cfg)
    for pw in net.mixer.pw:  # the mixer starts as the identity; give it something to mix
        torch.nn.init.normal_(pw.weight, std=0.05)
    return DemoBackbone(net.eval())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)


def _fixed_method(keeps: dict[int, torch.Tensor], exits: dict[int, torch.Tensor]) -> MethodSpec:
    """A method that keeps the given global token indices and exits the given ones."""

    def decide(ctx, params) -> Decision:
        alive = ctx.kept_idx
        keep = torch.nonzero(torch.isin(alive, keeps[ctx.layer])).flatten()
        status = torch.full((alive.numel(),), PRUNED, dtype=torch.long)
        status[torch.isin(alive, exits.get(ctx.layer, torch.empty(0, dtype=torch.long)))] = EXITED
        status[keep] = KEPT
        return Decision(keep=keep, status=status)

    return MethodSpec("fixed", NoParams, decide, "test", needs_aux=True)


@torch.no_grad()
def test_training_forward_equals_engine_on_the_same_masks(demo: DemoBackbone, image: np.ndarray) -> None:
    """Prune 24 tokens after layer 1 (8 of them exit), 16 more after layer 2 (all pruned)."""
    n = 64
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(n, generator=g)
    keep1 = order[24:].sort().values  # global indices alive after layer 1
    exit1 = order[:8]
    keep2 = keep1[torch.randperm(keep1.numel(), generator=g)[16:]].sort().values
    trace = run_pruned(demo, image, Plan(_fixed_method({1: keep1, 2: keep2}, {1: exit1}), NoParams(), (1, 2)))
    assert trace.exited.sum() == 8 and trace.kept_per_step[-1].numel() == keep2.numel()

    # The same schedule in forward_pruned's terms: positions within the alive tokens.
    pos1 = keep1[None]  # all tokens alive before step 1: position = global index
    ex1 = torch.zeros(1, n, dtype=torch.bool)
    ex1[0, exit1] = True
    pos2 = torch.nonzero(torch.isin(keep1, keep2)).flatten()[None]
    prep = demo.prepare(image)
    out = demo.net.forward_pruned(prep.pixels, {1: (pos1, ex1), 2: (pos2, None)})
    assert torch.equal(out.alive[0], keep2) and int(out.exited.sum()) == 8
    assert torch.allclose(out.logits[0].mean(-1), trace.seg.token_logits, atol=1e-5)
    # and the full per-sub-cell logits, not only their mean
    full = demo.token_logits(_engine_grid(demo, prep, keep1, keep2), *_exit_args(demo, prep, exit1))
    assert torch.allclose(out.logits[0], full, atol=1e-5)


def _engine_grid(demo: DemoBackbone, prep, keep1: torch.Tensor, keep2: torch.Tensor) -> torch.Tensor:
    """The engine's scatter-back by hand: 1 x N x C features, each token frozen where it left."""
    blocks = demo.net.vit.blocks
    x = blocks[0](demo.embed(prep))
    full = x[:, 1:].clone()
    x = torch.cat([x[:, :1], x[:, 1:][:, keep1]], dim=1)
    x = blocks[1](x)
    full[:, keep1] = x[:, 1:]
    pos2 = torch.isin(keep1, keep2)
    x = torch.cat([x[:, :1], x[:, 1:][:, pos2]], dim=1)
    for block in blocks[2:]:
        x = block(x)
    full[:, keep2] = x[:, 1:]
    return full


def _exit_args(demo: DemoBackbone, prep, exit1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = demo.net.vit.blocks[0](demo.embed(prep))
    aux = demo.aux_logits(1, x[0, 1:])
    exited = torch.zeros(64, dtype=torch.bool)
    exited[exit1] = True
    return aux, exited


@torch.no_grad()
def test_a_pruned_token_borrows_from_its_neighbours(demo: DemoBackbone) -> None:
    """With the mixing decoder, changing one token's features changes its neighbours' logits
    (within 2 tokens for 2 stages) and nothing further away."""
    feats = torch.randn(1, 64, demo.embed_dim, generator=torch.Generator().manual_seed(0))
    base = demo.token_logits(feats)
    moved = feats.clone()
    moved[0, 3 * 8 + 3] += 5.0  # token (3, 3)
    diff = (demo.token_logits(moved) - base).abs().amax(dim=(1, 2)).view(8, 8)
    assert (diff[1:6, 1:6] > 0).all()
    assert diff[6:, :].max() == 0 and diff[:, 6:].max() == 0


def test_decoder_macs_match_the_counter(demo: DemoBackbone, image: np.ndarray) -> None:
    prep = demo.prepare(image)
    feats = torch.randn(1, 64, demo.embed_dim)
    measured, _ = measure_macs(lambda: demo.token_logits(feats))
    assert measured == demo.decode_macs(prep)
    assert demo.decode_macs(prep) > 64 * demo.embed_dim * len(CLASSES) * 16  # the mixer counts


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["prune", "exit", "plain"])
def test_sampled_schedules_are_valid(demo: DemoBackbone, seed: int, mode: str) -> None:
    """Every kind of schedule the trainer draws runs through forward_pruned on a batch."""
    cfg = demo.net.cfg
    p_prune, p_exit = {"prune": (1.0, 0.0), "exit": (0.0, 1.0), "plain": (0.0, 0.0)}[mode]
    steps = sample_schedule(np.random.default_rng(seed), 2, 64, cfg.aux_layers, cfg.depth, p_prune, p_exit)
    assert (len(steps) > 0) == (mode != "plain")
    with torch.no_grad():
        out = demo.net.forward_pruned(torch.randn(2, 3, 128, 128), steps)
    assert out.logits.shape == (2, 64, 3, 16)
    assert 1 <= out.alive.shape[1] <= 64 and (out.alive.shape[1] < 64) == (mode != "plain")
    assert out.exited.any() == (mode == "exit")
    # exited and alive tokens are disjoint; exits only where a head is
    assert not out.exited.gather(1, out.alive).any()
    if mode == "exit":
        assert set(steps) <= set(cfg.aux_layers)
