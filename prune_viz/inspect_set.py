"""Inspect a set: run every image of a folder, a zip or a generated split unpruned and pruned,
score what pruning did to each, and rank them worst first.

Bounded memory for sets of any length: images are read one at a time (zip members too, through
:mod:`prune_viz.io.archive`), each image's analysis is dropped once its row is written, and only
the rows (numbers) and the small PNGs of the current ``top_k`` worst cases are kept.

The ranking: worst first by **agreement mIoU** with the unpruned model (how much of the unpruned
segmentation survives pruning; ground truth is not needed), ties by boundary F against the
unpruned model, then by name.
"""

from __future__ import annotations

import heapq
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .analysis import analyze, mask_refusal
from .attribution import attribute, attribution_image
from .backbones.base import Backbone
from .data.synthetic import SPLIT_SEEDS, split_scene
from .engine import Plan
from .errors import UserError
from .io import load_image, load_mask
from .io.archive import SafeZip, SetEntry, folder_entries, read_entry
from .metrics import ConfusionMatrix
from .ood import OOD_THRESHOLD, is_out_of_domain, ood_score
from .viz import change_map, colorize_labels, token_status_map
from .viz_damage import error_map, png_bytes, thumbnail


RANKING = ("worst first by agreement mIoU with the unpruned model (lower = pruning changed more of the "
           "segmentation), ties by boundary F against the unpruned model")
BASE_COLUMNS = ["rank", "image", "saved_pct", "agreement_miou", "boundary_f", "miou", "miou_unpruned",
                "changed_pct", "ood_score", "worst_class", "worst_class_loss"]
TOP_K = 12
MAX_SYNTHETIC = 1000


@dataclass
class SetItem:
    """One image as the runner gets it: pixels and ground truth (ids, or a file to read), or
    why it is skipped."""

    name: str
    rgb: np.ndarray | None = None
    mask: np.ndarray | bytes | Path | None = None
    mask_name: str = ""
    skipped: str | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class Case:
    """A worst case kept for the gallery: its row and small PNGs ("tokens", "change", "error")."""

    row: dict[str, Any]
    pngs: dict[str, bytes]
    index: int = -1  # the item's position in its set (to read it again)
    attribution: str = ""  # the attribution statement, when one was made


@dataclass
class SetReport:
    rows: list[dict[str, Any]]  # ranked (rank 1 = worst), then the skipped entries
    cases: list[Case]  # the worst ``top_k``, worst first
    meta: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        extra = dict.fromkeys(k for r in self.rows for k in r if k not in BASE_COLUMNS and k != "note")  # class order
        return BASE_COLUMNS + sorted(extra, key=lambda k: not k.startswith("iou_loss:")) + ["note"]


# ----------------------------------------------------------------------------- sources


class ImageSet:
    """A sized, lazily read sequence of :class:`SetItem` (``len`` for progress bars)."""

    def __init__(self, entries: list[Any], read: Callable[[Any], SetItem], label: str) -> None:
        self._entries, self._read, self.label = entries, read, label

    def __len__(self) -> int:
        return len(self._entries)

    def limited(self, n: int | None) -> "ImageSet":
        """The first ``n`` entries (all when None)."""
        return self if n is None else ImageSet(self._entries[:n], self._read, self.label)

    def item(self, index: int) -> SetItem:
        """Entry ``index`` read again (a worst case, for its attribution)."""
        return self._read(self._entries[index])

    def __iter__(self) -> Iterator[SetItem]:
        for entry in self._entries:
            yield self._read(entry)


def _read_file_entry(entry: SetEntry, zf: SafeZip | None) -> SetItem:
    if entry.skipped or entry.source is None:
        return SetItem(entry.name, skipped=entry.skipped or "nothing to read")
    try:
        loaded = load_image(read_entry(entry.source, zf))
    except UserError as exc:
        return SetItem(entry.name, skipped=str(exc))
    mask: bytes | Path | None = None
    notices = list(loaded.notices)
    if entry.mask is not None:
        try:
            mask = read_entry(entry.mask, zf)
        except UserError as exc:
            notices.append(f"mask not read: {exc}")
    mask_name = Path(str(entry.mask)).name if entry.mask is not None else ""
    return SetItem(entry.name, loaded.rgb, mask, mask_name, notices=notices)


