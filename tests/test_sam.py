"""SAM adapter: the subset path is exact, MACs are exact, checkpoints load safely.

Models are built with random weights at img_size 256 (16 x 16 token grid; windowed blocks pad it
to 28 x 28, so every window but one has pad cells). SAM zero-initialises the relative-position
tables and the absolute position embedding: the fixtures fill them with noise so that the
rel-pos code is really exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from prune_viz.backbones.sam import SamBackbone, build_sam
from prune_viz.backbones.sam_variants import SAM_VARIANTS, _build_sam_model
from prune_viz.checkpoints import CheckpointError
from prune_viz.engine import Plan, run_baseline, run_pruned
from prune_viz.flops import measure_macs
from prune_viz.methods.baselines import EVIT, NONE, RANDOM, NoParams, RateParams

IMG = 256


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread here: on a CPU shared with other jobs, two threads spend their time in
    barriers of the many small per-window operations (each waits for a descheduled partner)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_positions(sam) -> None:
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        enc = sam.image_encoder
        enc.pos_embed.copy_(torch.randn(enc.pos_embed.shape, generator=g) * 0.5)
        for blk in enc.blocks:
            for t in (blk.attn.rel_pos_h, blk.attn.rel_pos_w):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def vit_b() -> SamBackbone:
    """The real sam_vit_b configuration (12 blocks, global 3/6/9/12) at img_size 256."""
    torch.manual_seed(0)
    bb = build_sam("sam_vit_b", img_size=IMG, random_weights=True, points_per_side=4)
    _randomise_positions(bb.sam)
    return bb


@pytest.fixture(scope="module")
def tiny() -> SamBackbone:
    """4 narrow blocks (window, global, window, global) for the slower reference checks."""
    torch.manual_seed(0)
    sam = _build_sam_model(embed_dim=96, depth=4, num_heads=3, global_attn_indexes=(1, 3), img_size=IMG)
    _randomise_positions(sam)
    return SamBackbone(sam, "sam_tiny", points_per_side=3)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((180, 240, 3)) * 255).astype(np.uint8)  # landscape: SAM pads the bottom
    img[40:120, 50:150] = (30, 200, 60)
    return img


@pytest.fixture(scope="module")
def vit_b_file(vit_b, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "vit_b_256.pth"
    torch.save(vit_b.sam.state_dict(), path)
    return path


def final_grid(backbone, run):
    """Final grid features 1 x N x C handed to decode by ``run()`` (captured, then restored)."""
    captured = {}
    original = backbone.decode

    def capture(patch_grid, prefix, prep, exit_logits=None, exited=None):
        captured["grid"] = patch_grid.clone()
        return original(patch_grid, prefix, prep, exit_logits, exited)

    backbone.decode = capture
    try:
        result = run()
    finally:
        del backbone.decode
    return result, captured["grid"]


# --- 1. rate 0 through the subset path == the unmodified model ------------------------------------
def test_layer_mapping_and_defaults(vit_b):
    assert vit_b.global_layers == (3, 6, 9, 12)
    assert [vit_b.block_kind(layer) for layer in (1, 3, 6, 7)] == ["window", "global", "global", "window"]
    assert vit_b.default_layers() == (6,)
    assert vit_b.grid == (16, 16) and vit_b.num_prefix_tokens == 0
    for v in SAM_VARIANTS.values():  # LVTP's layer is a global block (1-based = 0-based + 1)
        assert all(layer - 1 in v.global_attn_indexes for layer in v.default_layers)
    assert SAM_VARIANTS["sam_vit_h"].default_layers == (16,)


def test_rate_zero_subset_path_matches_segment_anything(vit_b, image):
    base, base_grid = final_grid(vit_b, lambda: run_baseline(vit_b, image))
    with torch.no_grad():
        reference = vit_b.sam.image_encoder(base.prep.pixels)  # segment-anything's own forward
    assert (base.seg.extra["image_embedding"] - reference).abs().max().item() < 1e-4
    # Prune (nothing) after block 2: blocks 3..12 (global and windowed) run on the subset path.
    trace, grid = final_grid(vit_b, lambda: run_pruned(vit_b, image, Plan(NONE, NoParams(), (2,))))
    assert [r.tokens for r in trace.layers] == [256] * 12
    assert (grid - base_grid).abs().max().item() < 1e-4
    assert (trace.seg.extra["image_embedding"] - reference).abs().max().item() < 1e-4


# --- 2. a real subset == the unmodified attention with non-kept keys masked out -------------------
def masked_reference(block, x_full, kept_idx, grid):
    """Unmodified-model arithmetic on the full grid (segment-anything's window_partition /
    add_decomposed_rel_pos), with -inf for keys that are not kept; kept rows picked at the end.
    Returns (1 x Nk x C, Nk attention received averaged over heads and kept queries)."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition, window_unpartition

    gh, gw = grid
    attn, ws = block.attn, block.window_size
    c = x_full.shape[-1]
    heads = attn.num_heads
    xs = x_full.reshape(1, gh, gw, c)
    y = block.norm1(xs)
    kept_map = torch.zeros(1, gh, gw, 1)
    kept_map.view(-1)[kept_idx] = 1.0
    dropped = 1.0 - kept_map  # pad cells (added by window_partition as 0) stay visible keys
    if ws:
        y, pad_hw = window_partition(y, ws)
        dropped, _ = window_partition(dropped, ws)
        kept_map, _ = window_partition(kept_map, ws)  # pad cells are no queries of interest
    b, hh, ww, _ = y.shape
    n = hh * ww
    qkv = attn.qkv(y).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, n, -1).unbind(0)
    a = add_decomposed_rel_pos((q * attn.scale) @ k.transpose(-2, -1), q, attn.rel_pos_h, attn.rel_pos_w, (hh, ww), (hh, ww))
    a = a.view(b, heads, n, n).masked_fill(dropped.view(b, 1, 1, n) > 0.5, float("-inf"))
    p = a.softmax(-1)
    out = (p @ v.view(b, heads, n, -1)).permute(0, 2, 1, 3).reshape(b, hh, ww, c)
    out = attn.proj(out)
    # received: mean over heads and over the kept queries of the key's window
    kept_q = kept_map.view(b, 1, n, 1)
    recv = (p.nan_to_num(0.0) * kept_q).sum(dim=(1, 2)) / (heads * kept_q.sum(dim=2).clamp(min=1).view(b, 1))
    if ws:
        out = window_unpartition(out, ws, pad_hw, (gh, gw))
        recv = window_unpartition(recv.view(b, ws, ws, 1), ws, pad_hw, (gh, gw))
    x = xs + out
    x = x + block.mlp(block.norm2(x))
    return x.reshape(1, gh * gw, c)[:, kept_idx], recv.reshape(-1)[kept_idx]


