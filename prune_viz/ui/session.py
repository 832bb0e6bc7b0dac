"""One browser tab's data and the server-wide bound on the prefix caches those tabs keep.

Like segment-anything's ``SamPredictor``, a :class:`Session` owns its cached features and
guards its state: callers read its fields but change them only through its methods
(``set_image``, ``set_mask``, ``run``, ``estimate``, the prompt setters), so a new image can
never leave the previous image's forward, mask or prompts behind.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis import Analysis, analyze, attention_layers, mask_refusal, time_forwards
from ..backbones.base import Backbone
from ..backbones.provenance import provenance
from ..engine import Baseline, Plan, estimate_macs, run_baseline
from ..errors import UserError
from ..io import InputError, LoadedImage, describe_bands, load_image, load_mask
from .tables import estimate_summary

ModelKey = tuple[str, "int | None"]
TIMING_REPEAT = 3  # rounds of the Metrics tab's timing (one unpruned and one pruned forward each)
TIMING_BUDGET_MS = float(os.environ.get("PRUNE_VIZ_TIMING_BUDGET_MS", "3000"))  # longer: no timing, and why  # (backbone name, input size): what a cached forward belongs to


@dataclass
class Session:
    """One browser tab's data (kept in ``gr.State``; never in a module global)."""

    image: np.ndarray | None = None  # H x W x 3 uint8, what the models see
    image_name: str = "image.png"
    image_path: str | None = None  # the uploaded file, to re-read with other bands / stretch
    read_as: tuple | None = None  # (bands, stretch) the image was read with
    method: str | None = None  # the method in use (to restore the dropdown after a refused choice)
    runs: int = 0  # analyses started; a run that is no longer the newest does not update the page
    notices: list[str] = field(default_factory=list)
    bands: int = 3
    gt: np.ndarray | None = None
    baseline: Baseline | None = None
    baseline_for: ModelKey | None = None  # the cache key's other half (the image is the first)
    analysis: Analysis | None = None
    plan: Plan | None = None  # the plan of the analysis on show (what the Metrics timing re-runs)
    backbone_key: ModelKey | None = None  # the model the analysis on show came from
    points: list[tuple[float, float, int]] = field(default_factory=list)  # SAM prompts (x, y, label)
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None  # first corner of a box being drawn
    show_image: bool = True  # token maps over the image, or flat status colours only

    def set_show_image(self, show: bool) -> None:
        self.show_image = bool(show)
    open_tab: str = ""  # the view tab on show ("" = the first one)
    stale_tabs: set[str] = field(default_factory=set)  # hidden tabs whose views wait for the tab to open

    # --- inputs --------------------------------------------------------------------------------
    def set_image(
        self, path: str, name: str, bands: tuple[int, int, int] | None = None,
        stretch: tuple[float, float] = (2.0, 98.0), keep_gt: bool = False,
    ) -> LoadedImage:
        """Read an image (InputError for anything wrong with the file). Its cached forward,
        analysis and prompts are dropped; the mask too, unless ``keep_gt`` (the same file re-read
        with other bands or stretch). ``bands`` only apply to images with more than 3 bands."""
        many = _band_count(path) > 3
        loaded = load_image(path, bands=bands if many else None, stretch=stretch)
        self.image, self.image_path, self.image_name = loaded.rgb, path, name
        self.read_as = (bands if many else None, tuple(stretch))
        self.bands, self.notices = loaded.bands, list(loaded.notices)
        self.baseline = self.analysis = self.baseline_for = self.plan = None
        if not keep_gt:
            self.gt = None
        self.clear_prompts()
        return loaded

    def set_mask(self, path: str | None, backbone: Backbone | None) -> list[str]:
        """Read a ground-truth mask for the image (None: no mask); returns its notices. A backbone
        without semantic classes ignores the mask, and the notice says so."""
        if path is None:
            self.gt = None
            return []
        if self.image is None:
            raise UserError("load an image before its ground-truth mask")
        reason = mask_refusal(backbone) if backbone is not None else None
        if reason:
            self.gt = None
            return [f"{reason}, so the mask is ignored"]
        num_classes = backbone.num_classes if backbone is not None else 7
        self.gt, notices = load_mask(path, self.image.shape[:2], num_classes, backbone.palette if backbone is not None else None)
        return notices

    def choose_method(self, method: str) -> None:
        self.method = method

    # --- the prefix cache ----------------------------------------------------------------------
    def cached_baseline(self, key: ModelKey) -> Baseline | None:
        """The unpruned forward of this image on the model ``key``, if the session holds it."""
        return self.baseline if self.baseline_for == key else None

    def keep_baseline(self, baseline: Baseline, key: ModelKey) -> None:
        """Keep ``baseline`` as the prefix cache, within :data:`CACHE_BUDGET`."""
        self.baseline, self.baseline_for = baseline, key
        CACHE_BUDGET.keep(self)

    def drop_cache(self) -> None:
        """Drop the prefix cache. A run already using it keeps its own reference; the analysis
        on show keeps everything the views need (not the block outputs)."""
        self.baseline, self.baseline_for = None, None
        if self.analysis is not None and self.analysis.baseline.x_after:
            slim = dataclasses.replace(self.analysis.baseline, x_after=[])
            self.analysis = dataclasses.replace(self.analysis, baseline=slim)

    # --- running -------------------------------------------------------------------------------
    def run(self, backbone: Backbone, key: ModelKey, plan: Plan, ready: Analysis | None = None) -> Analysis | None:
        """Pruned forward reusing the cached unpruned forward when it is for this image and model;
        no FLOP-counter measurement, no timing repeats. ``ready``: the analysis of this very image,
        ground truth, model and plan, computed before (the server's warm start, :mod:`.warm`),
        taken instead of running.

        Runs can overlap (a user changes settings during a slow run): a run that is no longer
        the newest when it ends returns None and leaves the session as the newer one set it."""
        if self.image is None:
            raise UserError("load an image first (upload one or click an example)")
        self.runs += 1
        ticket = self.runs
        result = ready or analyze(backbone, self.image, plan, gt=self.gt, baseline=self.cached_baseline(key), measure=False,
                                  repeat=0)
        if ticket != self.runs:
            return None
        self.analysis, self.backbone_key, self.plan = result, key, plan
        self.keep_baseline(result.baseline, key)
        return result

    def time_last_run(self, backbone: Backbone, key: ModelKey, repeat: int = TIMING_REPEAT) -> dict[str, Any]:
        """Wall time of the unpruned and the pruned forward of the analysis on show, timed
        together now (interleaved, ``repeat`` rounds, no warm-up: the model ran a moment ago),
        from the cached output of the first pruning layer on. {"skipped": why} where that would
        take too long (SAM at 1024 px: about a minute) or there is nothing to time."""
        if self.analysis is None or self.plan is None or self.backbone_key != key:
            return {"skipped": "run an analysis first"}
        baseline = self.cached_baseline(key)
        if baseline is None or not baseline.x_after:
            return {"skipped": "the cached unpruned forward was dropped (server memory bound); press Run again"}
        first = self.plan.layers[0]
        suffix_ms = sum(r.time_ms for r in baseline.layers[first:])
        cost_ms = 2 * repeat * suffix_ms
        if cost_ms > TIMING_BUDGET_MS:
            return {"skipped": f"timing {repeat} unpruned and {repeat} pruned runs would take about {cost_ms / 1e3:.0f} s "
                               f"on this server; measure it with `python -m prune_viz analyze IMAGE --repeat 5` instead"}
        timing = time_forwards(backbone, self.image, self.plan, repeat, baseline=baseline, warmup=False)
        return {**timing, "first_layer": first, "same_request": True}

    def estimate(self, backbone: Backbone, key: ModelKey, plan: Plan, from_scratch: bool = False) -> dict[str, Any] | None:
        """Fast MAC readout from the cached unpruned forward; None when there is none yet.
        ``from_scratch`` (API calls): run the unpruned forward first when it is not cached."""
        if self.image is None:
            if from_scratch:
                raise UserError("load an image first")
            return None
        baseline = self.cached_baseline(key)
        if baseline is None:
            if not from_scratch:
                return None
            baseline = run_baseline(backbone, self.image, attn_layers=attention_layers(plan))
            self.keep_baseline(baseline, key)
        t0 = time.perf_counter()
        est = estimate_macs(backbone, baseline, plan)
        weights = provenance(backbone)
        return {**estimate_summary(est, (time.perf_counter() - t0) * 1e3), "weights": weights.label,
                "weights_note": weights.sentence}

    def baseline_for_compare(self, backbone: Backbone, key: ModelKey) -> Baseline:
        """The cached unpruned forward, computed (and kept) when missing."""
        if self.image is None:
            raise UserError("load an image first (upload one or click an example)")
        baseline = self.cached_baseline(key)
        if baseline is None:
            baseline = run_baseline(backbone, self.image)
            self.keep_baseline(baseline, key)
        return baseline

    # --- lazily drawn tabs ------------------------------------------------------------------------
    def views_drawn(self, skipped: set[str]) -> None:
        """A run drew every view but those of the hidden tabs ``skipped``."""
        self.stale_tabs = set(skipped)

    def show_tab(self, tab: str) -> bool:
        """The visitor opened ``tab``; True when its views must be drawn now."""
        self.open_tab = tab
        if tab in self.stale_tabs:
            self.stale_tabs.discard(tab)
            return True
        return False

    # --- SAM prompts (original image pixels) -----------------------------------------------------
    def add_point(self, x: float, y: float, label: int) -> None:
        self.points.append((x, y, label))

    def add_corner(self, x: float, y: float) -> bool:
        """A box corner; True when it completed a box (the second corner)."""
        if self.corner is None:
            self.corner = (x, y)
            return False
        (x0, y0), self.corner = self.corner, None
        self.box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        return True

    def set_box(self, box: tuple[float, float, float, float]) -> None:
        self.box, self.corner = box, None

    def clear_prompts(self) -> None:
        self.points, self.box, self.corner = [], None, None


