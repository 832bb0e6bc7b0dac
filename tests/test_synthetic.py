"""Tests for the procedural aerial scenes (prune_viz.data.synthetic).

Scenes are generated at 256 px (a few ms each) so the whole file stays well under 20 s on CPU.
Per-kind thresholds are checked on fixed seeds; the generator is deterministic, so these are
regression checks on the content each kind promises, not statistical tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from prune_viz.data import synthetic
from prune_viz.data.synthetic import (
    CLASSES,
    PALETTE,
    SCENE_KINDS,
    SHIFT_KINDS,
    CONTEXT_ALL_STYLE,
    CONTEXT_MANY_STYLE,
    CONTEXT_STYLE,
    SHIFT_STYLE,
    TRAIN_STYLE,
    VARIED_STYLE,
    WIDE_STYLE,
    SPLIT_SEEDS,
    make_scene,
    split_kind,
    split_scene,
)

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, WATER, CLUTTER = range(7)
SIZE = 256
REPO = Path(__file__).resolve().parents[1]


def _fraction(labels: np.ndarray, *classes: int) -> float:
    return float(np.isin(labels, classes).mean())


def _digest(image: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes() + labels.tobytes()).hexdigest()


# ----------------------------------------------------------------------------- constants


def test_classes_and_palette() -> None:
    assert CLASSES == (
        "impervious",
        "building",
        "low_vegetation",
        "tree",
        "car",
        "water",
        "clutter",
    )
    assert PALETTE.shape == (7, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE.tolist()}) == 7, "palette colours must be distinct"
    assert SCENE_KINDS == ("mixed", "dense_buildings", "road_network", "water", "fields", "parking")


def test_split_seeds_fixed_and_disjoint() -> None:
    assert SPLIT_SEEDS == {
        "train": range(0, 10_000_000),
        "val": range(10_000_000, 10_100_000),
        "test": range(20_000_000, 20_100_000),
        "shift": range(30_000_000, 30_100_000),
        "train_varied": range(40_000_000, 50_000_000),
        "val_varied": range(50_000_000, 50_100_000),
        "train_wide": range(60_000_000, 70_000_000),
        "val_wide": range(70_000_000, 70_100_000),
        "train_context": range(80_000_000, 90_000_000),
        "val_context": range(90_000_000, 90_100_000),
        "train_context_all": range(100_000_000, 110_000_000),
        "val_context_all": range(110_000_000, 110_100_000),
        "train_context_many": range(120_000_000, 130_000_000),
        "val_context_many": range(130_000_000, 130_100_000),
    }
    ranges = sorted(SPLIT_SEEDS.values(), key=lambda r: r.start)
    for a, b in zip(ranges, ranges[1:]):
        assert a.stop <= b.start


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_scene() -> None:
    for kind in (None, *SCENE_KINDS):
        img1, lab1 = make_scene(7, SIZE, kind)
        img2, lab2 = make_scene(7, SIZE, kind)
        np.testing.assert_array_equal(img1, img2)
        np.testing.assert_array_equal(lab1, lab2)


def test_different_seeds_differ() -> None:
    img1, lab1 = make_scene(1, SIZE, "mixed")
    img2, lab2 = make_scene(2, SIZE, "mixed")
    assert not np.array_equal(img1, img2)
    assert not np.array_equal(lab1, lab2)


def test_kind_none_is_the_kind_drawn_from_the_seed() -> None:
    """make_scene(seed) equals make_scene(seed, kind=k) for exactly one k."""
    for seed in (3, 11):
        ref = _digest(*make_scene(seed, SIZE))
        matches = [k for k in SCENE_KINDS if _digest(*make_scene(seed, SIZE, k)) == ref]
        assert len(matches) == 1, matches


def test_split_kind_is_the_kind_the_split_scene_draws() -> None:
    """split_kind names the kind split_scene draws, for the training style, the shift one and a
    pilot one; it can fail: a scene drawn with any other kind differs."""
    for split, index, style in (("val", 0, None), ("val", 5, None), ("shift", 2, SHIFT_STYLE), ("val_varied", 1, VARIED_STYLE)):
        kind = split_kind(split, index)
        seed = SPLIT_SEEDS[split][index]
        ref = _digest(*split_scene(split, index, 64))
        assert _digest(*make_scene(seed, 64, kind, style)) == ref
        other = next(k for k in SCENE_KINDS if k != kind)
        assert _digest(*make_scene(seed, 64, other, style)) != ref
    assert {split_kind("shift", i) for i in range(40)} & set(SHIFT_KINDS)


def test_varied_style_draws_a_season_per_scene() -> None:
    """Each val_varied scene is its seed's scene with exactly one of the style's seasons, and
    both seasons occur (a style listing one season twice consumes the same draw, so it
    reproduces the scene when it names the season that was drawn)."""
    drawn = []
    for index in range(8):
        seed = SPLIT_SEEDS["val_varied"][index]
        ref = _digest(*split_scene("val_varied", index, 64))
        matches = [
            season
            for season in VARIED_STYLE.seasons
            if _digest(*make_scene(seed, 64, style=dataclasses.replace(VARIED_STYLE, seasons=(season, season)))) == ref
        ]
        assert len(matches) == 1, (index, matches)
        drawn += matches
    assert set(drawn) == {"summer", "autumn"}


def _textures(
    monkeypatch: pytest.MonkeyPatch, seed: int, style, kind: str = "dense_buildings"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, texture map passed to the renderer) of one scene at 128 px."""
    seen = []
    real = synthetic._render

    def spy(sc, texture=None):
        seen.append(texture)
        return real(sc, texture)

    monkeypatch.setattr(synthetic, "_render", spy)
    _, lab = make_scene(seed, 128, kind=kind, style=style)
    return lab, seen[0]


