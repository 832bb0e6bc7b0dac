"""Input corruptions for the robustness benchmark and the app's noise slider: pure, seeded
functions over H x W x 3 uint8 RGB images, each returning a new H x W x 3 uint8 image.

Levels (level 0 is always the clean image):

- ``gaussian``: additive Gaussian noise, sigma in 8-bit intensity units (5, 10, 20, 40).
- ``saltpepper``: that many pixels set to pure black or white (half each), counted per 512 x 512
  pixels and scaled with the image area. MATP's noise table (seed 000, "0 / 100 / 1000 Pixels
  Noise" on 512 x 512 crops) gives the first two levels; 5000 and 20000 (1.9 % and 7.6 % of the
  pixels) extend it to where the demo model starts to suffer.
- ``blur``: Gaussian blur, sigma in pixels (0.5, 1, 2, 4).
- ``jpeg``: JPEG re-encoding at quality 80, 50, 30, 10 (OpenCV's encoder; lower = worse).
- ``haze``: uniform atmospheric scattering ``I = J (1 - a) + A a`` with airlight A = 235 grey,
  a = 0.15, 0.3, 0.5, 0.7 (nadir aerial views see one air column, so no depth map).

Every level is "more corrupted" than the one before: larger sigma, more pixels, lower quality,
thicker haze. The noise draws depend only on ``seed`` (``numpy.random.default_rng``), so the
same (image, kind, level, seed) always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

REF_PIXELS = 512 * 512  # salt-and-pepper counts are per this many pixels (MATP's crop size)
HAZE_AIRLIGHT = 235.0


def _check(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    return image


def gaussian(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive i.i.d. Gaussian noise of std ``sigma`` (intensity units), clipped to 0..255."""
    image = _check(image)
    if sigma <= 0:
        return image.copy()
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def salt_pepper(image: np.ndarray, pixels: float, seed: int = 0) -> np.ndarray:
    """``pixels`` per 512 x 512 (scaled with the area, at least 1 when > 0) distinct pixels set
    to black or white (all three channels), half each."""
    image = _check(image)
    out = image.copy()
    h, w = image.shape[:2]
    count = min(h * w, int(round(pixels * h * w / REF_PIXELS)))
    if pixels <= 0 or count == 0:
        return out
    rng = np.random.default_rng(seed)
    flat = rng.choice(h * w, size=count, replace=False)
    values = np.where(rng.random(count) < 0.5, 0, 255).astype(np.uint8)
    out.reshape(-1, 3)[flat] = values[:, None]
    return out


def blur(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian blur of std ``sigma`` pixels (kernel 6 sigma + 1, reflected borders). ``seed`` is
    unused (blur draws nothing) and kept for a common signature."""
    image = _check(image)
    if sigma <= 0:
        return image.copy()
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(image, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def jpeg(image: np.ndarray, quality: float, seed: int = 0) -> np.ndarray:
    """Encode as JPEG at ``quality`` (1..100) and decode again. ``seed`` unused."""
    image = _check(image)
    q = int(round(quality))
    if q >= 100:
        return image.copy()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, max(1, q)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def haze(image: np.ndarray, amount: float, seed: int = 0) -> np.ndarray:
    """Uniform haze: ``J (1 - amount) + airlight * amount`` (amount in [0, 1]). ``seed`` unused."""
    image = _check(image)
    a = float(np.clip(amount, 0.0, 1.0))
    out = image.astype(np.float32) * (1.0 - a) + HAZE_AIRLIGHT * a
    return np.clip(out, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class Corruption:
    """A corruption kind: its function, its levels (mildest first), what a level means."""

    name: str
    label: str
    fn: Callable[[np.ndarray, float, int], np.ndarray]
    levels: tuple[float, ...]
    unit: str
    worse_when_lower: bool = False  # JPEG quality: a lower number is a stronger corruption


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian", "Gaussian noise", gaussian, (5.0, 10.0, 20.0, 40.0), "sigma (0..255)"),
        Corruption("saltpepper", "Salt and pepper", salt_pepper, (100.0, 1000.0, 5000.0, 20000.0), "pixels per 512x512"),
        Corruption("blur", "Gaussian blur", blur, (0.5, 1.0, 2.0, 4.0), "sigma (px)"),
        Corruption("jpeg", "JPEG compression", jpeg, (80.0, 50.0, 30.0, 10.0), "quality", worse_when_lower=True),
        Corruption("haze", "Haze", haze, (0.15, 0.3, 0.5, 0.7), "haze amount a"),
    )
}


def corrupt(image: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """Apply corruption ``kind`` at ``level`` (in that kind's unit; see the module docstring).
    Raises ValueError for an unknown kind."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[kind].fn(image, float(level), seed)