@pytest.mark.parametrize("backbone_name", ["tiny", "vit_b"])
def test_subset_matches_masked_full_attention(backbone_name, request):
    bb = request.getfixturevalue(backbone_name)
    grid = bb.grid
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(5)
    x_full = torch.randn(1, n, bb.embed_dim, generator=g)  # non-kept rows are garbage that must not leak
    kept = torch.sort(torch.randperm(n, generator=g)[: n // 2]).values
    layers = (1, 2) if backbone_name == "tiny" else (5, 6)  # one windowed, one global block each
    with torch.no_grad():
        for layer in layers:
            out = bb.run_block(layer, x_full[:, kept], kept, grid, want_attn=True)
            ref_x, ref_recv = masked_reference(bb._block(layer), x_full, kept, grid)
            assert (out.x - ref_x).abs().max().item() < 1e-4, bb.block_kind(layer)
            assert (out.received - ref_recv).abs().max().item() < 1e-5, bb.block_kind(layer)
            assert out.cls_attn is None


# Chunk sizes (floats of scores per chunk) for the full-grid path with statistics: the default
# (whole 16 x 16 grid, or several windows, in one chunk), 3 query rows per chunk of a global
# block with a shorter last chunk (tiny: 3 heads x 256 keys x 16 columns x 3 rows), and one
# window / one query row per chunk.
@pytest.mark.parametrize("chunk", [None, 3 * 256 * 16 * 3, 1])
def test_full_path_statistics_equal_subset_statistics(tiny, chunk, monkeypatch):
    from prune_viz.backbones import sam_attention

    if chunk is not None:
        monkeypatch.setattr(sam_attention, "CHUNK_ELEMENTS", chunk)
    n = tiny.grid[0] * tiny.grid[1]
    x = torch.randn(1, n, tiny.embed_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for layer in (1, 2):
            full = tiny.run_block(layer, x, None, tiny.grid, want_attn=True)
            sub = tiny.run_block(layer, x, torch.arange(n), tiny.grid, want_attn=True)
            plain = tiny.run_block(layer, x, None, tiny.grid)  # segment-anything's own Block
            assert plain.received is None
            # statistics never change the output (same arithmetic as the block, chunked)
            assert torch.allclose(full.x, plain.x, rtol=1e-5, atol=1e-6), tiny.block_kind(layer)
            assert (full.x - sub.x).abs().max().item() < 1e-5
            assert (full.received - sub.received).abs().max().item() < 1e-6
            keep = n // 3  # what EViT keeps: the same tokens either way
            assert torch.equal(torch.topk(full.received, keep).indices.sort().values,
                               torch.topk(sub.received, keep).indices.sort().values)
    assert abs(float(sub.received.sum()) - 1.0) < 1e-5  # global block: each query's row sums to 1


def test_full_path_statistics_chunks_shared_among_threads(tiny, monkeypatch):
    """With 2 intra-op threads the chunks run on two one-thread workers: the same numbers as one
    thread (chunk results land in their own slots, summed in chunk order), and a FLOP counter
    (per-thread) still sees every multiply-add because the chunks then stay on its thread."""
    from prune_viz.backbones import sam_attention
    from prune_viz.threads import _runtimes

    if _runtimes() is None:
        pytest.skip("no per-thread OpenMP control on this platform: chunks run on the calling thread")
    monkeypatch.setattr(sam_attention, "CHUNK_ELEMENTS", 3 * 256 * 16 * 3)
    n = tiny.grid[0] * tiny.grid[1]
    x = torch.randn(1, n, tiny.embed_dim, generator=torch.Generator().manual_seed(3))
    workers = []
    real_share = sam_attention._share

    def spy(run, count):
        workers.append(min(torch.get_num_threads(), count))
        real_share(run, count)

    monkeypatch.setattr(sam_attention, "_share", spy)
    with torch.no_grad():
        for layer in (1, 2):
            one = tiny.run_block(layer, x, None, tiny.grid, want_attn=True)
            torch.set_num_threads(2)
            try:
                two = tiny.run_block(layer, x, None, tiny.grid, want_attn=True)
                measured, _ = measure_macs(lambda: tiny.run_block(layer, x, None, tiny.grid, want_attn=True))
            finally:
                torch.set_num_threads(1)
            assert torch.equal(one.x, two.x) and torch.equal(one.received, two.received), tiny.block_kind(layer)
            assert measured == tiny.block_macs(layer, None, tiny.grid, want_attn=True) == tiny.block_macs(layer, None, tiny.grid)
    assert workers[:2] == [1, 2]


# --- 3. MACs ----------------------------------------------------------------------------------
def test_full_block_macs_equal_flop_counter(vit_b, image):
    prep = vit_b.prepare(image)
    gh, gw = prep.grid
    measured, _ = measure_macs(lambda: vit_b.sam.image_encoder.patch_embed(prep.pixels))
    assert measured == vit_b.embed_macs(prep)
    x = torch.randn(1, gh, gw, vit_b.embed_dim)
    for layer in (1, 3):  # a windowed and a global block of the unmodified encoder
        block = vit_b._block(layer)
        measured, _ = measure_macs(lambda: block(x))
        assert measured == vit_b.block_macs(layer, None, prep.grid), vit_b.block_kind(layer)
        measured, _ = measure_macs(lambda: vit_b.run_block(layer, x.flatten(1, 2), None, prep.grid, want_attn=True))
        assert measured == vit_b.block_macs(layer, None, prep.grid, want_attn=True)


def test_subset_block_macs_equal_flop_counter(vit_b):
    grid = vit_b.grid
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(7)
    for frac in (1.0, 0.5, 0.1):
        kept = torch.sort(torch.randperm(n, generator=g)[: max(1, int(frac * n))]).values
        x = torch.randn(1, kept.numel(), vit_b.embed_dim)
        for layer in (4, 6):
            for want in (False, True):
                measured, _ = measure_macs(lambda: vit_b.run_block(layer, x, kept, grid, want_attn=want))
                assert measured == vit_b.block_macs(layer, kept, grid, want_attn=want)
    # Pruned blocks really are cheaper; rate 0 on the subset path skips the pad queries.
    all_idx = torch.arange(n)
    assert vit_b.block_macs(4, all_idx, grid) < vit_b.block_macs(4, None, grid)
    assert vit_b.block_macs(6, all_idx, grid) == vit_b.block_macs(6, None, grid)


def test_engine_macs_match_flop_counter(tiny, image):
    tiny.pred_iou_thresh = 2.0  # no mask survives: the measured decode is exactly the model's arithmetic
    try:
        for spec, params in ((RANDOM, RateParams(0.5)), (EVIT, RateParams(0.5))):
            plan = Plan(spec, params, (1, 2))
            trace = run_pruned(tiny, image, plan)
            assert [r.tokens for r in trace.layers] == [256, 128, 64, 64]
            measured, _ = measure_macs(lambda: run_pruned(tiny, image, plan, replay=trace.kept_per_step))
            replayed = run_pruned(tiny, image, plan, replay=trace.kept_per_step)
            expected = replayed.macs["total"] - replayed.macs["decision"]
            assert measured == expected
        base = run_baseline(tiny, image)
        measured, _ = measure_macs(lambda: run_baseline(tiny, image))
        assert measured == base.macs
    finally:
        tiny.pred_iou_thresh = 0.7


# --- 4. checkpoints ---------------------------------------------------------------------------
def test_checkpoint_loads_and_matches(vit_b, vit_b_file):
    loaded = build_sam("sam_vit_b", checkpoint=str(vit_b_file), img_size=IMG, points_per_side=4)
    ref = vit_b.sam.state_dict()
    got = loaded.sam.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert torch.equal(loaded.sam.pixel_mean, vit_b.sam.pixel_mean)
    # Another input size: pos_embed and the global rel-pos tables are resampled to the new grid.
    bigger = build_sam("sam_vit_b", checkpoint=str(vit_b_file), img_size=320, points_per_side=2)
    assert bigger.grid == (20, 20)
    assert bigger.sam.image_encoder.pos_embed.shape == (1, 20, 20, 768)
    assert bigger.sam.image_encoder.blocks[2].attn.rel_pos_h.shape == (39, 64)
    assert torch.equal(bigger.sam.image_encoder.blocks[0].attn.rel_pos_h, ref["image_encoder.blocks.0.attn.rel_pos_h"])


def test_checkpoint_from_cache_folder_and_download(vit_b_file, tmp_path, monkeypatch):
    import prune_viz.backbones.sam_variants as sam_variants

    monkeypatch.setenv("PRUNE_VIZ_CHECKPOINTS", str(tmp_path))
    calls = []

    def fake_download(url, dest, sha256, progress=None, timeout=30.0):
        calls.append((url, dest.name, sha256))
        os.symlink(vit_b_file, dest)
        return dest

    monkeypatch.setattr(sam_variants, "download_file", fake_download)
    v = SAM_VARIANTS["sam_vit_b"]
    build_sam("sam_vit_b", img_size=IMG, download=True, points_per_side=2)
    assert calls == [(v.url, v.filename, v.sha256)]
    build_sam("sam_vit_b", img_size=IMG, download=True, points_per_side=2)  # now found in the cache folder
    assert len(calls) == 1


def test_wrong_variant_is_named(vit_b_file):
    with pytest.raises(CheckpointError, match="does not fit sam_vit_l") as err:
        build_sam("sam_vit_l", checkpoint=str(vit_b_file), img_size=IMG)
    assert "sam_vit_b" in str(err.value)  # and says what the file looks like


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned_xyz"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        build_sam("sam_vit_b", checkpoint=str(path), img_size=IMG)
    assert not marker.exists()


def test_missing_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("PRUNE_VIZ_CHECKPOINTS", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as err:
        build_sam("sam_vit_b", img_size=IMG)
    msg = str(err.value)
    for needle in ("--checkpoint", "PRUNE_VIZ_CHECKPOINTS", "--download", "sam_vit_b_01ec64.pth"):
        assert needle in msg
    with pytest.raises(ValueError, match="unknown SAM variant"):
        build_sam("sam_vit_x", random_weights=True)


# --- 5. outputs -------------------------------------------------------------------------------
def test_decode_and_prompted_masks_at_original_size(tiny, image):
    prep = tiny.prepare(image)
    assert prep.valid_hw == (192, 256) and prep.orig_hw == image.shape[:2]
    assert prep.pixels.shape == (1, 3, IMG, IMG) and prep.image01.shape == (3, IMG, IMG)
    # image01 is the model input before normalisation, padding included
    assert torch.allclose((prep.image01 * 255 - tiny.mean) / tiny.std, prep.pixels[0], atol=1e-4)
    tiny.pred_iou_thresh = -1e9  # random weights: keep every mask so painting is exercised
    try:
        trace = run_pruned(tiny, image, Plan(RANDOM, RateParams(0.5), (2,)))
    finally:
        tiny.pred_iou_thresh = 0.7
    seg = trace.seg
    assert seg.kind == "segments" and seg.labels.dtype == np.int32
    assert seg.labels.shape == image.shape[:2]
    assert seg.labels.max() >= 1 and seg.extra["image_embedding"].shape == (1, 256, 16, 16)
    mask, score = tiny.predict_masks(seg, prep, points=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    assert mask.shape == image.shape[:2] and mask.dtype == bool and isinstance(score, float)
    mask, _ = tiny.predict_masks(seg.extra["image_embedding"], prep, box=np.array([50, 40, 150, 120]))
    assert mask.shape == image.shape[:2]
    with pytest.raises(ValueError):
        tiny.predict_masks(seg, prep)