def test_lookalike_roofs_change_texture_not_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The context styles draw a scene's layout exactly as the training style does (same
    labels), then give whole roofs the pavement texture: CONTEXT_ALL_STYLE (p = 1) every roof,
    CONTEXT_STYLE (p = 0.5) some roofs and not others; no other pixel's texture changes, and
    the training style (p = 0) passes no texture map."""
    some_kept = some_covered = False
    for seed in range(3):
        lab, texture = _textures(monkeypatch, seed, TRAIN_STYLE)
        assert texture is None
        lab_all, tex_all = _textures(monkeypatch, seed, CONTEXT_ALL_STYLE)
        np.testing.assert_array_equal(lab_all, lab)
        roof = lab == BUILDING
        assert roof.any()
        assert (tex_all[roof] == IMPERVIOUS).all()
        np.testing.assert_array_equal(tex_all[~roof], lab[~roof])
        lab_half, tex_half = _textures(monkeypatch, seed, CONTEXT_STYLE)
        np.testing.assert_array_equal(lab_half, lab)
        some_kept |= bool((tex_half[roof] == BUILDING).any())
        some_covered |= bool((tex_half[roof] == IMPERVIOUS).any())
    assert some_kept and some_covered


def test_many_lookalikes_disguise_trees_and_water_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTEXT_MANY_STYLE: with p = 1 every roof is textured as pavement, every tree as grass and
    all water as pavement; cars, clutter and the ground keep their own texture."""
    every = dataclasses.replace(CONTEXT_MANY_STYLE, lookalike_p=1.0)
    lab, texture = _textures(monkeypatch, 0, every, kind="mixed")
    material = {BUILDING: IMPERVIOUS, TREE: LOW_VEGETATION, WATER: IMPERVIOUS}
    for label, mat in material.items():
        assert (lab == label).any(), CLASSES[label]
        assert (texture[lab == label] == mat).all(), CLASSES[label]
    rest = ~np.isin(lab, list(material))
    np.testing.assert_array_equal(texture[rest], lab[rest])


