"""ToMe merging: rate 0 is exact, the merge bookkeeping adds up, MACs include the matching."""

import numpy as np
import pytest
import torch

from prune_viz.engine import Plan, run_baseline, run_pruned
from prune_viz.flops import measure_macs
from prune_viz.methods import tome
from prune_viz.methods.base import KEPT, PRUNED, PruneContext


def ctx_for(x: torch.Tensor, sizes=None, grid=(8, 8)) -> PruneContext:
    n = x.shape[0]
    return PruneContext(layer=3, step=0, num_steps=1, tokens=x, kept_idx=torch.arange(n), grid=grid,
                        patch_size=16, image=torch.zeros(3, 16 * grid[0], 16 * grid[1]), sizes=sizes)


def test_params_are_validated():
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError):
            tome.ToMeParams(bad)


def test_rate_zero_is_exact():
    x = torch.randn(64, 16)
    d = tome.decide(ctx_for(x), tome.ToMeParams(0.0))
    assert torch.equal(d.keep, torch.arange(64)) and torch.equal(d.features, x)
    assert torch.equal(d.merge_into, torch.arange(64)) and (d.status == KEPT).all()


def test_rate_zero_through_engine_matches_unpruned(tiny_demo, rgb_image):
    from prune_viz.backbones import build_backbone

    bb = build_backbone("demo")
    base = run_baseline(bb, rgb_image)
    trace = run_pruned(bb, rgb_image, Plan(tome.SPEC, tome.ToMeParams(0.0), (2,)), baseline=base)
    assert np.array_equal(trace.seg.labels, base.seg.labels) and trace.merged_into is not None


def test_pair_merges_into_its_most_similar_partner_size_weighted():
    # A tokens at even positions, B at odd. Token 0 is a near-copy of token 3; with r = 1 it merges there.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2], [1.0, 0.01]])
    sizes = torch.tensor([3.0, 1.0, 1.0, 1.0])
    d = tome.decide(ctx_for(x, sizes, grid=(2, 2)), tome.ToMeParams(0.25))
    assert d.merge_into.tolist() == [3, 1, 2, 3]
    assert d.keep.tolist() == [1, 2, 3] and d.status.tolist() == [PRUNED, KEPT, KEPT, KEPT]
    expected = (3.0 * x[0] + 1.0 * x[3]) / 4.0  # size-weighted mean
    assert torch.allclose(d.features[2], expected) and torch.equal(d.features[0], x[1])
    assert d.diagnostics["group_size"].tolist() == [0.0, 1.0, 1.0, 4.0]


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8, 0.95])
def test_bookkeeping_over_several_rounds(rate):
    torch.manual_seed(1)
    x = torch.randn(64, 8)
    d = tome.decide(ctx_for(x), tome.ToMeParams(rate))
    n_keep = 64 - int(round(rate * 64))
    assert d.keep.numel() == n_keep and d.features.shape == (n_keep, 8)
    keep = set(d.keep.tolist())
    assert set(d.merge_into.tolist()) == keep  # every token points to a survivor, every survivor to itself
    assert all(int(d.merge_into[k]) == k for k in keep)
    # Each survivor's feature is the plain mean of the original tokens it now stands for.
    for j, k in enumerate(d.keep.tolist()):
        members = (d.merge_into == k).nonzero().flatten()
        assert torch.allclose(d.features[j], x[members].mean(0), atol=1e-5)
    assert d.diagnostics["group_size"].sum() == 64


def test_matching_macs_are_what_the_counter_sees():
    torch.manual_seed(2)
    x = torch.randn(64, 16)
    for rate in (0.3, 0.8):
        macs, d = measure_macs(lambda: tome.decide(ctx_for(x), tome.ToMeParams(rate)))
        _, _, _, _, rounds = tome.merge_rounds(x, torch.ones(64), 64 - d.keep.numel())
        assert macs == 16 * sum(tome.matching_macs(m) for m in rounds) > 0
    assert tome.matching_macs(64) == 32 * 32 and tome.matching_macs(5) == 3 * 2


def test_engine_unmerges_and_counts_matching(tiny_demo, rgb_image):
    from prune_viz.backbones import build_backbone

    bb = build_backbone("demo")
    base = run_baseline(bb, rgb_image)
    plan = Plan(tome.SPEC, tome.ToMeParams(0.5), (1, 2))
    trace = run_pruned(bb, rgb_image, plan, baseline=base, count_decisions=True)
    n = trace.grid[0] * trace.grid[1]
    assert [r.tokens for r in trace.layers] == [n, n // 2, n // 4, n // 4]
    c = bb.embed_dim
    assert trace.macs["decision"] == c * (tome.matching_macs(n) + tome.matching_macs(n // 2))
    rep = trace.merged_into.ravel()
    logits = trace.seg.token_logits
    merged = np.flatnonzero(rep != np.arange(n))
    assert len(merged) == n - n // 4
    # A merged token is decoded with its representative's final feature: identical logits.
    assert torch.equal(logits[merged], logits[rep[merged]])
    # The representatives are the tokens alive to the end.
    assert set(rep.tolist()) == set(trace.kept_per_step[-1].tolist())
