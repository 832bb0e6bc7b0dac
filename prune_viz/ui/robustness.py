"""The app's "Robustness" view and out-of-domain banner, without gradio.

Robustness: the image on show, corrupted (``data/corrupt.py``) at one level, runs through the
same backbone and plan; the token map of the clean run and the noisy run side by side (the
*final alive set*: which tokens reach the last block, as ``bench --noise`` defines decision
stability), and the flip map: tokens whose decision changed. Numpy images and strings only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import viz
from ..analysis import Analysis
from ..backbones.base import Backbone
from ..data.corrupt import CORRUPTIONS, corrupt
from ..engine import Plan, run_baseline, run_pruned
from ..errors import ParamError
from ..methods.base import KEPT, PRUNED
from ..ood import OOD_WARNING, ood_score, is_out_of_domain

NOISE_CHOICES = [(c.label, c.name) for c in CORRUPTIONS.values()]
MAX_STRENGTH = 4  # slider 0 (clean) .. 4 (the kind's strongest level)
FLIP_COLOURS = {1: (213, 94, 0), 2: (0, 114, 178)}  # kept -> not kept (vermillion), not kept -> kept (blue)


def ood_banner(report: dict | None) -> str:
    """The banner's Markdown when the report's unpruned run is out of domain, else ''."""
    ood = (report or {}).get("ood") or {}
    if not ood.get("out_of_domain"):
        return ""
    return f"⚠️ {OOD_WARNING} (out-of-domain score {ood['score']:.3f} > {ood['threshold']}; see the README)"


def level_of(kind: str, strength: int) -> float:
    """Slider position (0 = clean .. MAX_STRENGTH) -> the kind's level in its own unit."""
    if kind not in CORRUPTIONS:
        raise ParamError(f"unknown noise {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    s = int(strength)
    if not 0 <= s <= MAX_STRENGTH:
        raise ParamError(f"noise strength must be 0..{MAX_STRENGTH}, got {s}")
    levels = CORRUPTIONS[kind].levels
    return 0.0 if s == 0 else levels[min(s, len(levels)) - 1]


def level_text(kind: str, strength: int) -> str:
    c = CORRUPTIONS[kind]
    return "clean (no noise)" if int(strength) == 0 else f"{c.label}, {c.unit} = {level_of(kind, strength):g}"


@dataclass
class NoiseResult:
    """clean / noisy: gh x gw bool final alive sets; flips: gh x gw int8 (0 same, 1 kept on the
    clean image only, 2 kept on the noisy image only); noisy_image: what the model saw."""

    clean: np.ndarray
    noisy: np.ndarray
    flips: np.ndarray
    noisy_image: np.ndarray
    saving_clean: float
    saving_noisy: float
    ood_noisy: float | None

    @property
    def flip_share(self) -> float:
        return float(np.mean(self.flips > 0))


def alive(trace) -> np.ndarray:
    """gh x gw bool: tokens that reach the last block (the final alive set)."""
    return np.asarray(trace.drop_layer) >= trace.num_blocks


def run_noisy(backbone: Backbone, image: np.ndarray, analysis: Analysis, plan: Plan, kind: str, strength: int,
              seed: int = 0) -> NoiseResult:
    """Corrupt ``image`` (H x W x 3 uint8, the one ``analysis`` ran on), run ``plan`` on it, and
    compare its final alive set with the clean run's."""
    level = level_of(kind, strength)
    noisy = image if level == 0.0 else corrupt(image, kind, level, seed)
    from ..analysis import attention_layers

    base = run_baseline(backbone, noisy, attn_layers=attention_layers(plan))
    trace = run_pruned(backbone, noisy, plan, baseline=base, diagnostics=False)
    clean, after = alive(analysis.trace), alive(trace)
    flips = np.where(clean & ~after, 1, np.where(~clean & after, 2, 0)).astype(np.int8)
    b0 = analysis.baseline.macs
    return NoiseResult(clean, after, flips, viz.image_to_uint8(base.prep.image01, base.prep.valid_hw),
                       100.0 * (1 - analysis.trace.macs["total"] / b0), 100.0 * (1 - trace.macs["total"] / base.macs),
                       ood_score(backbone, base))


def _status(keep: np.ndarray) -> np.ndarray:
    return np.where(keep, KEPT, PRUNED).astype(np.int8)


def noise_views(result: NoiseResult, clean_image: np.ndarray, patch: int, kind: str, strength: int,
                width: int = 360) -> dict[str, object]:
    """Three titled panels (clean token map, noisy token map, flip map) and a caption."""
    def panel(img: np.ndarray, body: np.ndarray, title: str) -> np.ndarray:
        scale = width / img.shape[1]
        return viz.titled_panel(_resize(body, scale), title, width=width)

    clean_map = viz.token_status_map(clean_image, _status(result.clean), patch)
    noisy_map = viz.token_status_map(result.noisy_image, _status(result.noisy), patch)
    flip_map = viz.category_overlay(result.noisy_image, np.where(result.flips > 0, result.flips, -1).astype(np.int32),
                                    patch, FLIP_COLOURS)
    n = result.flips.size
    lost, gained = int((result.flips == 1).sum()), int((result.flips == 2).sum())
    what = level_text(kind, strength)
    caption = (f"**{what}.** Decision stability: **{100 * result.flip_share:.1f} %** of the {n} tokens flipped "
               f"({lost} kept on the clean image only, {gained} on the noisy one only); kept = reaches the last block. "
               f"MAC saving {result.saving_clean:.1f} % clean, {result.saving_noisy:.1f} % noisy (1 MAC = 1 multiply-add).")
    if is_out_of_domain(result.ood_noisy):
        caption += f"\n\n⚠️ {OOD_WARNING} (noisy image: out-of-domain score {result.ood_noisy:.3f})"
    return {
        "clean": panel(clean_image, clean_map, "Clean image: tokens kept to the end"),
        "noisy": panel(result.noisy_image, noisy_map, f"Noisy ({what}): tokens kept"),
        "flips": panel(result.noisy_image, flip_map, "Flips: vermillion lost, blue gained"),
        "caption": caption,
    }


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