def test_kind_none_draws_every_kind_mostly_mixed() -> None:
    kinds = []
    for seed in range(60):
        ref = _digest(*make_scene(seed, 64))
        kinds += [k for k in SCENE_KINDS if _digest(*make_scene(seed, 64, k)) == ref]
    assert len(kinds) == 60
    counts = {k: kinds.count(k) for k in SCENE_KINDS}
    assert max(counts, key=counts.get) == "mixed", counts
    assert set(kinds) == set(SCENE_KINDS), "every kind is drawn; the shift-only kinds never are"


def test_identical_across_processes() -> None:
    code = (
        "import hashlib, sys;"
        "from prune_viz.data.synthetic import make_scene;"
        "i, l = make_scene(123, 128, 'mixed');"
        "sys.stdout.write(hashlib.sha256(i.tobytes() + l.tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout == _digest(*make_scene(123, 128, "mixed"))


# ----------------------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize("size", [256, 512])
def test_shapes_and_dtypes(size: int) -> None:
    kinds = SCENE_KINDS if size == 256 else ("mixed", "parking")
    for kind in kinds:
        img, lab = make_scene(5, size, kind)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert lab.shape == (size, size) and lab.dtype == np.uint8
        assert int(lab.max()) <= 6


def test_split_scene_matches_seed() -> None:
    for split, seeds in SPLIT_SEEDS.items():
        img, lab = split_scene(split, 2, SIZE)
        style = {
            "shift": SHIFT_STYLE, "train_varied": VARIED_STYLE, "val_varied": VARIED_STYLE,
            "train_wide": WIDE_STYLE, "val_wide": WIDE_STYLE,
            "train_context": CONTEXT_STYLE, "val_context": CONTEXT_STYLE,
            "train_context_all": CONTEXT_ALL_STYLE, "val_context_all": CONTEXT_ALL_STYLE,
            "train_context_many": CONTEXT_MANY_STYLE, "val_context_many": CONTEXT_MANY_STYLE,
        }.get(split)
        ref_img, ref_lab = make_scene(seeds[2], SIZE, style=style)
        np.testing.assert_array_equal(img, ref_img)
        np.testing.assert_array_equal(lab, ref_lab)


@pytest.mark.parametrize(
    "split, index",
    [
        ("training", 0),
        ("TRAIN", 0),
        ("val", -1),
        ("val", 100_000),
        ("test", 10**9),
        ("train", 1.5),
        (None, 0),
        ("train", "0"),
    ],
)
def test_split_scene_rejects_bad_input(split: str, index: object) -> None:
    with pytest.raises(ValueError):
        split_scene(split, index, 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_kind(split, index)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"seed": -1}, {"seed": 0, "size": 8}, {"seed": 0, "kind": "desert"}, {"seed": 0.5}]
)
def test_make_scene_rejects_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_scene(**kwargs)


# ----------------------------------------------------------------------------- label sanity


def test_water_kind_is_mostly_water() -> None:
    for seed in range(6):
        _, lab = make_scene(seed, SIZE, "water")
        assert _fraction(lab, WATER) >= 0.2, seed


def test_parking_kind_has_many_separate_cars() -> None:
    for seed in range(6):
        _, lab = make_scene(seed, SIZE, "parking")
        n, _ = cv2.connectedComponents((lab == CAR).astype(np.uint8), connectivity=8)
        assert n - 1 >= 15, seed


def test_dense_buildings_kind_is_built_up() -> None:
    fractions = [
        _fraction(make_scene(seed, SIZE, "dense_buildings")[1], BUILDING) for seed in range(6)
    ]
    assert np.mean(fractions) >= 0.25, fractions
    assert min(fractions) >= 0.15, fractions


def test_fields_kind_is_open_ground() -> None:
    for seed in range(6):
        _, lab = make_scene(seed, SIZE, "fields")
        assert _fraction(lab, LOW_VEGETATION, CLUTTER) >= 0.6, seed


def test_road_network_kind_has_roads_and_traffic() -> None:
    for seed in range(4):
        _, lab = make_scene(seed, SIZE, "road_network")
        assert _fraction(lab, IMPERVIOUS) >= 0.15, seed
        assert (
            cv2.connectedComponents((lab == CAR).astype(np.uint8), connectivity=8)[0] - 1 >= 5
        ), seed