@contextmanager
def open_set(source: Path | None = None, masks: Path | None = None, synthetic: str | None = None,
             n: int = 100, size: int = 512, quiet: bool = False) -> Iterator[ImageSet]:
    """A folder, a zip, or ``n`` scenes of a generated split (with their ground truth).
    ``quiet``: a folder's files that are no images are left out rather than reported."""
    if masks is not None and not masks.is_dir():
        raise UserError(f"--masks {masks}: not a folder")
    if synthetic is not None:
        if synthetic not in SPLIT_SEEDS:
            raise UserError(f"unknown split {synthetic!r}; choose one of {', '.join(SPLIT_SEEDS)}")
        if not 1 <= n <= MAX_SYNTHETIC:
            raise UserError(f"--n must be from 1 to {MAX_SYNTHETIC}, got {n}")

        def scene(i: int) -> SetItem:
            rgb, labels = split_scene(synthetic, i, size)
            return SetItem(f"{synthetic}_{i:04d}", rgb, labels.astype(np.int32), "generated")

        yield ImageSet(list(range(n)), scene, f"{n} generated '{synthetic}' scenes ({size} px)")
        return
    if source is None:
        raise UserError("give a folder or a .zip of images, or --synthetic SPLIT")
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_dir():
        entries = folder_entries(source, masks, quiet)
        yield ImageSet(entries, lambda e: _read_file_entry(e, None), f"folder {source.name}")
        return
    with SafeZip(source) as zf:
        entries = zf.entries(masks)
        yield ImageSet(entries, lambda e: _read_file_entry(e, zf), f"zip {source.name}")


# ----------------------------------------------------------------------------- scoring


def _gt_for(item: SetItem, backbone: Backbone) -> tuple[np.ndarray | None, str]:
    """Ground-truth ids at the image's size, or None with the reason (empty: no mask given)."""
    if item.mask is None or item.rgb is None:
        return None, ""
    refusal = mask_refusal(backbone)
    if refusal:
        return None, f"mask not used: {refusal}"
    if isinstance(item.mask, np.ndarray):
        return (item.mask, "") if item.mask.shape == item.rgb.shape[:2] else (None, "mask not used: another size")
    try:
        gt, _ = load_mask(item.mask, item.rgb.shape[:2], backbone.num_classes, backbone.palette)
    except UserError as exc:
        return None, f"mask refused: {exc}"
    return gt, ""


