"""Procedural aerial scenes with per-pixel labels (Potsdam / LoveDA style, top-down).

Why this exists: the shipped demo segmenter is trained from scratch on CPU, and token pruning
is only interesting to look at on images that mix large homogeneous regions (fields, water,
roofs: redundant tokens) with edges and objects smaller than a 16 px patch (cars, single trees:
tokens that matter). Scenes are generated on the fly while training, so everything here is
vectorised numpy / cv2 drawing with no per-pixel Python loops.

Conventions
  * Images are H x W x 3 uint8 RGB, labels H x W uint8 with ids into ``CLASSES`` (0..6).
  * Ground resolution is fixed in pixels: a car is ~10 x 20 px whatever ``size`` is, so a
    256 scene shows a smaller area, not a downscaled 512 scene. Only scene kinds that are
    *framed* on one big thing (a lake, a parking lot) size that thing relative to the view.
  * Points are (x, y) floats in image pixels; cv2 gets them as fixed point (``_SHIFT`` bits) so
    thin rotated shapes do not snap to the integer grid.
  * Labels are drawn with ``cv2.LINE_8`` and never blurred (no label noise at edges); the
    image is drawn with the same primitives in the same order, so occlusion agrees, and only
    the image is blurred slightly at the end.
  * Every random choice comes from one ``np.random.default_rng(seed)``: no global RNG state,
    identical output in every call and process.

Drawing order (later wins in both image and labels): ground (grass, fields, bare soil), water,
roads and paved lots, buildings (cast shadows first), trees, cars. Then, on the image only:
per-class texture and sensor noise, cast shadows, the scene's illumination, a slight blur.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import cv2
import numpy as np

CLASSES: tuple[str, ...] = (
    "impervious",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "water",
    "clutter",
)
IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, WATER, CLUTTER = range(len(CLASSES))

# Paul Tol's "bright" qualitative scheme: 7 colours chosen to stay distinct under the common
# colour-vision deficiencies, assigned so the hue hints at the class (grey roads, green trees,
# blue water).
PALETTE: np.ndarray = np.array(
    [
        (187, 187, 187),  # impervious: grey
        (238, 102, 119),  # building: red
        (204, 187, 68),  # low_vegetation: yellow
        (34, 136, 51),  # tree: green
        (170, 51, 119),  # car: purple
        (68, 119, 170),  # water: blue
        (102, 204, 238),  # clutter: cyan
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

SCENE_KINDS: tuple[str, ...] = (
    "mixed",
    "dense_buildings",
    "road_network",
    "water",
    "fields",
    "parking",
)
# Built-up kinds are drawn more often than in v1 so the class shares come near Potsdam's
# (impervious and building ~25 % each, cars ~2 %) instead of a grass-dominated mix.
_KIND_PROBS = (0.36, 0.24, 0.16, 0.08, 0.06, 0.10)

# Only in the shift split: a layout mix the training generator never produces.
SHIFT_KINDS: tuple[str, ...] = ("town_river",)

SPLIT_SEEDS: dict[str, range] = {
    "train": range(0, 10_000_000),
    "val": range(10_000_000, 10_100_000),
    "test": range(20_000_000, 20_100_000),
    "shift": range(30_000_000, 30_100_000),
    "train_varied": range(40_000_000, 50_000_000),  # VARIED_STYLE (a pilot, see SceneStyle)
    "val_varied": range(50_000_000, 50_100_000),
    "train_wide": range(60_000_000, 70_000_000),  # WIDE_STYLE (the same pilot, wider ranges)
    "val_wide": range(70_000_000, 70_100_000),
    "train_context": range(80_000_000, 90_000_000),  # CONTEXT_STYLE (a pilot: lookalike roofs)
    "val_context": range(90_000_000, 90_100_000),
    "train_context_all": range(100_000_000, 110_000_000),  # CONTEXT_ALL_STYLE (every roof)
    "val_context_all": range(110_000_000, 110_100_000),
    "train_context_many": range(120_000_000, 130_000_000),  # CONTEXT_MANY_STYLE
    "val_context_many": range(130_000_000, 130_100_000),
}

_SHIFT = 3  # fixed-point bits for cv2 coordinates
_FIX = float(1 << _SHIFT)
_MIN_SIZE = 32

# Which labels an object may be placed on (index = label id). Lots need open ground, buildings
# grass; trees may also stand in groves (on other trees); cars only on pavement.
_ON_GROUND = np.array([0, 0, 1, 0, 0, 0, 1], dtype=bool)
_ON_GRASS = np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool)  # buildings keep bare-soil patches visible
_ON_GROUND_OR_TREE = np.array([0, 0, 1, 1, 0, 0, 1], dtype=bool)
_ON_PAVEMENT = np.array([1, 0, 0, 0, 0, 0, 0], dtype=bool)

# Per-class texture amplitudes (intensity units, before illumination). These are what make
# classes with overlapping colours separable: grass is smooth with broad yellow-green swings,
# tree crowns and bare soil are rough at the 2-6 px scale, water is nearly flat with ripples.
# LF: broad (~100 px) swings per RGB channel; MF: 3 px blobs; HF: per-pixel grain; ripple:
# streaks on water. The scalar tables are indexed by label id (imp, bld, veg, tree, car, wat, clut).
_AMP_LF = np.array(
    [
        (4.0, 4.0, 4.0),  # impervious: broad stains, grey
        (2.0, 2.0, 2.0),  # building
        (11.0, 9.0, 2.0),  # low_vegetation: drier (yellower) and lusher (greener) patches
        (3.0, 5.0, 2.0),  # tree
        (0.0, 0.0, 0.0),  # car
        (1.5, 3.0, 4.0),  # water: turbidity
        (8.0, 6.0, 4.0),  # clutter
    ],
    dtype=np.float32,
)
_AMP_MF = np.array([3.0, 1.5, 2.5, 11.0, 0.0, 1.0, 9.0], dtype=np.float32)
_AMP_HF = np.array([5.0, 2.5, 2.5, 9.0, 2.0, 0.8, 13.0], dtype=np.float32)
_AMP_RIPPLE = np.array([0, 0, 0, 0, 0, 5.0, 0], dtype=np.float32)
_UNIFORM_TO_UNIT = math.sqrt(12.0)  # uniform(-0.5, 0.5) * this has unit variance


def _lut(values: np.ndarray) -> np.ndarray:
    """A per-class table (7,) padded to the 256 float32 entries cv2.LUT wants."""
    out = np.zeros(256, np.float32)
    out[: len(values)] = values
    return out


_LUT_MF = _lut(_AMP_MF)
_LUT_HF = _lut(_AMP_HF * _UNIFORM_TO_UNIT)  # applied to uniform(-0.5, 0.5) noise
_LUT_RIPPLE = _lut(_AMP_RIPPLE)
_LUT_LF = tuple(_lut(_AMP_LF[:, c]) for c in range(3))

# Base colours (RGB). Per object a colour is jittered around one of these.
_GRASS = ((98, 132, 62), (112, 142, 70), (128, 150, 78), (142, 156, 86), (90, 122, 58))
_CROP = ((150, 160, 88), (168, 166, 96), (120, 148, 66))  # wheat / yellowing crops
_SOIL = ((142, 108, 78), (165, 118, 80), (132, 118, 102), (178, 150, 112), (120, 92, 70))
_ASPHALT = ((92, 93, 96), (105, 104, 103), (82, 84, 88), (114, 112, 110))
_CONCRETE = ((158, 156, 150), (172, 170, 164), (148, 146, 142))
_ROOFS = (
    (168, 80, 60),  # red tiles
    (150, 66, 50),
    (186, 104, 76),
    (126, 126, 132),  # grey
    (146, 146, 150),
    (66, 66, 74),  # dark
    (84, 78, 78),
    (212, 212, 206),  # light
    (196, 196, 190),
    (124, 96, 82),  # brown
)
_TREE_DARK = ((34, 58, 30), (40, 64, 30), (30, 52, 32))
_WATER = ((46, 80, 94), (40, 74, 80), (54, 88, 104), (36, 64, 72))
_CAR_COLOURS = (
    (228, 228, 225),  # white
    (174, 176, 180),  # silver
    (28, 28, 32),  # black
    (72, 74, 78),  # dark grey
    (182, 28, 30),  # red
    (36, 70, 156),  # blue
    (222, 190, 36),  # yellow
    (24, 34, 84),  # dark blue
)
_CAR_PROBS = (0.25, 0.2, 0.18, 0.1, 0.1, 0.09, 0.04, 0.04)
_CAR_CDF = np.cumsum(_CAR_PROBS)


# ----------------------------------------------------------------------------------------
# Scene state and small geometry helpers
# ----------------------------------------------------------------------------------------


@dataclass
class _Road:
    """A drawn road: centreline ``pts`` (N x 2, x y), cumulative arc length ``cum`` (N),
    carriageway ``width`` (where cars drive) and ``paved`` width including sidewalks."""

    pts: np.ndarray
    cum: np.ndarray
    width: float
    paved: float


@dataclass
class _Scene:
    """Mutable canvas shared by the drawing steps.

    img: H x W x 3 uint8 base colours (no texture yet), lab: H x W uint8 labels,
    shade: H x W uint8, 1 where a building shadow falls; low_shade: the same for the low
    casters (trees, cars). They are kept apart because a low caster clears its own shadow
    under its footprint, and must not clear a building's shadow it stands in. ``sun`` is the
    unit (x, y) direction in which shadows fall, the same for the whole scene; ``theta`` the
    dominant layout direction.
    """

    rng: np.random.Generator
    size: int
    scale: float
    theta: float
    sun: tuple[float, float]
    shadow_len: float
    img: np.ndarray
    lab: np.ndarray
    shade: np.ndarray
    low_shade: np.ndarray
    roads: list[_Road] = field(default_factory=list)
    has_water: bool = False

    @property
    def centre(self) -> float:
        return self.size / 2.0

    @property
    def reach(self) -> float:
        """Half-length that lets a line through the view cross it entirely at any angle."""
        return self.size * 0.71 + 40.0

    @property
    def area(self) -> float:
        """Scene area relative to a 256 x 256 view: object counts scale with it."""
        return (self.size / 256.0) ** 2


def _fix(pts: np.ndarray) -> np.ndarray:
    """(..., 2) float pixel coordinates -> int32 fixed point for cv2 calls with ``_SHIFT``."""
    return np.rint(pts * _FIX).astype(np.int32)


def _rect(cx: float, cy: float, ux: float, uy: float, hl: float, hw: float) -> np.ndarray:
    """4 x 2 corners of a rectangle centred at (cx, cy), half-length ``hl`` along the unit
    vector (ux, uy) and half-width ``hw`` across it."""
    ax, ay, bx, by = ux * hl, uy * hl, -uy * hw, ux * hw
    return np.array(
        [
            (cx + ax + bx, cy + ay + by),
            (cx - ax + bx, cy - ay + by),
            (cx - ax - bx, cy - ay - by),
            (cx + ax - bx, cy + ay - by),
        ]
    )


def _bezier(p0, p1, p2, p3, n: int = 40) -> np.ndarray:
    """n x 2 points on the cubic Bezier through control points p0..p3 ((x, y) each)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    mt = 1.0 - t
    return (
        mt**3 * np.asarray(p0)
        + 3 * mt**2 * t * np.asarray(p1)
        + 3 * mt * t**2 * np.asarray(p2)
        + t**3 * np.asarray(p3)
    )