def test_mixed_shows_every_class() -> None:
    seen = np.zeros(7, bool)
    for seed in range(30):
        _, lab = make_scene(seed, SIZE, "mixed")
        seen |= np.bincount(lab.ravel(), minlength=7) > 0
    assert seen.all(), [c for c, s in zip(CLASSES, seen) if not s]


def test_ground_resolution_is_fixed() -> None:
    """A 512 scene shows more ground, not bigger objects: car blobs have the same size."""
    medians = []
    for size in (256, 512):
        _, lab = make_scene(4, size, "parking")
        _, _, stats, _ = cv2.connectedComponentsWithStats(
            (lab == CAR).astype(np.uint8), connectivity=8
        )
        areas = stats[1:, cv2.CC_STAT_AREA]
        medians.append(float(np.median(areas)))
        assert 100 <= medians[-1] <= 300, medians  # ~ 8-12 x 16-24 px
    assert abs(medians[0] - medians[1]) / medians[0] < 0.25, medians


# ----------------------------------------------------------------------------- image vs labels


def _class_stats(n_seeds: int) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Mean RGB and mean 5x5 local grey variance per class, over eroded class interiors
    (so that edges between classes do not count as texture)."""
    colours: dict[int, list[np.ndarray]] = {k: [] for k in range(7)}
    variances: dict[int, list[float]] = {k: [] for k in range(7)}
    kernel = np.ones((5, 5), np.uint8)
    for seed in range(n_seeds):
        img, lab = make_scene(seed, SIZE, "mixed")
        grey = img.astype(np.float32).mean(axis=2)
        mean = cv2.blur(grey, (5, 5))
        local_var = cv2.blur(grey * grey, (5, 5)) - mean * mean
        for k in range(7):
            inner = cv2.erode((lab == k).astype(np.uint8), kernel).astype(bool)
            if inner.sum() >= 50:
                colours[k].append(img[inner].mean(axis=0))
                variances[k].append(float(local_var[inner].mean()))
    return (
        {k: np.mean(v, axis=0) for k, v in colours.items() if v},
        {k: float(np.mean(v)) for k, v in variances.items() if v},
    )


def test_class_appearance_is_distinctive() -> None:
    colours, variances = _class_stats(12)
    assert np.linalg.norm(colours[WATER] - colours[LOW_VEGETATION]) > 40
    assert colours[WATER][2] > colours[WATER][0], "water is blue-green"
    assert colours[LOW_VEGETATION][1] > colours[LOW_VEGETATION][2], "grass is green/yellow"
    assert colours[TREE].sum() < colours[LOW_VEGETATION].sum(), "trees are darker than grass"
    assert (
        variances[TREE] > 2.0 * variances[LOW_VEGETATION]
    ), "tree crowns are textured, grass smooth"
    assert variances[WATER] < variances[LOW_VEGETATION], "water is the smoothest surface"
    assert variances[CLUTTER] > 2.0 * variances[LOW_VEGETATION], "bare soil is speckled"


def test_shadows_keep_the_ground_class() -> None:
    """Cast shadows darken pixels without relabelling them: somewhere in a built-up scene
    there is grass or pavement much darker than its class median."""
    img, lab = make_scene(2, SIZE, "dense_buildings")
    grey = img.astype(np.float32).mean(axis=2)
    for k in (LOW_VEGETATION, IMPERVIOUS):
        vals = grey[lab == k]
        assert (vals < 0.7 * np.median(vals)).mean() > 0.02, CLASSES[k]


# ----------------------------------------------------------------------------- v2: harder scenes


def _thin_pixels(labels: np.ndarray, *classes: int) -> int:
    """Pixels of ``classes`` that a 4 x 4 opening removes: structures under 4 px wide."""
    m = np.isin(labels, classes).astype(np.uint8)
    opened = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((4, 4), np.uint8)).astype(bool)
    return int((m.astype(bool) & ~opened).sum())


def _small_components(labels: np.ndarray, cls: int, max_area: int) -> int:
    _, _, stats, _ = cv2.connectedComponentsWithStats((labels == cls).astype(np.uint8), connectivity=8)
    return int((stats[1:, cv2.CC_STAT_AREA] <= max_area).sum())


@pytest.mark.parametrize("kind", ["fields", "mixed"])
def test_thin_structures_are_present(kind: str) -> None:
    """Footpaths and streams 1-3 px wide: roads and lakes are far wider, so without the thin
    structures these scenes have (almost) no impervious / water pixels under 4 px wide."""
    counts = [_thin_pixels(make_scene(seed, SIZE, kind)[1], IMPERVIOUS, WATER) for seed in range(8)]
    assert sum(c >= 100 for c in counts) >= 6, counts


def test_objects_smaller_than_a_token() -> None:
    """Sheds and young trees of at most 10 x 10 px (a token is 16 x 16)."""
    labels = [make_scene(seed, SIZE, "mixed")[1] for seed in range(8)]
    assert sum(_small_components(lab, BUILDING, 100) for lab in labels) >= 5
    assert sum(_small_components(lab, TREE, 100) for lab in labels) >= 10


# Stated class pixel shares of the train/val/test generator (40 val scenes at 256 px; the model
# card reports the 512 px shares of its evaluation). Cars are the rare class, as in Potsdam.
SHARE_RANGES = {
    IMPERVIOUS: (0.12, 0.30),
    BUILDING: (0.06, 0.25),
    LOW_VEGETATION: (0.30, 0.55),
    TREE: (0.04, 0.15),
    CAR: (0.01, 0.05),
    WATER: (0.03, 0.15),
    CLUTTER: (0.02, 0.10),
}


def test_class_shares_within_stated_ranges() -> None:
    counts = np.zeros(7)
    for i in range(40):
        counts += np.bincount(split_scene("val", i, SIZE)[1].ravel(), minlength=7)
    shares = counts / counts.sum()
    for k, (lo, hi) in SHARE_RANGES.items():
        assert lo <= shares[k] <= hi, (CLASSES[k], round(float(shares[k]), 3))
    assert shares.argmin() == CAR, "cars are the rarest class"


def _car_median_area(labels: np.ndarray) -> float:
    _, _, stats, _ = cv2.connectedComponentsWithStats((labels == CAR).astype(np.uint8), connectivity=8)
    return float(np.median(stats[1:, cv2.CC_STAT_AREA]))


def test_shift_split_varies_the_ground_sampling_distance() -> None:
    """Train draws keep object sizes; shift draws them at 0.5-2x ground sampling distance."""
    train = [_car_median_area(make_scene(s, SIZE, "parking")[1]) for s in range(8)]
    shift = [_car_median_area(make_scene(s, SIZE, "parking", style=SHIFT_STYLE)[1]) for s in range(8)]
    assert max(train) / min(train) < 1.5, train
    assert max(shift) / min(shift) > 3.0, shift


def test_shift_split_has_another_season_and_unseen_layouts() -> None:
    def grass_red_green(split: str) -> float:
        ratios = []
        for i in range(10):
            image, labels = split_scene(split, i, SIZE)
            grass = labels == LOW_VEGETATION
            if grass.sum() > 500:
                r, g, _ = image[grass].mean(axis=0)
                ratios.append(r / g)
        return float(np.mean(ratios))

    assert grass_red_green("shift") > grass_red_green("val") + 0.1, "autumn grass is yellower"
    assert SHIFT_KINDS and not set(SHIFT_KINDS) & set(SCENE_KINDS)
    for kind in SHIFT_KINDS:
        with pytest.raises(ValueError):
            make_scene(0, SIZE, kind)  # the training generator never draws them
        _, labels = make_scene(0, SIZE, kind, style=SHIFT_STYLE)
        assert _fraction(labels, WATER) > 0.05 and _fraction(labels, BUILDING) > 0.1