def per_class_iou(pred: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    cm = ConfusionMatrix(k)
    cm.update(pred, ref)
    return cm.iou()


def score_row(name: str, analysis: Any, backbone: Backbone, gt: np.ndarray | None) -> dict[str, Any]:
    """One CSV row from an analysis (numbers rounded for reading; "" where undefined)."""
    rep, m = analysis.report, analysis.report["metrics"]
    before, after = analysis.baseline.seg.labels, analysis.trace.seg.labels
    row: dict[str, Any] = {
        "image": name,
        "saved_pct": round(-rep["macs"]["delta_pct"], 2),
        "agreement_miou": round(float(m["agreement_miou"]), 4),
        "boundary_f": round(float(m["boundary_f1_vs_unpruned"]), 4),
        "miou": "" if m["miou"] is None else round(float(m["miou"]), 4),
        "miou_unpruned": "" if m["miou_baseline"] is None else round(float(m["miou_baseline"]), 4),
        "changed_pct": round(100.0 * float((before != after).mean()), 2),
        "ood_score": "",
        "worst_class": "",
        "worst_class_loss": "",
    }
    k = backbone.num_classes
    if k and analysis.baseline.seg.kind == "semantic":
        # Per class: 1 - IoU of the pruned labels against the unpruned ones (classes in neither: blank).
        loss = 1.0 - per_class_iou(after, before, k)
        for c, cname in enumerate(backbone.class_names):
            row[f"iou_loss:{cname}"] = "" if math.isnan(loss[c]) else round(float(loss[c]), 4)
        if np.isfinite(loss).any():
            worst = int(np.nanargmax(loss))
            row["worst_class"], row["worst_class_loss"] = backbone.class_names[worst], round(float(loss[worst]), 4)
        if gt is not None:  # per class, IoU points against ground truth lost by pruning
            drop = per_class_iou(before, gt, k) - per_class_iou(after, gt, k)
            for c, cname in enumerate(backbone.class_names):
                row[f"gt_iou_drop:{cname}"] = "" if math.isnan(drop[c]) else round(float(drop[c]), 4)
    score = ood_score(backbone, analysis.baseline)  # None without class scores (SAM segments)
    row["ood_score"] = "" if score is None else round(float(score), 4)
    return row


def case_pngs(analysis: Any, rgb: np.ndarray, gt: np.ndarray | None, patch: int, max_side: int = 256) -> dict[str, bytes]:
    """The gallery's small PNGs: token map at the last pruning layer, change map, error map vs GT."""
    trace = analysis.trace
    last = trace.plan_layers[-1]
    tokens = token_status_map(analysis.model_image, trace.status_at(last), patch)
    before, after = analysis.baseline.seg.labels, trace.seg.labels
    out = {"tokens": png_bytes(thumbnail(tokens, max_side)),
           "change": png_bytes(thumbnail(change_map(rgb, before, after), max_side))}
    out["seg"] = png_bytes(thumbnail(colorize_labels(after, analysis.trace.seg.palette), max_side, labels=True))
    if gt is not None:
        out["error"] = png_bytes(thumbnail(error_map(rgb, gt, before, after), max_side))
    return out


def rank_key(row: dict[str, Any]) -> tuple[float, float, str]:
    a, b = float(row["agreement_miou"]), float(row["boundary_f"])
    return (-math.inf if math.isnan(a) else a, -math.inf if math.isnan(b) else b, row["image"])


def inspect_set(
    backbone: Backbone,
    plan: Plan,
    items: ImageSet | list[SetItem],
    top_k: int = TOP_K,
    progress: Callable[[int, int, str], None] | None = None,
    stop_after_s: float | None = None,
) -> SetReport:
    """Run every item unpruned and pruned (``analysis.analyze``), one at a time; rank the rows.

    ``progress(done, total, name)`` after each item. Items that cannot be read are rows with
    a ``note`` and no numbers, listed after the ranked ones. ``stop_after_s``: no new image is
    started after that many seconds (``meta["stopped"]`` then says how far it got).
    """
    t0 = time.monotonic()
    stopped = None
    total = len(items)
    scored: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    heap: list[tuple[Any, int, Case]] = []  # the worst top_k: (negated rank key, order, case)
    for i, item in enumerate(items):
        if stop_after_s is not None and time.monotonic() - t0 > stop_after_s:
            stopped = f"stopped after {i} of {total} images: the server's time limit ({stop_after_s:.0f} s) was reached"
            break
        if item.rgb is None:
            skipped.append({"image": item.name, "note": f"skipped: {item.skipped}"})
        else:
            gt, mask_note = _gt_for(item, backbone)
            analysis = analyze(backbone, item.rgb, plan, gt=gt)
            row = score_row(item.name, analysis, backbone, gt)
            ood = "out of domain? ood_score above the threshold: may be model failure, not pruning's" \
                if is_out_of_domain(row["ood_score"] if row["ood_score"] != "" else None) else ""
            row["note"] = "; ".join(n for n in [ood, mask_note, *item.notices] if n)
            scored.append(row)
            key = _neg(rank_key(row))
            if top_k > 0 and (len(heap) < top_k or key > heap[0][0]):
                case = Case(row, case_pngs(analysis, item.rgb, gt, backbone.patch_size), i)
                (heapq.heappush if len(heap) < top_k else heapq.heapreplace)(heap, (key, i, case))
            del analysis
        if progress is not None:
            progress(i + 1, total, item.name)
    scored.sort(key=rank_key)
    for r, row in enumerate(scored, 1):
        row["rank"] = r
    cases = [c for _, _, c in sorted(heap, key=lambda t: rank_key(t[2].row))]
    saved = [r["saved_pct"] for r in scored]
    agree = [r["agreement_miou"] for r in scored]
    meta = {
        "backbone": backbone.name, "weights": backbone.weights, "method": plan.method.name,
        "layers": list(plan.layers), "params": _params(plan), "seed": plan.seed,
        "images": len(scored), "skipped": len(skipped), "with_mask": sum(r["miou"] != "" for r in scored),
        "mean_saved_pct": round(float(np.mean(saved)), 2) if saved else None,
        "mean_agreement_miou": round(float(np.mean(agree)), 4) if agree else None,
        "ranking": RANKING, "ood_threshold": OOD_THRESHOLD, "stopped": stopped,
    }
    return SetReport(scored + skipped, cases, meta)


def _neg(key: tuple[float, float, str]) -> tuple[float, float, tuple[int, ...]]:
    """A key whose larger value means *better* (for the min-heap of the worst cases)."""
    return (-key[0], -key[1], tuple(-ord(ch) for ch in key[2]))


def _params(plan: Plan) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(plan.params) if is_dataclass(plan.params) else {}


def attribute_cases(backbone: Backbone, plan: Plan, items: ImageSet, report: SetReport, k: int,
                    progress: Callable[[int, int, str], None] | None = None) -> None:
    """The attribution (:mod:`prune_viz.attribution`) of the ``k`` worst cases, read again from
    the still open set: its map joins the case's PNGs, its statement the case."""
    cases = report.cases[:k]
    for n, case in enumerate(cases):
        item = items.item(case.index)
        if item.rgb is None:
            continue
        analysis = analyze(backbone, item.rgb, plan)
        try:
            att = attribute(backbone, item.rgb, plan, analysis.baseline, analysis.trace)
        except UserError as exc:  # e.g. a merging method: nothing to restore
            case.attribution = f"no attribution: {exc}"
        else:
            image = attribution_image(att, item.rgb, analysis.baseline, analysis.trace, backbone.patch_size)
            case.pngs["attribution"] = png_bytes(thumbnail(image, 256))
            case.attribution = att.statement
        if progress is not None:
            progress(n + 1, len(cases), case.row["image"])