def _normals(pts: np.ndarray) -> np.ndarray:
    """N x 2 unit normals (left of travel) of a polyline, from central differences."""
    d = np.gradient(pts, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    return np.stack([-d[:, 1], d[:, 0]], axis=1)


def _blob(
    rng: np.random.Generator, cx: float, cy: float, r: float, rough: float, n: int = 40
) -> np.ndarray:
    """n x 2 outline of an irregular closed shape: a circle whose radius is modulated by a few
    low harmonics, which gives the lobed look of ponds, copses and soil patches."""
    phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 6)[:, None]
    amp = rough * rng.uniform(0.3, 1.0, (4, 1)) * 2.0 / k
    rr = r * (1.0 + (amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0))
    return np.stack([cx + rr * np.cos(phi), cy + rr * np.sin(phi)], axis=1)


def _jitter(
    rng: np.random.Generator, base: tuple[int, int, int], amount: float
) -> tuple[int, int, int]:
    """A colour near ``base``, each channel moved by up to +-amount (clipped to 0..255)."""
    d = rng.uniform(-amount, amount, 3)
    r, g, b = (int(min(255, max(0, base[i] + d[i]))) for i in range(3))
    return r, g, b


def _pick(rng: np.random.Generator, colours: tuple) -> tuple[int, int, int]:
    return colours[int(rng.integers(len(colours)))]


def _scaled(colour: tuple[int, int, int], gain: float) -> tuple[int, int, int]:
    """``colour`` times ``gain``, clipped to 0..255 (shading of a base colour)."""
    r, g, b = (int(min(255, max(0, c * gain))) for c in colour)
    return r, g, b


