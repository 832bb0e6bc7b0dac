"""Engine on a timm ViT: the pruned path is exact at rate 0, tokens really go, MACs add up."""

import numpy as np
import pytest
import torch

from prune_viz.engine import Plan, run_baseline, run_pruned, validate_plan
from prune_viz.flops import measure_macs
from prune_viz.methods.base import PRUNED
from prune_viz.methods.baselines import EVIT, NONE, RANDOM, NoParams, RateParams


def final_grid(backbone, image, plan):
    """Final patch features on the full grid from a pruned run (via a capturing decode)."""
    captured = {}
    original = backbone.decode

    def capture(patch_grid, prefix, prep, exit_logits=None, exited=None):
        captured["grid"], captured["prefix"] = patch_grid.clone(), prefix.clone()
        return original(patch_grid, prefix, prep, exit_logits, exited)

    backbone.decode = capture
    try:
        trace = run_pruned(backbone, image, plan)
    finally:
        del backbone.decode
    return trace, captured


def test_rate_zero_through_pruned_path_matches_unmodified_model(tiny_timm, rgb_image):
    prep = tiny_timm.prepare(rgb_image)
    with torch.no_grad():
        reference = tiny_timm.model.forward_features(prep.pixels)  # timm's own forward
    for spec, params in ((RANDOM, RateParams(0.0)), (NONE, NoParams())):
        trace, cap = final_grid(tiny_timm, rgb_image, Plan(spec, params, (1, 2)))
        assert [r.tokens for r in trace.layers] == [64] * 4
        got = tiny_timm.model.norm(torch.cat([cap["prefix"], cap["grid"]], dim=1))
        assert (got - reference).abs().max().item() < 1e-4


def test_pruned_blocks_compute_only_kept_tokens(tiny_timm, rgb_image):
    plan = Plan(RANDOM, RateParams(0.5), (1, 2), seed=3)
    trace = run_pruned(tiny_timm, rgb_image, plan)
    assert [r.tokens for r in trace.layers] == [64, 32, 16, 16]  # entering each block
    assert trace.steps[0].tokens_kept == 32 and trace.steps[1].tokens_kept == 16
    assert (trace.steps[0].status_grid == PRUNED).sum() == 32
    assert (trace.drop_layer == 1).sum() == 32 and (trace.drop_layer == 2).sum() == 16
    # A block's MACs follow its token count (prefix token included).
    assert trace.layers[2].macs < trace.layers[1].macs


@pytest.mark.parametrize("spec,params", [(NONE, NoParams()), (RANDOM, RateParams(0.5)), (EVIT, RateParams(0.7))])
def test_analytic_macs_match_flop_counter(tiny_timm, rgb_image, spec, params):
    plan = Plan(spec, params, (1, 3))
    base = run_baseline(tiny_timm, rgb_image)
    measured_base, _ = measure_macs(lambda: run_baseline(tiny_timm, rgb_image))
    assert measured_base == base.macs
    trace = run_pruned(tiny_timm, rgb_image, plan, baseline=base)
    measured, _ = measure_macs(lambda: run_pruned(tiny_timm, rgb_image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * measured


def test_cached_prefix_gives_same_result_as_from_scratch(tiny_timm, rgb_image):
    plan = Plan(EVIT, RateParams(0.5), (2,))
    base = run_baseline(tiny_timm, rgb_image, attn_layers=(2,))
    cached = run_pruned(tiny_timm, rgb_image, plan, baseline=base)
    scratch = run_pruned(tiny_timm, rgb_image, plan)
    assert torch.equal(cached.kept_per_step[0], scratch.kept_per_step[0])
    assert np.array_equal(cached.seg.labels, scratch.seg.labels)
    assert cached.macs == scratch.macs
    assert cached.from_cache and not scratch.from_cache


def test_evit_keeps_most_attended_tokens(tiny_timm, rgb_image):
    trace = run_pruned(tiny_timm, rgb_image, Plan(EVIT, RateParams(0.75), (2,)))
    score = trace.steps[0].diagnostics["attention_score"].ravel()
    kept = trace.steps[0].status_grid.ravel() != PRUNED
    assert kept.sum() == 16
    assert score[kept].min() >= score[~kept].max()


def test_random_is_seeded(tiny_timm, rgb_image):
    a = run_pruned(tiny_timm, rgb_image, Plan(RANDOM, RateParams(0.5), (2,), seed=1))
    b = run_pruned(tiny_timm, rgb_image, Plan(RANDOM, RateParams(0.5), (2,), seed=1))
    c = run_pruned(tiny_timm, rgb_image, Plan(RANDOM, RateParams(0.5), (2,), seed=2))
    assert torch.equal(a.kept_per_step[0], b.kept_per_step[0])
    assert not torch.equal(a.kept_per_step[0], c.kept_per_step[0])


@pytest.mark.parametrize("layers,needle", [((), "at least one"), ((4,), "out of range"), ((0,), "out of range"), ((2, 1), "increasing")])
def test_bad_layers_are_refused_with_a_reason(tiny_timm, layers, needle):
    with pytest.raises(ValueError, match=needle):
        validate_plan(tiny_timm, Plan(RANDOM, RateParams(0.5), layers))


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan")])
def test_bad_rate_is_refused(rate):
    with pytest.raises(ValueError):
        RateParams(rate)


def test_measuring_macs_leaves_the_attention_backends_alone():
    """sdpa_kernel(...) flips process-wide switches: a measurement in one request must not
    change which attention kernel another request runs (the load test caught this once)."""
    import torch

    from prune_viz.flops import counter_sees_fused_sdpa

    assert counter_sees_fused_sdpa()  # the fused CPU kernel is counted, so nothing needs forcing
    flags = (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.mem_efficient_sdp_enabled,
             torch.backends.cuda.math_sdp_enabled)
    before = [f() for f in flags]
    inside = measure_macs(lambda: [f() for f in flags])[1]
    assert inside == before
