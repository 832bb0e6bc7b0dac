"""Corruptions (data/corrupt.py), the decision-stability definition and `bench --noise`
(bench_noise.py): levels get monotonically worse, draws are seeded, shapes and dtypes hold."""

from __future__ import annotations

import argparse
import csv
from types import SimpleNamespace

import numpy as np
import pytest

from prune_viz.bench_noise import flip_share, keep_mask, variants
from prune_viz.data import corrupt as C


@pytest.fixture(scope="module")
def scene():
    from prune_viz.data import synthetic

    return synthetic.split_scene("val", 0, 128)[0]


@pytest.mark.parametrize("kind", list(C.CORRUPTIONS))
def test_shape_dtype_and_seeded(kind, scene):
    c = C.CORRUPTIONS[kind]
    assert len(c.levels) >= 4
    for level in c.levels:
        a = C.corrupt(scene, kind, level, seed=3)
        assert a.shape == scene.shape and a.dtype == np.uint8
        assert np.array_equal(a, C.corrupt(scene, kind, level, seed=3))
        assert not np.array_equal(a, scene)
    assert scene.flags.writeable and np.array_equal(scene, scene.copy())  # input untouched


@pytest.mark.parametrize("kind", list(C.CORRUPTIONS))
def test_levels_get_monotonically_worse(kind, scene):
    """Mean absolute change from the clean image grows with every level (mildest first)."""
    c = C.CORRUPTIONS[kind]
    err = [np.abs(C.corrupt(scene, kind, lv, seed=0).astype(float) - scene).mean() for lv in c.levels]
    assert all(b > a for a, b in zip(err, err[1:])), err
    if c.worse_when_lower:
        assert list(c.levels) == sorted(c.levels, reverse=True)
    else:
        assert list(c.levels) == sorted(c.levels)


def test_random_draws_depend_on_seed(scene):
    for kind in ("gaussian", "saltpepper"):
        assert not np.array_equal(C.corrupt(scene, kind, C.CORRUPTIONS[kind].levels[1], seed=0),
                                  C.corrupt(scene, kind, C.CORRUPTIONS[kind].levels[1], seed=1))


def test_salt_pepper_counts_scale_with_area():
    img = np.full((256, 256, 3), 128, np.uint8)  # a quarter of 512 x 512
    out = C.salt_pepper(img, 1000, seed=0)
    changed = np.any(out != img, axis=2)
    assert changed.sum() == 250
    assert set(np.unique(out[changed])) <= {0, 255}


def test_bad_input_and_kind():
    with pytest.raises(ValueError):
        C.corrupt(np.zeros((8, 8), np.uint8), "blur", 1.0)
    with pytest.raises(ValueError):
        C.corrupt(np.zeros((8, 8, 3), np.uint8), "fog", 1.0)


def test_stability_on_a_constructed_case():
    """4 x 4 grid, 12 blocks: clean keeps the left half; noisy keeps the left half but drops
    one token at layer 6 and revives one on the right. A token that only leaves at another layer
    (3 vs 6) is not a flip: the decision is the final alive set."""
    clean = np.full((4, 4), 12, np.int16)
    clean[:, 2:] = 6
    noisy = clean.copy()
    noisy[0, 0] = 6  # kept -> pruned: flip
    noisy[3, 3] = 12  # pruned -> kept: flip
    noisy[1, 2] = 3  # pruned earlier, still pruned: no flip
    keep_c = keep_mask(SimpleNamespace(drop_layer=clean, num_blocks=12))
    keep_n = keep_mask(SimpleNamespace(drop_layer=noisy, num_blocks=12))
    assert keep_c.sum() == 8
    assert flip_share(keep_c, keep_n) == pytest.approx(2 / 16)
    assert flip_share(keep_c, keep_c) == 0.0


def test_variants_and_unknown_kind():
    from prune_viz.errors import UserError

    v = variants(["blur", "jpeg"], None)
    assert v[0] == ("clean", 0.0) and len(v) == 1 + 8
    assert variants(["haze"], [0.2, 0.4]) == [("clean", 0.0), ("haze", 0.2), ("haze", 0.4)]
    with pytest.raises(UserError):
        variants(["fog"], None)


def test_bench_noise_smoke(tmp_path):
    """2 scenes x 2 levels of one corruption, two methods (one on demo_matp): the files, one
    row per method x variant, clean rows at zero deltas and flips, the random control stable."""
    from prune_viz.cli import main

    out = tmp_path / "noise"
    rc = main(["bench", "--noise", "gaussian", "--levels", "10,40", "--methods", "random,matp", "--split", "val",
               "--n", "2", "--boot", "50", "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "noise.csv")))
    assert len(rows) == 2 * 3
    assert {r["backbone"] for r in rows} == {"demo", "demo_matp"}
    for r in rows:
        if r["noise"] == "clean":
            assert float(r["d_miou_pruned"]) == 0.0 and float(r["flip_pct"]) == 0.0
        assert 0.0 < float(r["mac_saving_pct"]) < 100.0
        if r["method"] == "random":
            assert float(r["flip_pct"]) == 0.0  # drawn from the seed alone
    strong = next(r for r in rows if r["method"] == "random" and r["level"] == "40.0")
    assert float(strong["d_miou_unpruned"]) < 0.0
    matp40 = next(r for r in rows if r["method"] == "matp" and r["level"] == "40.0")
    assert float(matp40["flip_pct"]) > 0.0
    md = (out / "noise.md").read_text()
    assert "| unpruned | demo |" in md and "| +matp | demo_matp |" in md


def test_merge_shards_counts_each_scene_once(tmp_path):
    """Two shards that overlap in scene 2 (one was stopped late): the merge keeps 4 scenes,
    and its numbers are the ones of the scenes it kept (no model runs: made-up measurements)."""
    from prune_viz.bench_noise import rows_from_raw, save_raw

    k, v, j = 3, 2, 1
    todo, jobs = [("clean", 0.0), ("blur", 1.0)], [("evit", "demo")]

    def shard(start: int, done: int, flip: float) -> None:
        eye = np.eye(k, dtype=np.int64) * 10
        arrays = {"cms": np.broadcast_to(eye, (j, v, done, k, k)).copy(), "saving": np.full((j, v, done), 30.0),
                  "flips": np.full((j, v, done), flip), "remerge": np.full((j, v, done), np.nan),
                  "ref_cms:demo": np.broadcast_to(eye, (v, done, k, k)).copy(), "ood:demo": np.full((v, done), 0.1)}
        arrays["flips"][:, 0] = 0.0
        meta = {"split": "val", "start": start, "todo": todo, "jobs": jobs, "accuracy_s": 1.0, "command": None,
                "compute_threads": 1}
        save_raw(tmp_path / f"s{start}", meta, done, arrays)

    shard(0, 3, 10.0)  # scenes 0, 1, 2
    shard(2, 2, 40.0)  # scenes 2, 3
    rows, meta = rows_from_raw([tmp_path / "s0", tmp_path / "s2"], boot=20)
    assert meta["n"] == 4
    blur = next(r for r in rows if r["noise"] == "blur")
    assert blur["flip_pct"] == pytest.approx((10 + 10 + 10 + 40) / 4)
    assert blur["d_miou_pruned"] == 0.0 and blur["mac_saving_pct"] == 30.0