def _fill(sc: _Scene, pts: np.ndarray, label: int | None, colour: tuple[int, int, int]) -> None:
    """Fill a polygon (N x 2) in the image, and in the labels unless ``label`` is None
    (image-only detail such as roof slopes or lane marks that does not change the class)."""
    p = [_fix(pts)]
    if label is not None:
        cv2.fillPoly(sc.lab, p, label, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(sc.img, p, colour, cv2.LINE_8, _SHIFT)


def _cast_shadow(sc: _Scene, pts: np.ndarray, height: float) -> None:
    """Mark the shadow of a prism with footprint ``pts`` (N x 2, convex) and ``height`` px:
    the hull of the footprint and its copy shifted along the sun direction."""
    k = height * sc.shadow_len
    moved = pts + (sc.sun[0] * k, sc.sun[1] * k)
    hull = cv2.convexHull(_fix(np.concatenate([pts, moved])))
    cv2.fillPoly(sc.shade, [hull], 1, cv2.LINE_8, _SHIFT)


_CHECK_STEP = 6.0  # px between placement-check samples: finer than a road, a crown or a car


@functools.lru_cache(maxsize=256)
def _check_grid(na: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample pattern for placement checks: na x nb points spanning [-1, 1]^2, corners
    included, flattened to two (na * nb,) arrays. Cached: only the size varies."""
    a, b = np.meshgrid(np.linspace(-1.0, 1.0, na), np.linspace(-1.0, 1.0, nb), indexing="ij")
    a, b = a.ravel(), b.ravel()
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def _rect_is_free(
    sc: _Scene, cx: float, cy: float, ux: float, uy: float, hl: float, hw: float, ok: np.ndarray
) -> bool:
    """True when every sample point of the rectangle that lies in the view has a label allowed
    by ``ok`` (bool per label). Samples are at most ``_CHECK_STEP`` px apart, so nothing as
    wide as a road or a crown can slip between them. Points outside the view count as free so
    objects can be cut by the border like in a real tile."""
    ga, gb = _check_grid(
        int(math.ceil(2 * hl / _CHECK_STEP)) + 1, int(math.ceil(2 * hw / _CHECK_STEP)) + 1
    )
    xs = cx + ga * (ux * hl) - gb * (uy * hw)
    ys = cy + ga * (uy * hl) + gb * (ux * hw)
    xi = xs.astype(np.int64)
    yi = ys.astype(np.int64)
    inside = (xs >= 0) & (ys >= 0) & (xi < sc.size) & (yi < sc.size)
    if not inside.any():
        return False  # nothing of it would be seen: not worth drawing
    return bool(ok[sc.lab[yi[inside], xi[inside]]].all())


def _in_view(sc: _Scene, x: float, y: float, margin: float) -> bool:
    return -margin <= x < sc.size + margin and -margin <= y < sc.size + margin


# ----------------------------------------------------------------------------------------
# Ground: grass, fields, bare soil, water
# ----------------------------------------------------------------------------------------


def _stripes(
    sc: _Scene,
    cx: float,
    cy: float,
    ux: float,
    uy: float,
    hl: float,
    hw: float,
    period: float,
    colour: tuple[int, int, int],
) -> None:
    """Image-only bands parallel to (ux, uy) across a rectangle: mowing stripes, crop rows,
    furrows. One fillPoly call for all bands (they do not overlap)."""
    half = period / 4.0
    if hw <= half:
        return
    offs = np.arange(-hw + half, hw - half + 1e-6, period)
    vx, vy = -uy, ux
    ax, ay, bx, by = ux * hl, uy * hl, vx * half, vy * half
    c = np.stack([cx + offs * vx, cy + offs * vy], axis=1)[:, None, :]
    corners = c + np.array(
        [(ax + bx, ay + by), (-ax + bx, -ay + by), (-ax - bx, -ay - by), (ax - bx, ay - by)]
    )
    cv2.fillPoly(sc.img, list(_fix(corners)), colour, cv2.LINE_8, _SHIFT)


def _ground(sc: _Scene) -> None:
    """Cover the whole view with grass, then a few large patches of another grass tone
    (low-frequency variation that a segmenter must learn to ignore)."""
    rng = sc.rng
    sc.lab[:] = LOW_VEGETATION
    sc.img[:] = np.array(_jitter(rng, _pick(rng, _GRASS), 8), np.uint8)
    for _ in range(int(rng.integers(1, 3 + int(sc.area)))):
        x, y = rng.uniform(0, sc.size, 2)
        colour = _jitter(rng, _pick(rng, _GRASS), 8)
        if rng.random() < 0.5:
            _fill(
                sc, _blob(rng, x, y, rng.uniform(50, 150) * sc.scale, 0.3), LOW_VEGETATION, colour
            )
        else:
            _parcel(sc, x, y, rng.uniform(50, 130) * sc.scale, rng.uniform(40, 110) * sc.scale, 0.0)


def _parcel(sc: _Scene, cx: float, cy: float, hl: float, hw: float, soil_p: float) -> None:
    """One agricultural parcel aligned with the layout direction: grass, crop or (with
    probability ``soil_p``) bare soil, optionally with mowing stripes / rows / furrows."""
    rng = sc.rng
    ux, uy = math.cos(sc.theta), math.sin(sc.theta)
    pts = _rect(cx, cy, ux, uy, hl, hw)
    if rng.random() < soil_p:
        colour = _jitter(rng, _pick(rng, _SOIL), 8)
        _fill(sc, pts, CLUTTER, colour)
        if rng.random() < 0.6:
            _stripes(sc, cx, cy, ux, uy, hl, hw, rng.uniform(5, 9), _scaled(colour, 0.88))
        return
    colour = _jitter(rng, _pick(rng, _CROP if rng.random() < 0.3 else _GRASS), 8)
    _fill(sc, pts, LOW_VEGETATION, colour)
    u = rng.random()
    if u < 0.3:  # mowing stripes: broad, faint
        _stripes(
            sc,
            cx,
            cy,
            ux,
            uy,
            hl,
            hw,
            rng.uniform(14, 26),
            _scaled(colour, rng.choice([0.94, 1.06])),
        )
    elif u < 0.45:  # crop rows: fine, still faint so grass stays smoother than tree crowns
        _stripes(sc, cx, cy, ux, uy, hl, hw, rng.uniform(6, 10), _scaled(colour, 0.93))


def _fields(sc: _Scene, soil_p: float, gap: float) -> None:
    """Tile the whole view with parcels on a jittered grid in the layout frame; the ``gap``
    between them shows the grass margin underneath."""
    rng = sc.rng
    ux, uy = math.cos(sc.theta), math.sin(sc.theta)
    vx, vy = -uy, ux
    c, half = sc.centre, sc.reach
    a = -half
    while a < half:
        cw = rng.uniform(70, 200) * sc.scale
        b = -half + rng.uniform(-100, 0)
        while b < half:
            ch = rng.uniform(80, 260) * sc.scale
            px = c + ux * (a + cw / 2) + vx * (b + ch / 2)
            py = c + uy * (a + cw / 2) + vy * (b + ch / 2)
            if _in_view(sc, px, py, (cw + ch) / 2):
                _parcel(sc, px, py, cw / 2 - gap / 2, ch / 2 - gap / 2, soil_p)
            b += ch
        a += cw


def _clutter_patch(sc: _Scene, cx: float, cy: float, r: float) -> None:
    """Bare soil / rubble: an irregular brown patch with small shaded heaps and debris."""
    rng = sc.rng
    colour = _jitter(rng, _pick(rng, _SOIL), 10)
    _fill(sc, _blob(rng, cx, cy, r, 0.35), CLUTTER, colour)
    sx, sy = sc.sun
    for _ in range(int(rng.integers(0, 3 + int(r / 12)))):
        rad = rng.uniform(3, 8)
        d = rng.uniform(0, 0.5 * r)
        a = rng.uniform(0, 2 * np.pi)
        hx, hy = cx + d * math.cos(a), cy + d * math.sin(a)
        tone = _jitter(rng, colour, 10)
        # the heap's skirt covers its offset shading, so image detail stays inside the label
        cv2.circle(sc.lab, _pt(hx, hy), int(rad * 1.3 * _FIX), CLUTTER, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(sc.img, _pt(hx, hy), int(rad * 1.3 * _FIX), colour, -1, cv2.LINE_8, _SHIFT)
        # a heap is lit on the sun side and dark on the shadow side
        cv2.circle(
            sc.img,
            _pt(hx + sx * rad * 0.3, hy + sy * rad * 0.3),
            int(rad * _FIX),
            _scaled(tone, 0.7),
            -1,
            cv2.LINE_8,
            _SHIFT,
        )
        cv2.circle(
            sc.img,
            _pt(hx - sx * rad * 0.25, hy - sy * rad * 0.25),
            int(rad * 0.7 * _FIX),
            _scaled(tone, 1.12),
            -1,
            cv2.LINE_8,
            _SHIFT,
        )
    for _ in range(int(rng.integers(0, 4))):
        d = rng.uniform(0, 0.6 * r)
        a = rng.uniform(0, 2 * np.pi)
        ang = rng.uniform(0, np.pi)
        junk = _rect(
            cx + d * math.cos(a),
            cy + d * math.sin(a),
            math.cos(ang),
            math.sin(ang),
            rng.uniform(1.5, 4),
            rng.uniform(1, 3),
        )
        _fill(sc, junk, CLUTTER, _jitter(rng, (140, 135, 125), 60))


def _pt(x: float, y: float) -> tuple[int, int]:
    """One (x, y) point in cv2 fixed point."""
    return int(math.floor(x * _FIX + 0.5)), int(math.floor(y * _FIX + 0.5))


def _river(sc: _Scene, width: float) -> None:
    """A river: a thick curve through the view whose banks wander (width modulated along the
    centreline), with a darker deep channel in the image only."""
    rng = sc.rng
    c, R = sc.centre, sc.reach
    ang = rng.uniform(0, np.pi)
    off = rng.uniform(-0.25, 0.25) * sc.size
    dx, dy = math.cos(ang), math.sin(ang)
    px, py = c - dy * off, c + dx * off
    k = rng.normal(0, 0.3, 2) * R
    pts = _bezier(
        (px - R * dx, py - R * dy),
        (px - R / 3 * dx - dy * k[0], py - R / 3 * dy + dx * k[0]),
        (px + R / 3 * dx - dy * k[1], py + R / 3 * dy + dx * k[1]),
        (px + R * dx, py + R * dy),
        64,
    )
    t = np.linspace(0, 1, len(pts))
    wobble = sum(
        rng.uniform(0.03, 0.12) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        for f in (1.5, 3.7, 7.9)
    )
    n = _normals(pts)
    colour = _jitter(rng, _pick(rng, _WATER), 6)
    for frac, label, tone in ((0.5, WATER, colour), (0.27, None, _scaled(colour, 0.9))):
        w = (width * frac * (1.0 + wobble))[:, None]
        outline = np.concatenate([pts + n * w, (pts - n * w)[::-1]])
        _fill(sc, outline, label, tone)
    sc.has_water = True


def _lake(sc: _Scene, cx: float, cy: float, r: float) -> None:
    """A pond or lake: a lobed blob, darker towards the middle (image only)."""
    rng = sc.rng
    colour = _jitter(rng, _pick(rng, _WATER), 6)
    outline = _blob(rng, cx, cy, r, 0.3, 48)
    _fill(sc, outline, WATER, colour)
    inner = (outline - (cx, cy)) * 0.55 + (cx, cy)
    _fill(sc, inner, None, _scaled(colour, 0.9))
    sc.has_water = True


def _water_fraction(sc: _Scene) -> float:
    return float(np.count_nonzero(sc.lab == WATER)) / sc.lab.size


# ----------------------------------------------------------------------------------------
# Roads and paved lots
# ----------------------------------------------------------------------------------------


def _line_road(sc: _Scene, ang: float, off: float, curv: float) -> np.ndarray:
    """N x 2 centreline crossing the whole view in direction ``ang`` at signed distance
    ``off`` from the centre, bent by ``curv`` (0 = straight)."""
    c, R = sc.centre, sc.reach
    dx, dy = math.cos(ang), math.sin(ang)
    px, py = c - dy * off, c + dx * off
    k = sc.rng.normal(0, 1, 2) * curv * R
    return _bezier(
        (px - R * dx, py - R * dy),
        (px - R / 3 * dx - dy * k[0], py - R / 3 * dy + dx * k[0]),
        (px + R / 3 * dx - dy * k[1], py + R / 3 * dy + dx * k[1]),
        (px + R * dx, py + R * dy),
    )


def _curved_road(sc: _Scene) -> np.ndarray:
    """N x 2 centreline of a winding road entering and leaving the view at random sides."""
    rng = sc.rng
    c, R = sc.centre, sc.reach
    a0 = rng.uniform(0, 2 * np.pi)
    a1 = a0 + np.pi + rng.uniform(-1.0, 1.0)
    inner = rng.uniform(-0.45, 0.45, 4) * sc.size
    return _bezier(
        (c + R * math.cos(a0), c + R * math.sin(a0)),
        (c + inner[0], c + inner[1]),
        (c + inner[2], c + inner[3]),
        (c + R * math.cos(a1), c + R * math.sin(a1)),
    )


def _road(
    sc: _Scene, pts: np.ndarray, width: float, sidewalk: float = 0.0, marks: bool = False
) -> _Road:
    """Draw a road along centreline ``pts`` (N x 2): optional lighter sidewalks, asphalt,
    optional dashed centre line (image only: the class stays impervious)."""
    rng = sc.rng
    p = [_fix(pts)]
    if sidewalk > 0:
        thick = int(round(width + 2 * sidewalk)) - 1
        cv2.polylines(sc.lab, p, False, IMPERVIOUS, thick, cv2.LINE_8, _SHIFT)
        cv2.polylines(
            sc.img, p, False, _jitter(rng, _pick(rng, _CONCRETE), 6), thick, cv2.LINE_8, _SHIFT
        )
    thick = max(1, int(round(width)) - 1)
    cv2.polylines(sc.lab, p, False, IMPERVIOUS, thick, cv2.LINE_8, _SHIFT)
    cv2.polylines(
        sc.img, p, False, _jitter(rng, _pick(rng, _ASPHALT), 5), thick, cv2.LINE_8, _SHIFT
    )
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    road = _Road(
        pts=pts,
        cum=np.concatenate([[0.0], np.cumsum(seg)]),
        width=width,
        paved=width + 2 * sidewalk,
    )
    if marks:
        dash = rng.uniform(6, 12)
        t = np.arange(0.0, road.cum[-1] - dash, 2 * dash)
        a, _ = _along(road, t)
        b, _ = _along(road, t + dash)
        dashes = _fix(np.stack([a, b], axis=1))
        cv2.polylines(sc.img, list(dashes), False, (208, 206, 196), 1, cv2.LINE_8, _SHIFT)
    sc.roads.append(road)
    return road


def _along(road: _Road, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (n x 2) and unit tangents (n x 2) at arc lengths ``t`` (n) along a road."""
    i = np.clip(np.searchsorted(road.cum, t, side="right"), 1, len(road.cum) - 1)
    seg = road.pts[i] - road.pts[i - 1]
    seglen = np.maximum(road.cum[i] - road.cum[i - 1], 1e-9)
    f = ((t - road.cum[i - 1]) / seglen)[:, None]
    return road.pts[i - 1] + f * seg, seg / seglen[:, None]


def _lot(
    sc: _Scene, cx: float, cy: float, ux: float, uy: float, hl: float, hw: float, fill_p: float
) -> None:
    """A parking lot: asphalt rectangle with double rows of stalls (white lines) along
    (ux, uy), aisles between them, and a car in each stall with probability ``fill_p``.

    Stalls are 3+ px wider than the widest car so parked cars never touch: each car stays
    its own connected component, as in real lots."""
    rng = sc.rng
    vx, vy = -uy, ux
    colour = _jitter(rng, _pick(rng, _ASPHALT), 5)
    _fill(sc, _rect(cx, cy, ux, uy, hl, hw), IMPERVIOUS, colour)
    stall = rng.uniform(14.5, 16.5)
    depth = rng.uniform(24, 28)
    aisle = rng.uniform(16, 24)
    n_stalls = int((2 * hl - 8) // stall)
    if n_stalls < 1:
        return
    us = (np.arange(n_stalls) - (n_stalls - 1) / 2) * stall
    lines: list[np.ndarray] = []
    v = -hw + aisle * 0.6
    while v + 2 * depth <= hw - aisle * 0.3:
        for row_v in (v + depth / 2, v + 1.5 * depth):
            for u_edge in np.append(us - stall / 2, us[-1] + stall / 2):
                a = (
                    cx + ux * u_edge + vx * (row_v - depth / 2 + 1),
                    cy + uy * u_edge + vy * (row_v - depth / 2 + 1),
                )
                b = (
                    cx + ux * u_edge + vx * (row_v + depth / 2 - 1),
                    cy + uy * u_edge + vy * (row_v + depth / 2 - 1),
                )
                lines.append(np.array([a, b]))
        v += 2 * depth + aisle
    if lines:
        cv2.polylines(
            sc.img, list(_fix(np.stack(lines))), False, (214, 214, 206), 1, cv2.LINE_8, _SHIFT
        )
    # second pass for the cars so stall lines never paint over a parked car
    v = -hw + aisle * 0.6
    while v + 2 * depth <= hw - aisle * 0.3:
        for row_v, facing in ((v + depth / 2, 1.0), (v + 1.5 * depth, -1.0)):
            for u0 in us[rng.random(n_stalls) < fill_p]:
                length = rng.uniform(16, min(24, depth - 2))
                width = rng.uniform(8, min(12, stall - 3.5))
                du, dv = rng.uniform(-1, 1), rng.uniform(-1.5, 1.5)
                x = cx + ux * (u0 + du) + vx * (row_v + dv)
                y = cy + uy * (u0 + du) + vy * (row_v + dv)
                if _in_view(sc, x, y, 14):
                    f = facing if rng.random() < 0.8 else -facing  # most cars park nose-in
                    _car(sc, x, y, vx * f, vy * f, length / 2, width / 2, check=False)
        v += 2 * depth + aisle


def _plaza(sc: _Scene, cx: float, cy: float, ux: float, uy: float, hl: float, hw: float) -> None:
    """A paved square: light concrete with a faint paving grid (image only)."""
    rng = sc.rng
    colour = _jitter(rng, _pick(rng, _CONCRETE), 6)
    _fill(sc, _rect(cx, cy, ux, uy, hl, hw), IMPERVIOUS, colour)
    period = rng.uniform(10, 18)
    tone = _scaled(colour, 0.95)
    _stripes(sc, cx, cy, ux, uy, hl, hw, period, tone)
    _stripes(sc, cx, cy, -uy, ux, hw, hl, period, tone)


def _lot_by_road(sc: _Scene, parking: bool, tries: int = 4) -> None:
    """Place a parking lot or plaza beside a random road, aligned with it."""
    rng = sc.rng
    if not sc.roads:
        return
    for _ in range(tries):
        road = sc.roads[int(rng.integers(len(sc.roads)))]
        (p,), (d,) = _along(road, rng.uniform(0, road.cum[-1], 1))
        hl, hw = rng.uniform(40, 90) * sc.scale, rng.uniform(35, 70) * sc.scale
        side = rng.choice([-1.0, 1.0])
        off = side * (road.paved / 2 + hw + 2)
        cx, cy = p[0] - d[1] * off, p[1] + d[0] * off
        if _rect_is_free(sc, cx, cy, d[0], d[1], hl, hw, _ON_GROUND):
            if parking:
                _lot(sc, cx, cy, d[0], d[1], hl, hw, rng.uniform(0.4, 0.9))
            else:
                _plaza(sc, cx, cy, d[0], d[1], hl, hw)
            return


# ----------------------------------------------------------------------------------------
# Buildings
# ----------------------------------------------------------------------------------------


def _roof(
    sc: _Scene,
    cx: float,
    cy: float,
    ux: float,
    uy: float,
    hl: float,
    hw: float,
    colour: tuple[int, int, int],
    gabled: bool,
) -> None:
    """One rectangular roof part: label + base colour, then image-only detail. Gabled roofs
    split along the long axis into a lit and a dark slope with a light ridge; flat roofs get
    a parapet rim and a few AC boxes with their own small shadows."""
    rng = sc.rng
    pts = _rect(cx, cy, ux, uy, hl, hw)
    _fill(sc, pts, BUILDING, colour)
    cv2.fillPoly(sc.shade, [_fix(pts)], 0, cv2.LINE_8, _SHIFT)  # a roof is above its own shadow
    sx, sy = sc.sun
    if gabled:
        if hl < hw:  # ridge runs along the long side
            ux, uy, hl, hw = -uy, ux, hw, hl
        vx, vy = -uy, ux
        lit = vx * sx + vy * sy < 0  # the +v slope faces away from where shadows fall
        for side, bright in ((1.0, lit), (-1.0, not lit)):
            half = _rect(cx + side * vx * hw / 2, cy + side * vy * hw / 2, ux, uy, hl, hw / 2)
            _fill(sc, half, None, _scaled(colour, 1.12 if bright else 0.8))
        ridge = np.array([(cx - ux * hl, cy - uy * hl), (cx + ux * hl, cy + uy * hl)])
        cv2.polylines(sc.img, [_fix(ridge)], False, _scaled(colour, 1.25), 1, cv2.LINE_8, _SHIFT)
        return
    rim = min(2.5, hw * 0.3)
    _fill(
        sc,
        _rect(cx, cy, ux, uy, hl - rim, hw - rim),
        None,
        _scaled(colour, 0.92 if sum(colour) > 300 else 1.1),
    )
    for _ in range(int(rng.integers(0, 1 + int(hl * hw / 300)))):
        e = rng.uniform(1.5, 3.5)
        # keep the box and its shadow on the roof: image detail must not leak off the label
        room_u, room_v = hl - e - 3, hw - e - 3
        if room_u <= 0 or room_v <= 0:
            break
        a, b = rng.uniform(-room_u, room_u), rng.uniform(-room_v, room_v)
        bx, by = cx + ux * a - uy * b, cy + uy * a + ux * b
        _fill(sc, _rect(bx + sx * 2, by + sy * 2, ux, uy, e, e), None, _scaled(colour, 0.6))
        _fill(sc, _rect(bx, by, ux, uy, e, e), None, _jitter(rng, (190, 192, 194), 10))


def _building(
    sc: _Scene,
    cx: float,
    cy: float,
    ux: float,
    uy: float,
    hl: float,
    hw: float,
    height: float,
    wing: bool,
    big: bool = False,
    check: bool = True,
) -> bool:
    """Place a building (rectangle, or L-shape when ``wing``) if its footprint is on grass
    (or unconditionally without ``check``, for layouts that are free by construction); cast
    its shadow, then draw the roof. Returns whether it was placed."""
    rng = sc.rng
    parts = [(cx, cy, hl, hw)]
    if wing:
        whl, whw = hl * rng.uniform(0.3, 0.5), hw * rng.uniform(0.6, 1.1)
        # the wing sits at one end and goes to the back (+v), away from the street
        du, dv = rng.choice([-1.0, 1.0]) * (hl - whl), hw + whw * 0.85
        parts.append((cx + ux * du - uy * dv, cy + uy * du + ux * dv, whl, whw))
    for px, py, phl, phw in parts:
        if check and not _rect_is_free(sc, px, py, ux, uy, phl + 2, phw + 2, _ON_GRASS):
            return False
    for px, py, phl, phw in parts:
        _cast_shadow(sc, _rect(px, py, ux, uy, phl, phw), height)
    colour = _jitter(rng, _pick(rng, _ROOFS[3:] if big else _ROOFS), 10)
    gabled = (not big) and rng.random() < 0.55
    for px, py, phl, phw in parts:
        _roof(sc, px, py, ux, uy, phl, phw, colour, gabled)
    return True


def _street_buildings(
    sc: _Scene,
    road: _Road,
    p: float,
    setback: tuple[float, float],
    depth: tuple[float, float],
    rows: int = 1,
    gap: tuple[float, float] = (3, 20),
) -> None:
    """Buildings facing a road on both sides, aligned with it: walk the road in steps of one
    facade plus a ``gap`` and place a building with probability ``p`` (``rows`` deep)."""
    rng = sc.rng
    s = sc.scale
    length = road.cum[-1]
    for side in (-1.0, 1.0):
        # facades and gaps for the whole road at once; one _along call for every slot
        n = int(length / (28 * s + 3)) + 1
        hls = rng.uniform(14, 34, n) * s
        steps = 2 * hls + rng.uniform(*gap, n) * s
        centres = rng.uniform(0, 30) + np.cumsum(steps) - steps + hls
        keep = (centres < length) & (rng.random(n) < p)
        if not keep.any():
            continue
        pnts, ds = _along(road, centres[keep])
        for (px, py), (dx, dy), hl in zip(pnts, ds, hls[keep]):
            if not _in_view(sc, px, py, 60):
                continue
            nx, ny = -dy * side, dx * side
            # +v of the building (its back, where a wing goes) must point away from the road
            ux, uy = (dx, dy) if side > 0 else (-dx, -dy)
            off = road.paved / 2 + rng.uniform(*setback) * s
            for _ in range(rows):
                hw = rng.uniform(*depth) * s
                height = rng.uniform(6, 16) * s
                wing = rng.random() < 0.25
                # near crossings and in tight blocks a smaller house often still fits
                for shrink in (1.0, 0.7, 0.5):
                    if _building(
                        sc,
                        px + nx * (off + hw * shrink),
                        py + ny * (off + hw * shrink),
                        ux,
                        uy,
                        hl * shrink,
                        hw * shrink,
                        height,
                        wing,
                    ):
                        break
                off += 2 * hw + rng.uniform(4, 14) * s


def _scattered_buildings(sc: _Scene, n: int, big: bool = False) -> None:
    """``n`` attempts at free-standing buildings aligned with the layout direction."""
    rng = sc.rng
    s = sc.scale
    for _ in range(n):
        ang = sc.theta + rng.integers(4) * np.pi / 2 + rng.normal(0, 0.05)
        x, y = rng.uniform(0, sc.size, 2)
        if big:
            hl, hw, h = rng.uniform(40, 75) * s, rng.uniform(30, 55) * s, rng.uniform(15, 35) * s
        else:
            hl, hw, h = rng.uniform(15, 35) * s, rng.uniform(12, 26) * s, rng.uniform(6, 16) * s
        _building(
            sc, x, y, math.cos(ang), math.sin(ang), hl, hw, h, (not big) and rng.random() < 0.3, big
        )


# ----------------------------------------------------------------------------------------
# Trees
# ----------------------------------------------------------------------------------------


def _trees(
    sc: _Scene, xs: np.ndarray, ys: np.ndarray, rs: np.ndarray, dark: tuple[int, int, int]
) -> None:
    """Draw crowns at (xs, ys) with radii rs (n each) where their centre is on open ground or
    another crown (or just outside the view, so the border cuts crowns like a real tile).
    A crown is a dark disc with a lighter, sun-side offset core and highlight (self-shadow),
    and casts a round shadow; overlapping crowns give the blobby canopy texture that tells
    trees from the smooth grass around them."""
    rng = sc.rng
    h = sc.size
    inside = (xs >= 0) & (ys >= 0) & (xs < h) & (ys < h)
    near = (xs > -rs) & (ys > -rs) & (xs < h + rs) & (ys < h + rs)
    ok = near & ~inside
    ok[inside] = _ON_GROUND_OR_TREE[
        sc.lab[ys[inside].astype(np.int64), xs[inside].astype(np.int64)]
    ]
    tones = rng.uniform(0.85, 1.15, len(xs))[ok, None]
    xs, ys, rs = xs[ok], ys[ok], rs[ok]
    if len(xs) == 0:
        return
    sx, sy = sc.sun
    k = sc.shadow_len * 1.4
    # all coordinates / radii / colours in fixed point at once; the loop only calls cv2
    xy = np.stack([xs, ys], axis=1)
    sun = np.array([sx, sy]) * rs[:, None]
    centre = _fix(xy).tolist()
    cast = _fix(xy + sun * k).tolist()
    core = _fix(xy - sun * 0.22).tolist()
    top = _fix(xy - sun * 0.42).tolist()
    radius = (rs * _FIX).astype(np.int64)
    r0, r1, r2 = (
        radius.tolist(),
        (radius * 0.74).astype(np.int64).tolist(),
        (radius * 0.38).astype(np.int64).tolist(),
    )
    base = np.array(dark, np.float64)
    c0 = np.clip(base * tones, 0, 255).astype(np.int64).tolist()
    c1 = np.clip(base * 1.45 * tones, 0, 255).astype(np.int64).tolist()
    c2 = np.clip(base * 1.95 * tones, 0, 255).astype(np.int64).tolist()
    line, shift = cv2.LINE_8, _SHIFT
    for i in range(len(r0)):
        cv2.circle(sc.low_shade, cast[i], r0[i], 1, -1, line, shift)
        cv2.circle(sc.lab, centre[i], r0[i], TREE, -1, line, shift)
        cv2.circle(sc.img, centre[i], r0[i], c0[i], -1, line, shift)
        cv2.circle(sc.img, core[i], r1[i], c1[i], -1, line, shift)
        cv2.circle(sc.img, top[i], r2[i], c2[i], -1, line, shift)
        cv2.circle(sc.low_shade, centre[i], r0[i], 0, -1, line, shift)


def _grove(sc: _Scene, cx: float, cy: float, radius: float) -> None:
    """A copse: crowns scattered in a random ellipse, dense enough to close the canopy."""
    rng = sc.rng
    s = sc.scale
    r_mean = 6.0 * s
    n = int(1.3 * (radius / r_mean) ** 2) + 1
    ang = rng.uniform(0, np.pi)
    a, b = radius, radius * rng.uniform(0.45, 1.0)
    rho = np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    ex, ey = a * rho * np.cos(phi), b * rho * np.sin(phi)
    xs = cx + ex * math.cos(ang) - ey * math.sin(ang)
    ys = cy + ex * math.sin(ang) + ey * math.cos(ang)
    _trees(sc, xs, ys, rng.uniform(4, 8.5, n) * s, _jitter(rng, _pick(rng, _TREE_DARK), 5))


def _street_trees(sc: _Scene, road: _Road) -> None:
    """A row of single trees along one side of a road, just off the pavement."""
    rng = sc.rng
    s = sc.scale
    side = rng.choice([-1.0, 1.0])
    r = rng.uniform(5, 9) * s
    t = np.arange(rng.uniform(0, 20), road.cum[-1], rng.uniform(2.6, 4.0) * r)
    p, d = _along(road, t)
    off = side * (road.paved / 2 + r * 0.8 + 1)
    xs = p[:, 0] - d[:, 1] * off
    ys = p[:, 1] + d[:, 0] * off
    rs = r * rng.uniform(0.8, 1.2, len(t))
    _trees(sc, xs, ys, rs, _jitter(rng, _pick(rng, _TREE_DARK), 5))


def _single_trees(sc: _Scene, n: int) -> None:
    rng = sc.rng
    xs, ys = rng.uniform(0, sc.size, n), rng.uniform(0, sc.size, n)
    _trees(sc, xs, ys, rng.uniform(5, 10, n) * sc.scale, _jitter(rng, _pick(rng, _TREE_DARK), 5))


def _tree_line(sc: _Scene) -> None:
    """A hedgerow: crowns along a straight line in the layout direction (field borders)."""
    rng = sc.rng
    ang = sc.theta + rng.integers(2) * np.pi / 2
    length = rng.uniform(80, 300) * sc.scale
    x0, y0 = rng.uniform(0, sc.size, 2)
    r = rng.uniform(4.5, 8) * sc.scale
    t = np.arange(0, length, r * rng.uniform(1.1, 1.6))
    xs = x0 + t * math.cos(ang) + rng.normal(0, 1.0, len(t))
    ys = y0 + t * math.sin(ang) + rng.normal(0, 1.0, len(t))
    _trees(sc, xs, ys, r * rng.uniform(0.8, 1.2, len(t)), _jitter(rng, _pick(rng, _TREE_DARK), 5))


# ----------------------------------------------------------------------------------------
# Cars
# ----------------------------------------------------------------------------------------


def _car(
    sc: _Scene, cx: float, cy: float, ux: float, uy: float, hl: float, hw: float, check: bool = True
) -> bool:
    """A car heading (ux, uy): body, dark windscreen and rear window, and a small cast shadow
    (darkens whatever is beside it; that ground keeps its class). With ``check`` it is only
    placed if the whole footprint is on pavement (not over trees, roofs or other cars)."""
    rng = sc.rng
    if check and not _rect_is_free(sc, cx, cy, ux, uy, hl + 1, hw + 1, _ON_PAVEMENT):
        return False
    colour = _jitter(
        rng,
        _CAR_COLOURS[min(int(np.searchsorted(_CAR_CDF, rng.random())), len(_CAR_COLOURS) - 1)],
        8,
    )
    sx, sy = sc.sun
    body = _rect(cx, cy, ux, uy, hl, hw)
    cv2.fillPoly(sc.low_shade, [_fix(body + (sx * 2.5, sy * 2.5))], 1, cv2.LINE_8, _SHIFT)
    _fill(sc, body, CAR, colour)
    cv2.fillPoly(sc.low_shade, [_fix(body)], 0, cv2.LINE_8, _SHIFT)
    glass = (40, 44, 52) if sum(colour) > 200 else (70, 76, 88)
    inset = max(hw - 1.3, 1.0)
    _fill(
        sc, _rect(cx + ux * hl * 0.42, cy + uy * hl * 0.42, ux, uy, hl * 0.14, inset), None, glass
    )
    _fill(
        sc, _rect(cx - ux * hl * 0.66, cy - uy * hl * 0.66, ux, uy, hl * 0.09, inset), None, glass
    )
    return True


def _road_cars(sc: _Scene, road: _Road, mean_gap: float) -> None:
    """Cars driving along a road: one lane per direction on wide roads, one on narrow ones,
    gaps between cars exponential with mean ``mean_gap`` px, heading with the traffic."""
    rng = sc.rng
    w = road.width
    lanes = ((w / 4, 1.0), (-w / 4, -1.0)) if w >= 18 else ((0.0, float(rng.choice([-1.0, 1.0]))),)
    length = road.cum[-1]
    for off, heading in lanes:
        n = int(length / (20 + mean_gap)) + 2
        lens = rng.uniform(16, 24, n)
        t = rng.uniform(0, mean_gap) + np.cumsum(lens + 4 + rng.exponential(mean_gap, n))
        keep = t < length - 12
        t, lens = t[keep], lens[keep]
        if len(t) == 0:
            continue
        p, d = _along(road, t)
        lat = off + rng.normal(0, 1.0, len(t))
        xs = p[:, 0] - d[:, 1] * lat
        ys = p[:, 1] + d[:, 0] * lat
        widths = rng.uniform(8, 12, len(t))
        for x, y, (dx, dy), ln, wd in zip(xs, ys, d, lens, widths):
            if _in_view(sc, x, y, 12):
                _car(sc, x, y, dx * heading, dy * heading, ln / 2, wd / 2)


# ----------------------------------------------------------------------------------------
# Scene kinds
# ----------------------------------------------------------------------------------------


def _some_roads(
    sc: _Scene,
    n: int,
    widths: tuple[float, float],
    curved_p: float,
    sidewalk_p: float,
    marks_p: float,
) -> None:
    """``n`` roads: most straight-ish along the layout grid (theta or theta + 90 deg), some
    winding. Widths in px at scale 1, clipped to the 14..40 px range of real roads."""
    rng = sc.rng
    for _ in range(n):
        w = float(np.clip(rng.uniform(*widths) * sc.scale, 14, 40))
        if rng.random() < curved_p:
            pts = _curved_road(sc)
        else:
            ang = sc.theta + rng.integers(2) * np.pi / 2 + rng.normal(0, 0.05)
            pts = _line_road(
                sc, ang, rng.uniform(-0.4, 0.4) * sc.size, rng.choice([0.0, 0.08, 0.2])
            )
        sw = rng.uniform(3, 6) if rng.random() < sidewalk_p else 0.0
        _road(sc, pts, w, sw, w >= 20 and rng.random() < marks_p)


def _grid_roads(
    sc: _Scene,
    spacing: tuple[float, float],
    widths: tuple[float, float],
    keep_p: float,
    sidewalk_p: float,
    marks_p: float,
) -> None:
    """Two families of near-parallel roads (theta and ~theta + 90 deg) forming blocks."""
    rng = sc.rng
    for fam in range(2):
        ang = sc.theta + fam * np.pi / 2 + rng.normal(0, 0.04)
        sp = rng.uniform(*spacing) * sc.scale
        o = -sc.size * 0.72 + rng.uniform(0, sp)
        while o < sc.size * 0.72:
            if rng.random() < keep_p:
                w = float(np.clip(rng.uniform(*widths) * sc.scale, 14, 40))
                sw = rng.uniform(3, 6) if rng.random() < sidewalk_p else 0.0
                _road(
                    sc,
                    _line_road(sc, ang, o, rng.choice([0.0, 0.0, 0.05])),
                    w,
                    sw,
                    w >= 20 and rng.random() < marks_p,
                )
            o += sp * rng.uniform(0.85, 1.15)


def _clutter_patches(sc: _Scene, n: int, radius: tuple[float, float]) -> None:
    rng = sc.rng
    for _ in range(n):
        x, y = rng.uniform(0, sc.size, 2)
        _clutter_patch(sc, x, y, rng.uniform(*radius) * sc.scale)


def _groves(sc: _Scene, n: int, radius: tuple[float, float]) -> None:
    rng = sc.rng
    for _ in range(n):
        x, y = rng.uniform(0, sc.size, 2)
        _grove(sc, x, y, rng.uniform(*radius) * sc.scale)


def _all_road_cars(sc: _Scene, gap: tuple[float, float]) -> None:
    for road in sc.roads:
        _road_cars(sc, road, sc.rng.uniform(*gap))


def _gen_mixed(sc: _Scene) -> None:
    """A bit of everything: grass with patches, some bare soil, maybe a pond or river, one to
    three roads with houses, a lot or plaza, copses and single trees, traffic."""
    rng = sc.rng
    a = sc.area
    _ground(sc)
    if rng.random() < 0.25:
        _parcel(
            sc,
            *rng.uniform(0, sc.size, 2),
            rng.uniform(60, 120) * sc.scale,
            rng.uniform(50, 100) * sc.scale,
            0.4,
        )
    _clutter_patches(sc, int(rng.binomial(max(1, round(3 * a)), 0.45)), (15, 45))
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            _river(sc, rng.uniform(30, 80) * sc.scale)
        else:
            _lake(sc, *rng.uniform(0, sc.size, 2), rng.uniform(30, 75) * sc.scale)
    n_roads = int(rng.choice(4, p=(0.05, 0.45, 0.35, 0.15))) + int(
        rng.binomial(max(0, round(a) - 1), 0.4)
    )
    _some_roads(sc, n_roads, (14, 32), 0.35, 0.4, 0.5)
    if rng.random() < 0.4:
        _lot_by_road(sc, parking=rng.random() < 0.6)
    for road in sc.roads:
        _street_buildings(sc, road, rng.uniform(0.3, 0.8), (5, 20), (12, 28))
    _scattered_buildings(sc, int(rng.poisson(1.5 * a)))
    if rng.random() < 0.3:
        _scattered_buildings(sc, 1, big=True)
    _groves(sc, int(rng.binomial(max(1, round(3 * a)), 0.75)), (20, 70))
    for road in sc.roads:
        if rng.random() < 0.35:
            _street_trees(sc, road)
    _single_trees(sc, int(rng.poisson(6 * a)))
    _all_road_cars(sc, (25, 120))


def _gen_dense(sc: _Scene) -> None:
    """Inner city: a rectangular street grid in the layout frame whose blocks are filled by
    construction (no placement search): rows of houses along both long sides of a block,
    sometimes one big flat-roofed block or a small park; courtyard trees; traffic."""
    rng = sc.rng
    s = sc.scale
    _ground(sc)
    ux, uy = math.cos(sc.theta), math.sin(sc.theta)
    vx, vy = -uy, ux
    c = sc.centre

    def grid(spacing: float) -> tuple[np.ndarray, np.ndarray]:
        """Road offsets from the centre (n) and their paved widths (n)."""
        pos = np.cumsum(rng.uniform(0.85, 1.15, 16) * spacing) - sc.reach - rng.uniform(0, spacing)
        pos = pos[pos < sc.reach]
        width = np.clip(rng.uniform(14, 26, len(pos)) * s, 14, 40)
        walk = np.where(rng.random(len(pos)) < 0.8, rng.uniform(3, 7, len(pos)), 0.0)
        return pos, np.stack([width, walk], axis=1)

    us, u_roads = grid(rng.uniform(110, 170) * s)  # roads running along v, at these u
    vs, v_roads = grid(rng.uniform(90, 140) * s)  # roads running along u, at these v
    for v, (w, walk) in zip(vs, v_roads):
        _road(sc, _line_road(sc, sc.theta, v, 0.0), w, walk, w >= 20 and rng.random() < 0.4)
    for u, (w, walk) in zip(us, u_roads):
        _road(
            sc,
            _line_road(sc, sc.theta + np.pi / 2, -u, 0.0),
            w,
            walk,
            w >= 20 and rng.random() < 0.4,
        )
    u_half = u_roads[:, 0] / 2 + u_roads[:, 1]
    v_half = v_roads[:, 0] / 2 + v_roads[:, 1]

    def house(u: float, v: float, hl: float, hw: float, back: float, big: bool = False) -> None:
        """A building at block coordinates (u, v) whose back (+v of its frame) is ``back``."""
        x, y = c + u * ux + v * vx, c + u * uy + v * vy
        if _in_view(sc, x, y, hl + hw):
            h = rng.uniform(15, 35) * s if big else rng.uniform(6, 18) * s
            bx, by = (ux, uy) if back > 0 else (-ux, -uy)
            _building(
                sc, x, y, bx, by, hl, hw, h, (not big) and rng.random() < 0.2, big, check=False
            )

    for i in range(len(us) - 1):
        u0, u1 = us[i] + u_half[i] + 2, us[i + 1] - u_half[i + 1] - 2
        for j in range(len(vs) - 1):
            v0, v1 = vs[j] + v_half[j] + 2, vs[j + 1] - v_half[j + 1] - 2
            if u1 - u0 < 20 or v1 - v0 < 20:
                continue
            bu, bv = (u0 + u1) / 2, (v0 + v1) / 2
            if not _in_view(
                sc, c + bu * ux + bv * vx, c + bu * uy + bv * vy, max(u1 - u0, v1 - v0)
            ):
                continue
            r = rng.random()
            if r < 0.15:  # one big block building
                inset = rng.uniform(2, 8) * s
                house(bu, bv, (u1 - u0) / 2 - inset, (v1 - v0) / 2 - inset, 1.0, big=True)
                continue
            if r < 0.21:  # a small park
                _grove(
                    sc, c + bu * ux + bv * vx, c + bu * uy + bv * vy, min(u1 - u0, v1 - v0) * 0.35
                )
                continue
            if r > 0.75:  # paved courtyard instead of gardens
                _plaza(
                    sc,
                    c + bu * ux + bv * vx,
                    c + bu * uy + bv * vy,
                    ux,
                    uy,
                    (u1 - u0) / 2,
                    (v1 - v0) / 2,
                )
            depth = min(rng.uniform(25, 50) * s, (v1 - v0) / 2 - 1)
            for side in (-1.0, 1.0):
                vc = bv + side * ((v1 - v0) / 2 - depth / 2)
                u = u0
                while u1 - u >= 16 * s:
                    f = min(rng.uniform(20, 60) * s, u1 - u)
                    if rng.random() > 0.08:
                        house(u + f / 2, vc, f / 2, depth / 2 * rng.uniform(0.85, 1.0), -side)
                    u += f + rng.uniform(0, 5) * s
            if v1 - v0 > 2 * depth + 16 and rng.random() < 0.6:  # backyard trees
                k = int(rng.integers(1, 4))
                tu = rng.uniform(u0 + 8, u1 - 8, k)
                tv = bv + rng.uniform(-1, 1, k) * ((v1 - v0) / 2 - depth - 6)
                _trees(
                    sc,
                    c + tu * ux + tv * vx,
                    c + tu * uy + tv * vy,
                    rng.uniform(5, 9, k) * s,
                    _jitter(rng, _pick(rng, _TREE_DARK), 5),
                )
    if rng.random() < 0.15:
        _clutter_patches(sc, 1, (10, 20))
    _all_road_cars(sc, (15, 60))


def _gen_road_network(sc: _Scene) -> None:
    """Crossing roads of all widths (wide marked ones, winding ones) with heavy traffic, open
    ground between them, sparse buildings and roadside trees."""
    rng = sc.rng
    a = sc.area
    _ground(sc)
    if rng.random() < 0.4:
        _fields(sc, 0.2, rng.uniform(2, 6))
    _grid_roads(sc, (80, 200), (16, 40), 0.75, 0.3, 0.8)
    _some_roads(sc, 1 + int(rng.integers(2)), (18, 36), 1.0, 0.2, 0.7)
    for road in sc.roads:
        _street_buildings(sc, road, 0.15, (6, 20), (12, 26))
        if rng.random() < 0.35:
            _street_trees(sc, road)
    _groves(sc, int(rng.binomial(max(1, round(2 * a)), 0.4)), (15, 40))
    _all_road_cars(sc, (8, 50))


def _gen_water(sc: _Scene) -> None:
    """Framed on water: a broad river or a lake dominates the view; wooded banks, maybe a
    road or bridge with a few houses."""
    rng = sc.rng
    a = sc.area
    _ground(sc)
    if rng.random() < 0.5:
        _river(sc, rng.uniform(0.35, 0.6) * sc.size)
    else:
        c = sc.centre + rng.uniform(-0.15, 0.15, 2) * sc.size
        _lake(sc, c[0], c[1], rng.uniform(0.3, 0.45) * sc.size)
    for _ in range(5):
        if _water_fraction(sc) >= 0.3:
            break
        _lake(sc, *rng.uniform(0.2, 0.8, 2) * sc.size, rng.uniform(0.2, 0.35) * sc.size)
    if rng.random() < 0.3:
        _clutter_patches(sc, 1, (15, 35))
    if rng.random() < 0.5:
        _some_roads(sc, 1, (14, 28), 0.5, 0.2, 0.3)
    for road in sc.roads:
        _street_buildings(sc, road, 0.4, (5, 20), (12, 26))
    _groves(sc, int(rng.binomial(max(1, round(4 * a)), 0.6)), (15, 45))
    _single_trees(sc, int(rng.poisson(3 * a)))
    _all_road_cars(sc, (40, 150))


def _gen_fields(sc: _Scene) -> None:
    """Farmland: large nearly uniform parcels (crops, grass, bare soil), few edges; maybe a
    rural road, hedgerows, a farmstead."""
    rng = sc.rng
    _ground(sc)
    _fields(sc, rng.uniform(0.15, 0.4), rng.uniform(2, 7))
    if rng.random() < 0.5:
        _some_roads(sc, 1, (14, 20), 0.5, 0.0, 0.0)
    if rng.random() < 0.3 and sc.roads:
        _street_buildings(sc, sc.roads[0], 0.25, (6, 20), (12, 24))
    for _ in range(int(rng.integers(0, 3))):
        _tree_line(sc)
    if rng.random() < 0.3:
        _groves(sc, 1, (15, 35))
    _all_road_cars(sc, (80, 250))


def _gen_parking(sc: _Scene) -> None:
    """Framed on a big parking lot full of small cars, with an access road, trees along its
    edge, maybe a large store building beside it."""
    rng = sc.rng
    _ground(sc)
    ux, uy = math.cos(sc.theta), math.sin(sc.theta)
    hl = rng.uniform(0.33, 0.47) * sc.size
    hw = rng.uniform(0.33, 0.47) * sc.size
    c = sc.centre + rng.uniform(-0.08, 0.08, 2) * sc.size
    if rng.random() < 0.7:
        side = rng.choice([-1.0, 1.0])
        w = rng.uniform(16, 30)
        off = side * (hw + w / 2 + 4)
        # the lot's centre projected on the road normal, then pushed past the lot's edge
        pts = _line_road(
            sc, sc.theta, (c[0] - sc.centre) * -uy + (c[1] - sc.centre) * ux + off, 0.0
        )
        _road(sc, pts, w, rng.uniform(3, 5) if rng.random() < 0.5 else 0.0, rng.random() < 0.5)
    _lot(sc, c[0], c[1], ux, uy, hl, hw, rng.uniform(0.55, 0.95))
    _scattered_buildings(sc, 2, big=True)
    _single_trees(sc, int(rng.poisson(6 * sc.area)))
    _all_road_cars(sc, (20, 80))


def _gen_town_river(sc: _Scene) -> None:
    """Shift split only: an inner-city grid cut by a broad river with wooded banks (no
    training kind puts dense blocks and a river in one view)."""
    rng = sc.rng
    _gen_dense(sc)
    _river(sc, rng.uniform(40, 90) * sc.scale)
    sc.shade[sc.lab == WATER] = 0  # the river replaced what cast those shadows
    _groves(sc, int(rng.binomial(max(1, round(2 * sc.area)), 0.5)), (12, 30))


# ----------------------------------------------------------------------------------------
# Hard details (v2): thin structures and objects smaller than a token
# ----------------------------------------------------------------------------------------

_THIN_ON = np.array([0, 0, 1, 0, 0, 0, 1], dtype=bool)  # only over open ground
_PATH_COLOURS = ((176, 168, 150), (150, 146, 138), (196, 186, 160))
_BALLAST = (128, 118, 108)


def _overlay(sc: _Scene, mask: np.ndarray, label: int, colour: tuple[int, int, int]) -> int:
    """Paint ``label`` / ``colour`` where the scratch ``mask`` (H x W uint8) is set and the
    ground is open (``_THIN_ON``): thin structures pass under every object drawn before them,
    so image and labels agree on occlusion. Returns the number of pixels painted."""
    where = mask.astype(bool) & _THIN_ON[sc.lab]
    sc.lab[where] = label
    sc.img[where] = colour
    return int(where.sum())


def _wiggly_line(sc: _Scene, straight: bool) -> np.ndarray:
    """A curve across the view (N x 2): straight-ish in the layout frame or free-form."""
    rng = sc.rng
    c, R = sc.centre, sc.reach
    ang = sc.theta + rng.integers(2) * np.pi / 2 if straight else rng.uniform(0, np.pi)
    off = rng.uniform(-0.45, 0.45) * sc.size
    dx, dy = math.cos(ang), math.sin(ang)
    px, py = c - dy * off, c + dx * off
    k = (rng.normal(0, 0.02, 2) if straight else rng.normal(0, 0.35, 2)) * R
    return _bezier(
        (px - R * dx, py - R * dy),
        (px - R / 3 * dx - dy * k[0], py - R / 3 * dy + dx * k[0]),
        (px + R / 3 * dx - dy * k[1], py + R / 3 * dy + dx * k[1]),
        (px + R * dx, py + R * dy),
        80,
    )


def _thin(sc: _Scene, pts: np.ndarray, width: int) -> np.ndarray:
    """Scratch H x W uint8 mask of a ``width`` px polyline (1 px = a single LINE_8 stroke)."""
    mask = np.zeros_like(sc.lab)
    cv2.polylines(mask, [_fix(pts)], False, 1, int(width), cv2.LINE_8, _SHIFT)
    return mask


def _thin_structures(sc: _Scene, kind: str) -> None:
    """Footpaths (impervious), streams (water), rail lines (ballast = clutter, with rails in
    the image only) and field boundaries / ditches (bare soil = clutter), 1-3 px wide. Much
    thinner than a 16 px token and than the head's 4 px cells: a per-cell target rarely sees
    them, so they stay hard for every model and are exactly what coarse pruning loses."""
    rng = sc.rng
    a = sc.area
    rural = kind in ("fields", "mixed", "water")
    for _ in range(int(rng.poisson((1.2 if rural else 0.4) * a))):  # footpaths
        width = int(rng.choice((1, 2, 3), p=(0.3, 0.45, 0.25)))
        _overlay(sc, _thin(sc, _wiggly_line(sc, False), width), IMPERVIOUS, _jitter(rng, _pick(rng, _PATH_COLOURS), 8))
    if rng.random() < (0.35 if rural else 0.1):  # a stream
        if _overlay(sc, _thin(sc, _wiggly_line(sc, False), int(rng.choice((2, 3)))), WATER, _jitter(rng, _pick(rng, _WATER), 6)):
            sc.has_water = True
    if rng.random() < 0.12:  # a single-track rail line: 3 px ballast bed, two dark 1 px rails
        pts = _wiggly_line(sc, True)
        bed = _thin(sc, pts, 3)
        if _overlay(sc, bed, CLUTTER, _jitter(rng, _BALLAST, 8)):
            n = _normals(pts)
            for side in (-1.0, 1.0):
                rail = _thin(sc, pts + side * n, 1) & bed
                sc.img[rail.astype(bool) & (sc.lab == CLUTTER)] = (62, 60, 58)
    n_bounds = int(rng.poisson(4 * a)) if kind == "fields" else int(rng.poisson(0.8 * a))
    for _ in range(n_bounds):  # field boundaries, ditches, tracks: straight in the layout frame
        width = int(rng.choice((1, 2), p=(0.6, 0.4)))
        _overlay(sc, _thin(sc, _wiggly_line(sc, True), width), CLUTTER, _jitter(rng, _pick(rng, _SOIL), 10))


def _small_objects(sc: _Scene, kind: str) -> None:
    """Objects smaller than a token on open ground: garden sheds (buildings, 4-10 px) with
    their shadows, and young / single trees with 4-10 px crowns."""
    rng = sc.rng
    a = sc.area
    n_sheds = int(rng.poisson((1.0 if kind == "dense_buildings" else 3.0) * a))
    for _ in range(n_sheds):
        x, y = rng.uniform(0, sc.size, 2)
        hl, hw = rng.uniform(2, 5, 2)
        ang = sc.theta + rng.normal(0, 0.2)
        ux, uy = math.cos(ang), math.sin(ang)
        if not _rect_is_free(sc, x, y, ux, uy, hl + 1, hw + 1, _THIN_ON):
            continue
        pts = _rect(x, y, ux, uy, hl, hw)
        _cast_shadow(sc, pts, rng.uniform(2, 4))
        _fill(sc, pts, BUILDING, _jitter(rng, _pick(rng, _ROOFS), 14))
        cv2.fillPoly(sc.shade, [_fix(pts)], 0, cv2.LINE_8, _SHIFT)
    n_trees = int(rng.poisson(6 * a))
    xs, ys = rng.uniform(0, sc.size, n_trees), rng.uniform(0, sc.size, n_trees)
    _trees(sc, xs, ys, rng.uniform(2, 5, n_trees), _jitter(rng, _pick(rng, _TREE_DARK), 5))


# ----------------------------------------------------------------------------------------
# Domains: the generator settings behind each split
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneStyle:
    """Generator settings that make a domain. Train, val and test share ``TRAIN_STYLE`` (i.i.d.
    draws); the ``shift`` split uses ``SHIFT_STYLE``: another season, a ground sampling distance
    of 0.5-2x the training one, a lower sun, more haze, and a layout kind training never saw.

    kinds / kind_probs: scene kinds and their probabilities; season: "summer" or "autumn"
    (recolours vegetation and water); gsd: range of the ground-sampling factor (2 = each pixel
    covers twice the ground, objects look half as big); shadow_len: cast-shadow length per unit
    height; haze_p: probability of haze / cloud patches; seasons: when not empty, each scene
    draws its season from these (uniformly, as its last layout draw) instead of ``season``;
    lookalike_p, lookalikes: each connected region of a class named in ``lookalikes`` (keys of
    ``LOOKALIKES``: "roof", "tree", "water") is, with probability lookalike_p, painted and
    textured as another class (roofs as pavement, crowns as grass, water as asphalt) while its
    label and the shadow it casts stay: only the region's outline and surroundings tell. Drawn
    after the season, "roof" first; lookalike_p = 0 draws nothing.
    """

    name: str
    kinds: tuple[str, ...]
    kind_probs: tuple[float, ...]
    season: str = "summer"
    gsd: tuple[float, float] = (1.0, 1.0)
    shadow_len: tuple[float, float] = (0.5, 1.1)
    haze_p: float = 0.25
    seasons: tuple[str, ...] = ()
    lookalike_p: float = 0.0
    lookalikes: tuple[str, ...] = ("roof",)


TRAIN_STYLE = SceneStyle("train", SCENE_KINDS, _KIND_PROBS)
SHIFT_STYLE = SceneStyle(
    "shift",
    SCENE_KINDS + SHIFT_KINDS,
    (0.2, 0.14, 0.1, 0.1, 0.08, 0.1, 0.28),
    season="autumn",
    gsd=(0.5, 2.0),
    shadow_len=(1.1, 2.0),
    haze_p=0.5,
)
# A pilot for issue #11 (docs/bench/ablations_v2/varied_domain.md), not the shipped model's data:
# the training layouts under a per-scene season and a 0.7-1.5x ground sampling, so the colour
# of a crown or a field only says its class together with the rest of the scene. Its own train
# and val seeds; the shift split stays as it is (and is no longer wholly unseen by a model
# trained on this style).
VARIED_STYLE = SceneStyle(
    "varied",
    SCENE_KINDS,
    _KIND_PROBS,
    gsd=(0.7, 1.5),
    shadow_len=(0.5, 1.6),
    haze_p=0.35,
    seasons=("summer", "autumn"),
)
# The same pilot with the shift split's ranges: 0.5-2x ground sampling, shadows up to 2 per unit
# height, haze in half the scenes. Only the town-with-river layout of ``shift`` stays unseen.
WIDE_STYLE = replace(VARIED_STYLE, name="wide", gsd=(0.5, 2.0), shadow_len=(0.5, 2.0), haze_p=0.5)
# A second pilot for #11: the training style, but half the roofs are gravel / tar roofs that look
# like the pavement around them up close. A token inside such a roof says "impervious" by itself;
# only the roof's outline and its cast shadow, seen together, say "building". Labels that need
# the region around a token are what early exits cannot read (docs/bench/ablations_v2/context.md).
CONTEXT_STYLE = replace(TRAIN_STYLE, name="context", lookalike_p=0.5)
# The same with every roof a lookalike: the dose-response point beside 0 (standard) and 0.5.
CONTEXT_ALL_STYLE = replace(TRAIN_STYLE, name="context_all", lookalike_p=1.0)
# Half of the roofs, tree groups and water bodies disguised: three classes (not one) whose pixels
# do not say their class, to test whether the layer-3 gap was capped by the classes that stay easy.
CONTEXT_MANY_STYLE = replace(CONTEXT_STYLE, name="context_many", lookalikes=("roof", "tree", "water"))

# Autumn gains per class (RGB), applied to the base colours before texture: yellow-brown
# grass, orange-brown crowns, darker wet soil, greener water. Impervious / roofs / cars keep
# theirs, as in a real seasonal pair of tiles.
_AUTUMN_GAINS = np.array(
    [
        (1.0, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        (1.22, 0.95, 0.7),
        (2.1, 1.15, 0.8),
        (1.0, 1.0, 1.0),
        (0.85, 1.05, 0.85),
        (0.82, 0.82, 0.85),
    ],
    dtype=np.float32,
)


def _season(sc: _Scene, season: str) -> None:
    if season == "summer":
        return
    gains = _AUTUMN_GAINS[sc.lab]  # H x W x 3
    sc.img[:] = np.clip(sc.img * gains, 0, 255).astype(np.uint8)


_GENERATORS: dict[str, Callable[[_Scene], None]] = {
    "mixed": _gen_mixed,
    "dense_buildings": _gen_dense,
    "road_network": _gen_road_network,
    "water": _gen_water,
    "fields": _gen_fields,
    "parking": _gen_parking,
    "town_river": _gen_town_river,
}


# ----------------------------------------------------------------------------------------
# Rendering: texture, shadows, illumination, optics
# ----------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """size x size float32 noise with roughly unit variance and feature size ~ size / cells:
    a small (cells + 1)^2 Gaussian grid upsampled bicubically (cheap low-frequency noise)."""
    g = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    big = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    big *= np.float32(1.2)  # bicubic smoothing lowers the variance; bring it back near 1
    return big


def _render(sc: _Scene, texture: np.ndarray | None = None) -> np.ndarray:
    """Base colours (H x W x 3 uint8) + labels -> final H x W x 3 uint8 RGB image.

    Texture is added per class through look-up tables indexed by the texture map, shadows and
    the scene's illumination are one multiply-add per channel, then a slight blur stands in
    for the optics. Work is done per channel plane with cv2.LUT because broadcasting an
    H x W field over 3 channels costs more than the maths itself. ``texture`` (H x W uint8
    class ids, default the labels) says which class's texture a pixel gets: a lookalike roof
    is labelled building and textured as pavement."""
    rng = sc.rng
    n = sc.size
    lab = sc.lab if texture is None else texture
    lf = _smooth_noise(rng, n, max(2, n // 90))
    mf = _smooth_noise(rng, n, max(4, n // 3))
    sensor = rng.uniform(1.5, 3.5)
    hf = rng.random((n, n), dtype=np.float32)
    hf -= np.float32(0.5)
    common = cv2.LUT(lab, _LUT_MF)
    common *= mf
    common += hf * cv2.LUT(lab, _LUT_HF + np.float32(sensor * _UNIFORM_TO_UNIT))
    if sc.has_water:
        # ripples: noise stretched along one axis, faint, on water only
        g = rng.standard_normal((max(4, n // 3), max(2, n // 24)), dtype=np.float32)
        ripple = cv2.resize(g, (n, n), interpolation=cv2.INTER_CUBIC)
        if rng.random() < 0.5:
            ripple = np.ascontiguousarray(ripple.T)
        common += ripple * cv2.LUT(lab, _LUT_RIPPLE)

    # Illumination for the whole scene: brightness, contrast around mid-grey, colour
    # temperature (warm <-> cool), and shadow darkness/tint (shadows are lit by blue sky).
    contrast = rng.uniform(0.85, 1.15)
    bright = rng.uniform(-14, 14)
    temp = rng.uniform(-0.07, 0.07)
    gains = contrast * np.array([1 + temp, 1.0, 1 - temp])
    bias = float(128.0 * (1 - contrast) + bright)
    shadow = rng.uniform(0.42, 0.62) * np.array([0.92, 1.0, 1.12])

    # A linear illumination gradient across the tile (sun-facing slope, vignetting, a mosaic
    # seam): the same class is brighter on one side than on the other.
    g_ang = rng.uniform(0, 2 * np.pi)
    g_amp = rng.uniform(0.0, 0.25)
    ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    illum = np.float32(1.0) + np.float32(g_amp) * (
        np.float32(math.cos(g_ang)) * ramp[None, :] + np.float32(math.sin(g_ang)) * ramp[:, None]
    )

    shade = cv2.max(sc.shade, sc.low_shade)
    planes = cv2.split(sc.img)
    out = []
    for c in range(3):
        p = planes[c].astype(np.float32)
        p += common
        p += lf * cv2.LUT(lab, _LUT_LF[c])
        factor = np.zeros(256, np.float32)
        factor[0], factor[1] = gains[c], gains[c] * shadow[c]
        p *= cv2.LUT(shade, factor)
        p *= illum
        out.append(cv2.add(p, bias, dtype=cv2.CV_8U))  # saturating cast to uint8
    return cv2.GaussianBlur(cv2.merge(out), (3, 3), rng.uniform(0.45, 0.8))


@dataclass(frozen=True)
class Lookalike:
    """A class drawn in another class's material: ``label`` regions get one colour near one of
    ``palettes`` (the first with probability ``first_p`` when there are two) and ``material``'s
    texture. ``described`` says it in words (for model cards)."""

    label: int
    material: int
    palettes: tuple[tuple[tuple[int, int, int], ...], ...]
    described: str
    first_p: float = 1.0


LOOKALIKES: dict[str, Lookalike] = {
    # gravel / tar roofs
    "roof": Lookalike(BUILDING, IMPERVIOUS, (_CONCRETE, _ASPHALT), "roofs as pavement", 0.55),
    # a flat-topped canopy, seen from above
    "tree": Lookalike(TREE, LOW_VEGETATION, (_GRASS,), "tree groups as grass"),
    # still, dark water
    "water": Lookalike(WATER, IMPERVIOUS, (_ASPHALT,), "water as asphalt"),
}


def _lookalike_regions(sc: _Scene, p: float, names: tuple[str, ...]) -> np.ndarray:
    """Paint each connected region of each named class (``LOOKALIKES``), with probability ``p``,
    in one colour of its lookalike material (ridges, parapets, crowns and ripples painted over).
    Returns the texture map for ``_render``: the labels, with the material's class on those
    regions. Labels, and the shadows the objects cast, are untouched."""
    texture = sc.lab.copy()
    for name in names:
        look = LOOKALIKES[name]
        n, comp = cv2.connectedComponents((sc.lab == look.label).astype(np.uint8), connectivity=4)
        chosen = np.zeros(n, bool)  # per component id; 0 is the background
        colours = np.zeros((n, 3), np.uint8)
        for i in range(1, n):  # the draws, in component order
            if sc.rng.random() >= p:
                continue
            palette = look.palettes[0]
            if len(look.palettes) > 1 and sc.rng.random() >= look.first_p:
                palette = look.palettes[1]
            chosen[i], colours[i] = True, _jitter(sc.rng, _pick(sc.rng, palette), 8)
        region = chosen[comp]  # one pass over the image, not one per component
        sc.img[region] = colours[comp[region]]
        texture[region] = look.material
    return texture


def _degrade(rng: np.random.Generator, img: np.ndarray, haze_p: float) -> np.ndarray:
    """Atmosphere and sensor on the final H x W x 3 uint8 image (labels untouched, as in real
    annotated tiles): haze / thin cloud patches, cloud shadows, Gaussian sensor noise, and JPEG
    compression artefacts (blocking, ringing, chroma smear)."""
    n = img.shape[0]
    out = img.astype(np.float32)
    if rng.random() < haze_p:  # haze / thin clouds: a bright veil over soft-edged patches
        field_ = _smooth_noise(rng, n, max(2, n // 128))
        alpha = np.clip((field_ - rng.uniform(0.0, 0.8)) * 0.6, 0.0, rng.uniform(0.3, 0.65))
        veil = np.array(_jitter(rng, (214, 216, 222), 10), np.float32)
        out = out * (1.0 - alpha[..., None]) + veil * alpha[..., None]
    if rng.random() < 0.2:  # cloud shadows: dark soft patches
        field_ = _smooth_noise(rng, n, max(2, n // 160))
        dark = np.clip((field_ - 0.6) * 0.5, 0.0, rng.uniform(0.2, 0.4))
        out *= (1.0 - dark)[..., None]
    sigma = rng.uniform(0.0, 5.0)
    if sigma > 0.5:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    img = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        q = int(rng.integers(25, 91))
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _draw_kind(rng: np.random.Generator, style: SceneStyle) -> str:
    """The scene kind, the first thing a scene draws from its seed's generator."""
    return style.kinds[int(rng.choice(len(style.kinds), p=style.kind_probs))]


def split_style(split: str) -> SceneStyle:
    """The generator settings a split is drawn with; ValueError for an unknown split."""
    return _split_seed(split, 0)[1]


def split_kind(split: str, index: int) -> str:
    """The layout kind of ``split_scene(split, index)`` (e.g. "mixed", "dense_buildings"),
    without drawing the scene: for grouping a benchmark's scenes by kind. Same errors as
    :func:`split_scene`."""
    seed, style = _split_seed(split, index)
    return _draw_kind(np.random.default_rng(seed), style)


def make_scene(
    seed: int, size: int = 512, kind: str | None = None, style: SceneStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one aerial scene.

    Args:
      seed: non-negative integer; the scene is a pure function of (seed, size, kind, style).
      size: side length in pixels (square). Ground resolution is fixed (up to the style's
        ground-sampling factor): a larger size shows a larger area with the same object sizes.
      kind: one of the style's kinds (``SCENE_KINDS``, plus ``SHIFT_KINDS`` for the shift
        style), or None to draw it from the seed with the style's probabilities. The kind is
        drawn from the seed either way, so ``make_scene(s)`` equals
        ``make_scene(s, kind=<the kind it drew>)``.
      style: the domain's generator settings; ``TRAIN_STYLE`` when None.

    Returns:
      image: size x size x 3 uint8 RGB.
      labels: size x size uint8, class ids into ``CLASSES`` (0..6).
    """
    style = style or TRAIN_STYLE
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    if kind is not None and kind not in style.kinds:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {style.kinds} or None")
    size = int(size)
    rng = np.random.default_rng(int(seed))
    drawn = _draw_kind(rng, style)
    kind = kind or drawn
    sun_angle = rng.uniform(0, 2 * np.pi)
    # Draw the scene at size x gsd and resample to size: a coarser sensor sees more ground
    # with smaller objects; a finer one less ground with bigger objects.
    gsd = rng.uniform(*style.gsd)
    gen = max(_MIN_SIZE, int(round(size * gsd)))
    sc = _Scene(
        rng=rng,
        size=gen,
        scale=rng.uniform(0.8, 1.2),
        theta=rng.uniform(0, np.pi),
        sun=(math.cos(sun_angle), math.sin(sun_angle)),
        shadow_len=rng.uniform(*style.shadow_len),
        img=np.empty((gen, gen, 3), np.uint8),
        lab=np.empty((gen, gen), np.uint8),
        shade=np.zeros((gen, gen), np.uint8),
        low_shade=np.zeros((gen, gen), np.uint8),
    )
    _GENERATORS[kind](sc)
    _thin_structures(sc, kind)
    _small_objects(sc, kind)
    season = style.seasons[int(rng.integers(len(style.seasons)))] if style.seasons else style.season
    texture = _lookalike_regions(sc, style.lookalike_p, style.lookalikes) if style.lookalike_p > 0 else None
    _season(sc, season)
    image, labels = _render(sc, texture), sc.lab
    if gen != size:
        interp = cv2.INTER_AREA if gen > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
        labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
    return _degrade(rng, image, style.haze_p), labels


_SPLIT_STYLES: dict[str, SceneStyle] = {
    "shift": SHIFT_STYLE,
    "train_varied": VARIED_STYLE,
    "val_varied": VARIED_STYLE,
    "train_wide": WIDE_STYLE,
    "val_wide": WIDE_STYLE,
    "train_context": CONTEXT_STYLE,
    "val_context": CONTEXT_STYLE,
    "train_context_all": CONTEXT_ALL_STYLE,
    "val_context_all": CONTEXT_ALL_STYLE,
    "train_context_many": CONTEXT_MANY_STYLE,
    "val_context_many": CONTEXT_MANY_STYLE,
}


def _split_seed(split: str, index: int) -> tuple[int, SceneStyle]:
    """(seed, style) of a split's ``index``-th scene; ValueError for an unknown split or an index
    outside ``range(len(SPLIT_SEEDS[split]))`` (negative indices are refused rather than counted
    from the end)."""
    if not isinstance(split, str) or split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(SPLIT_SEEDS)}")
    seeds = SPLIT_SEEDS[split]
    if (
        isinstance(index, bool)
        or not isinstance(index, (int, np.integer))
        or not 0 <= index < len(seeds)
    ):
        raise ValueError(
            f"index must be an integer in [0, {len(seeds)}) for split {split!r}, got {index!r}"
        )
    return int(seeds[int(index)]), _SPLIT_STYLES.get(split, TRAIN_STYLE)


def split_scene(split: str, index: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The ``index``-th scene of a split: ``make_scene(SPLIT_SEEDS[split][index], size, style=...)``
    with the split's style (``split_style``: ``TRAIN_STYLE`` for train, val and test,
    ``SHIFT_STYLE`` for shift, a pilot style for each pilot split).

    Raises ValueError for an unknown split or an index outside ``range(len(SPLIT_SEEDS[split]))``
    (negative indices are refused rather than counted from the end)."""
    seed, style = _split_seed(split, index)
    return make_scene(seed, size, style=style)
