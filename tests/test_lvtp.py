"""LVTP (prune_viz/methods/lvtp.py): entropy maths, clustering, Sobel guidance, rate, decide."""

from __future__ import annotations

import math
import time

import pytest
import torch

from prune_viz.cluster import cosine_kmeans
from prune_viz.methods.base import KEPT, PENDING_KEPT, PRUNED, PruneContext
from prune_viz.methods.lvtp import (
    SPEC,
    LVTPParams,
    decide,
    first_pass,
    minmax_weights,
    multiscale_tsallis,
    prune_order,
    shannon_entropy,
    sobel_magnitude,
    token_alpha,
    token_distribution,
    token_edge_energy,
    tsallis_entropy,
    tsallis_max,
)

GRID = (16, 16)
PATCH = 16


def make_ctx(
    seed: int = 0, n_alive: int | None = None, c: int = 64, image: torch.Tensor | None = None
) -> PruneContext:
    """A hand-built context: random tokens on a 16 x 16 grid, patch 16, 3 x 256 x 256 image."""
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    if n_alive is None:
        kept_idx = torch.arange(n)
    else:
        kept_idx = torch.sort(torch.randperm(n, generator=g)[:n_alive]).values
    nk = kept_idx.numel()
    tokens = torch.randn(nk, c, generator=g) * (1 + torch.rand(nk, 1, generator=g))  # varied norms
    if image is None:
        image = torch.rand(3, GRID[0] * PATCH, GRID[1] * PATCH, generator=g)
    return PruneContext(
        layer=4, step=0, num_steps=1, tokens=tokens, kept_idx=kept_idx, grid=GRID, patch_size=PATCH,
        image=image, seed=seed, num_tokens_total=n,
    )


# ------------------------------------------------------------------------------ entropy maths


@pytest.mark.parametrize("q", [0.3, 0.5, 0.999, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("n", [2, 7, 768])
def test_tsallis_uniform_matches_closed_form(q: float, n: int) -> None:
    p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    expected = (1 - n ** (1 - q)) / (q - 1)
    assert tsallis_entropy(p, q).item() == pytest.approx(expected, rel=1e-9)
    assert tsallis_max(n, q) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.0])
def test_tsallis_one_hot_is_zero(q: float) -> None:
    p = torch.zeros(3, 10)
    p[torch.arange(3), torch.tensor([0, 4, 9])] = 1.0
    assert torch.allclose(tsallis_entropy(p, q), torch.zeros(3), atol=1e-7)
    assert torch.allclose(shannon_entropy(p), torch.zeros(3), atol=1e-7)


def test_tsallis_tends_to_shannon_and_is_continuous_at_one() -> None:
    p = torch.softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    h = shannon_entropy(p)
    assert torch.allclose(tsallis_entropy(p, 1.0), h, rtol=1e-6)
    for q in (1 - 1e-7, 1 + 1e-7):
        assert torch.allclose(tsallis_entropy(p, q), h, rtol=1e-5)
    # Continuity across q = 1 in float64: moving q by 1e-6 moves S by O(1e-6).
    p64 = p.double() / p.double().sum(-1, keepdim=True)  # sum exactly 1, as Eq. 2 assumes
    values = torch.stack([tsallis_entropy(p64, 1 + d) for d in (-1e-6, -1e-9, 0.0, 1e-9, 1e-6)])
    assert (values - shannon_entropy(p64)).abs().max() < 1e-5
    assert tsallis_max(50, 1.0) == pytest.approx(math.log(50))
    # The expm1 form agrees with the literal Eq. 2 away from q = 1.
    for q in (0.5, 1.5):
        literal = (1 - (p64**q).sum(-1)) / (q - 1)
        assert torch.allclose(tsallis_entropy(p64, q), literal, rtol=1e-10)


def test_tsallis_decreasing_in_q() -> None:
    p = torch.softmax(torch.randn(4, 30, generator=torch.Generator().manual_seed(1)), dim=-1).double()
    qs = [0.1, 0.3, 0.5, 0.8, 0.99, 1.0, 1.01, 1.5, 2.0, 3.0]
    values = torch.stack([tsallis_entropy(p, q) for q in qs])  # len(qs) x 4
    assert (values[1:] < values[:-1]).all()


def test_tsallis_handles_zeros_and_rejects_bad_q() -> None:
    p = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert tsallis_entropy(p, 0.5).item() == pytest.approx((1 - 2**0.5) / -0.5, rel=1e-6)
    assert torch.isfinite(tsallis_entropy(p, 0.05))
    for q in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            tsallis_entropy(p, q)