def _band_count(path: str) -> int:
    try:
        return int(describe_bands(path)[0])
    except InputError:
        return 3  # load_image will say what is wrong with the file


class CacheBudget:
    """A server-wide bound on the prefix caches sessions keep (``Baseline.x_after``: every
    block's output, ~10 MB for the demo at 512 px, ~0.7 GB for SAM ViT-H at 1024 px).

    ``keep(session)`` after a session stores a baseline: when the caches of all live sessions
    add up to more than ``max_bytes``, the least recently stored ones are dropped (that session's
    next run recomputes its unpruned forward; what it shows stays valid). Sessions are held by
    weak reference, so a session Gradio has let go of (time-to-live) is forgotten here too.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()  # id -> (session, bytes)
        self._lock = threading.Lock()

    @staticmethod
    def size(baseline: Baseline | None) -> int:
        return sum(t.numel() * t.element_size() for t in baseline.x_after) if baseline is not None else 0

    def keep(self, session: Session) -> None:
        with self._lock:
            self._held.pop(id(session), None)
            for key in [k for k, (ref, _) in self._held.items() if ref() is None]:
                del self._held[key]
            self._held[id(session)] = (weakref.ref(session), self.size(session.baseline))
            total = sum(n for _, n in self._held.values())
            while total > self.max_bytes and len(self._held) > 1:
                _, (ref, n) = self._held.popitem(last=False)
                total -= n
                other = ref()
                if other is not None:
                    other.drop_cache()

    def held_bytes(self) -> int:
        with self._lock:
            return sum(n for ref, n in self._held.values() if ref() is not None)


CACHE_BUDGET = CacheBudget(int(float(os.environ.get("PRUNE_VIZ_CACHE_MB", "2048")) * 2**20))