def test_token_distribution_alpha_and_fusion() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100, 32, generator=g) * torch.rand(100, 1, generator=g) * 20
    x[0] *= 1000  # a "high-norm" outlier token must not squash every other alpha to 0
    p = token_distribution(x)
    assert (p > 0).all() and torch.allclose(p.sum(-1), torch.ones(100), atol=1e-5)
    alpha = token_alpha(x)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    assert alpha[0] > 0.99 and alpha[1:].median() == pytest.approx(0.5, abs=0.02)
    assert torch.allclose(token_alpha(x * 7.0), alpha, atol=1e-6)  # layer-scale free
    s, s1, s2, a = multiscale_tsallis(x, 1.5, 0.5)
    assert torch.allclose(s, a * s1 + (1 - a) * s2)
    for t in (s, s1, s2):
        assert ((t >= 0) & (t <= 1 + 1e-6)).all()
    assert torch.allclose(multiscale_tsallis(torch.zeros(3, 8), 1.5, 0.5)[1], torch.ones(3))  # uniform


def test_minmax_weights() -> None:
    w = minmax_weights(torch.tensor([2.0, 4.0, 3.0]))
    assert torch.allclose(w, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(minmax_weights(torch.full((4,), 3.0)), torch.ones(4))


# ----------------------------------------------------------------------------------- k-means


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.eye(16)[:3] * 5.0
    truth = torch.arange(3).repeat_interleave(40)
    return dirs[truth] + 0.3 * torch.randn(120, 16, generator=g), truth


def test_kmeans_recovers_separable_groups_and_is_deterministic() -> None:
    x, truth = _blobs()
    for weights in (None, torch.rand(120, generator=torch.Generator().manual_seed(3))):
        labels, _ = cosine_kmeans(x, 3, iters=10, seed=0, weights=weights)
        # Each true group is one cluster and the three clusters are distinct.
        per_group = [labels[truth == j].unique() for j in range(3)]
        assert all(u.numel() == 1 for u in per_group)
        assert torch.cat(per_group).unique().numel() == 3
        again, _ = cosine_kmeans(x, 3, iters=10, seed=0, weights=weights)
        assert torch.equal(labels, again)
    # On structureless data another seed gives another partition (at least for some seed).
    noise = torch.randn(200, 8, generator=torch.Generator().manual_seed(4))
    base, _ = cosine_kmeans(noise, 5, seed=0)
    assert any(not torch.equal(base, cosine_kmeans(noise, 5, seed=s)[0]) for s in range(1, 6))


def test_weighted_kmeans_keeps_unweighted_behaviour_and_pulls_centres() -> None:
    x, _ = _blobs()
    plain = cosine_kmeans(x, 3, seed=0)
    ones = cosine_kmeans(x, 3, seed=0, weights=torch.ones(120))
    assert torch.equal(plain[0], ones[0]) and torch.allclose(plain[1], ones[1])
    # One cluster of two directions: the centre leans to the heavily weighted member.
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    _, c = cosine_kmeans(pts, 1, iters=2, weights=torch.tensor([1.0, 0.1]))
    assert c[0, 0] > c[0, 1]


def test_first_pass_keeps_high_entropy_half_of_clusters() -> None:
    x, truth = _blobs()
    score = truth.float()  # group 2 has the highest "entropy", group 0 the lowest
    # Seed 4 draws one initial centre per group. With other draws the weighted k-means can lose
    # group 0: its weight is 0 (Eq. 5 min), so it cannot hold a centre shared with heavier
    # tokens -- the price of Eq. 8's weighting, written down in docs/methods/lvtp.md.
    keep, removed, rank = first_pass(x, score, minmax_weights(score), 3, 10, 4)
    assert torch.equal(keep, truth >= 1)  # ceil(3 / 2) = 2 clusters kept
    assert not removed.any()  # drop = 0: everything not kept is pending
    assert torch.equal(rank, 2 - truth)  # rank 0 = highest mean score
    # drop removes the lowest-entropy clusters outright, never one of the kept half.
    keep, removed, _ = first_pass(x, score, minmax_weights(score), 3, 10, 4, drop=0.34)
    assert torch.equal(removed, truth == 0) and torch.equal(keep, truth >= 1)
    keep, removed, _ = first_pass(x, score, minmax_weights(score), 3, 10, 4, drop=0.5)
    assert torch.equal(removed, truth == 0)  # at most the clusters outside the kept half


def test_prune_order_removes_whole_clusters_then_splits_by_value() -> None:
    rank = torch.tensor([1, 0, 1, 0, 2])
    value = torch.tensor([0.1, 0.9, 0.05, 0.2, 0.0])
    assert prune_order(rank, value).tolist() == [3, 1, 2, 0, 4]


# ------------------------------------------------------------------------------------ Sobel


def test_sobel_energy_peaks_on_a_vertical_edge() -> None:
    image = torch.zeros(3, 256, 256)
    image[:, :, 72:] = 1.0  # edge at x = 72: inside token column 4 (pixels 64..79)
    sobel = sobel_magnitude(image)
    assert sobel.shape == (256, 256)
    assert sobel[:, 71:73].min() > 0 and sobel[:, :70].abs().max() == 0 and sobel[:, 74:].abs().max() == 0
    energy = token_edge_energy(sobel, GRID, PATCH, torch.arange(256)).reshape(GRID)
    assert (energy[:, 4] == energy.max()).all() and energy.max() > 0
    others = torch.cat([energy[:, :4], energy[:, 5:]], dim=1)
    assert others.abs().max() < 1e-6
    # Alive-token subsets read the same map through kept_idx.
    idx = torch.tensor([3, 4, 20, 100])
    assert torch.equal(token_edge_energy(sobel, GRID, PATCH, idx), energy.reshape(-1)[idx])


# --------------------------------------------------------------------------------- decide


def _counts(d) -> tuple[int, int, int]:
    s = d.status
    return int((s == KEPT).sum()), int((s == PENDING_KEPT).sum()), int((s == PRUNED).sum())


def test_decide_shapes_status_and_diagnostics() -> None:
    for n_alive in (None, 100):
        ctx = make_ctx(n_alive=n_alive)
        nk = ctx.tokens.shape[0]
        d = decide(ctx, LVTPParams(drop=0.0))
        assert d.status.shape == (nk,) and d.status.dtype == torch.long
        assert set(d.status.unique().tolist()) <= {KEPT, PENDING_KEPT, PRUNED}
        assert torch.equal(d.keep, torch.nonzero(d.status != PRUNED).flatten())
        diag = d.diagnostics
        per_token = ("entropy_q1", "entropy_q2", "entropy", "alpha", "score", "weight")
        for name in per_token + ("cluster1", "cluster2", "edge_energy"):
            assert diag[name].shape == (nk,), name
        assert diag["sobel"].shape == ctx.image.shape[1:]
        assert diag["n_pending"].ndim == 0
        pending = d.status != KEPT
        assert int(diag["n_pending"]) == int(pending.sum())
        assert ((diag["cluster2"] >= 0) == pending).all()
        assert ((diag["alpha"] >= 0) & (diag["alpha"] <= 1)).all()
        k_eff = int(diag["cluster1"].max()) + 1
        assert k_eff <= LVTPParams(drop=0.0).k


def test_rate_ends_and_monotone_nested_kept_sets() -> None:
    ctx = make_ctx()
    nk = ctx.tokens.shape[0]
    d0 = decide(ctx, LVTPParams(rate=0.0, drop=0.0))
    kept0, pend0, pruned0 = _counts(d0)
    assert pruned0 == 0 and d0.keep.numel() == nk and pend0 > 0  # rate 0 prunes nothing
    d99 = decide(ctx, LVTPParams(rate=0.99, drop=0.0))
    kept99, pend99, _ = _counts(d99)
    assert kept99 == kept0  # the first pass does not depend on the rate
    assert pend99 == pend0 - round(0.99 * pend0) and pend99 <= math.ceil(0.01 * pend0)
    prev = set(range(nk))
    for rate in (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 0.99):
        d = decide(ctx, LVTPParams(rate=rate, drop=0.0))
        assert _counts(d)[1] == pend0 - round(rate * pend0)  # the rate is hit exactly
        keep = set(d.keep.tolist())
        assert keep <= prev  # a higher rate only removes more
        prev = keep


@pytest.mark.parametrize("entropy", ["mtsallis", "shannon", "none"])
@pytest.mark.parametrize("second", ["sobel", "simple", "none"])
def test_ablation_modes_run(entropy: str, second: str) -> None:
    ctx = make_ctx(seed=1)
    d = decide(ctx, LVTPParams(entropy=entropy, second=second, drop=0.0, rate=0.5))
    kept, pend_kept, pruned = _counts(d)
    n_pending = int(d.diagnostics["n_pending"])
    assert kept >= 1 and kept + n_pending == ctx.tokens.shape[0]
    if second == "none":
        assert pend_kept == 0 and pruned == n_pending
        assert (d.diagnostics["cluster2"] == -1).all()
    else:
        assert pend_kept == n_pending - round(0.5 * n_pending)
    if entropy == "none":
        assert torch.equal(d.diagnostics["weight"], torch.ones(ctx.tokens.shape[0]))


def test_sobel_mode_saves_edge_tokens() -> None:
    # Random tokens (no semantic signal), one strong vertical edge: the pending tokens saved by
    # the Sobel-guided pass must be those on the edge column first.
    image = torch.zeros(3, 256, 256)
    image[:, :, 72:] = 1.0
    ctx = make_ctx(seed=2, image=image)
    d = decide(ctx, LVTPParams(rate=0.9, drop=0.0))
    edge = d.diagnostics["edge_energy"]
    saved = d.status == PENDING_KEPT
    pruned = d.status == PRUNED
    assert saved.any() and pruned.any()
    assert edge[saved].min() >= edge[pruned].max()


def test_decide_is_deterministic_and_seed_dependent() -> None:
    ctx = make_ctx(seed=3)
    a, b = decide(ctx, LVTPParams(drop=0.0)), decide(ctx, LVTPParams(drop=0.0))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.status, b.status)
    for name, value in a.diagnostics.items():
        assert torch.equal(value, b.diagnostics[name]), name


def test_decide_tiny_inputs_keep_at_least_one() -> None:
    ctx = make_ctx(n_alive=1)
    d = decide(ctx, LVTPParams(rate=0.99, drop=0.0))
    assert d.keep.tolist() == [0]
    ctx = make_ctx(n_alive=3)
    assert decide(ctx, LVTPParams(rate=0.99, second="none", drop=0.0)).keep.numel() >= 1


# ----------------------------------------------------------------------------- params, gamma


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"q1": 1.0}, "q1 must be > 1"),
        ({"q1": 0.7}, "q1 must be > 1"),
        ({"q2": 1.0}, "q2 must be in"),
        ({"q2": 1.3}, "q2 must be in"),
        ({"q2": 0.0}, "q2 must be in"),
        ({"rate": 1.0}, "rate must be in"),
        ({"rate": -0.1}, "rate must be >= 0"),
        ({"rate": float("nan")}, "finite"),
        ({"q1": float("nan")}, "finite"),
        ({"k": 1}, "k must be >= 2"),
        ({"k2": 1}, "k2 must be >= 2"),
        ({"iters": 0}, "iters must be >= 1"),
        ({"k": 2.5}, "k must be an integer"),
        ({"entropy": "renyi"}, "entropy must be one of"),
        ({"second": "canny"}, "second must be one of"),
    ],
)
def test_params_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LVTPParams(**kwargs)


def test_params_defaults_and_spec() -> None:
    p = LVTPParams()
    assert (p.q1, p.q2, p.rate, p.drop, p.entropy, p.second) == (1.5, 0.5, 0.6, 0.125, "mtsallis", "sobel")
    assert SPEC.name == "lvtp" and SPEC.params_cls is LVTPParams and SPEC.decide is decide
    assert not SPEC.needs_attention and not SPEC.needs_aux and SPEC.description


def test_decision_overhead_is_small_at_sam_scale() -> None:
    # Nk = 4096, C = 768, 1024^2 image (SAM ViT-B at 1024): budget 5 % of ~10 s. Measured
    # ~70 ms on 2 idle cores, ~150 ms on 1 thread of a busy machine, but up to ~1.2 s with 2
    # threads when other jobs hold the cores (thread oversubscription). The bound is a guard
    # against accidental per-token Python loops, loose enough not to flake on a busy machine.
    n = 64 * 64
    ctx = PruneContext(
        layer=6, step=0, num_steps=1, tokens=torch.randn(n, 768), kept_idx=torch.arange(n),
        grid=(64, 64), patch_size=16, image=torch.rand(3, 1024, 1024), num_tokens_total=n,
    )
    decide(ctx, LVTPParams())
    t0 = time.perf_counter()
    decide(ctx, LVTPParams())
    assert time.perf_counter() - t0 < 5.0


def test_drop_removes_lowest_entropy_clusters_even_at_rate_zero() -> None:
    ctx = make_ctx()
    two_state = decide(ctx, LVTPParams(rate=0.0, drop=0.0))
    three_state = decide(ctx, LVTPParams(rate=0.0, drop=0.25))
    assert two_state.keep.numel() == ctx.tokens.shape[0]  # nothing pruned
    removed = three_state.status == PRUNED
    assert 0 < removed.sum() < ctx.tokens.shape[0]
    # the removed tokens are the lowest-ranked first-pass clusters
    rank = three_state.diagnostics["cluster1"]
    assert rank[removed].min() > rank[~removed].max()
