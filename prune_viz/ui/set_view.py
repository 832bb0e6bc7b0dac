"""The "Inspect a set" tab without gradio: which sets are offered, the caps, one set run into a
report folder + zip, the table and gallery it shows, the files that open a case in the main view,
and the attribution views for the image on show."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..attribution import RANKED_HEADERS, attribute, attribution_image, ranked_rows
from ..backbones.base import Backbone
from ..data.synthetic import split_scene
from ..engine import Plan
from ..errors import UserError
from ..inspect_report import case_file, write_csv, write_html
from ..inspect_set import SetReport, inspect_set, open_set
from ..io.archive import SafeZip, is_mask_name
from .session import Session

MAX_SET_IMAGES = 200  # images per set in the app (the CLI takes more)
MAX_SET_UPLOAD_BYTES = 100 * 2**20  # the zip as uploaded
GALLERY_CASES = 12
GENERATED_N = 24
WORK_DIR = Path(tempfile.gettempdir()) / "prune_viz_sets"
RUN_MAX_AGE_S = 3600.0  # as long as the tab state (gr.State time_to_live) that points at it
CAPS_TEXT = (f"A zip of PNG / JPEG / TIFF images (masks as `<name>_mask.png` beside them), at most "
             f"{MAX_SET_UPLOAD_BYTES // 2**20} MB and {MAX_SET_IMAGES} images; one set runs at a time on this server "
             "(others wait in the queue). Larger sets: `python -m prune_viz inspect` on the command line.")
TABLE_HEADERS = ["rank", "image", "saved %", "agreement mIoU", "boundary F", "mIoU (GT)", "OOD score", "worst class", "note"]
BUNDLED = {
    "examples": "the example scenes (8, with masks)",
    "shift": f"{GENERATED_N} generated 'shift' scenes (another season and layout, with masks)",
}


@dataclass
class SetRun:
    report: SetReport
    folder: Path  # inspect.csv, index.html, cases/
    zip_path: Path
    source: Path  # the folder or zip the set came from
    cases: list[tuple[str, str]]  # gallery: (token map PNG path, caption), worst first


def generated_set(folder: Path = WORK_DIR, split: str = "shift", n: int = GENERATED_N, size: int = 512) -> Path:
    """A folder of ``n`` scenes of a generated split with masks, written once per server."""
    out = folder / f"{split}_{n}_{size}"
    if (out / ".complete").is_file():
        return out
    tmp = folder / f".{out.name}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    for i in range(n):
        rgb, labels = split_scene(split, i, size)
        cv2.imwrite(str(tmp / f"{split}_{i:03d}.png"), np.ascontiguousarray(rgb[..., ::-1]))
        cv2.imwrite(str(tmp / f"{split}_{i:03d}_mask.png"), labels)
    (tmp / ".complete").write_text("")
    try:
        os.replace(tmp, out)
    except OSError:  # another request finished it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def set_source(bundled: str | None, upload: str | None, examples_dir: Path) -> Path:
    """The set to run: an uploaded zip (checked against the caps) or a bundled set."""
    if upload:
        path = Path(upload)
        if path.suffix.lower() != ".zip":
            raise UserError(f"upload a .zip of images (got {path.name})")
        size = path.stat().st_size
        if size > MAX_SET_UPLOAD_BYTES:
            raise UserError(f"the zip is {size / 2**20:.0f} MB; the app takes at most {MAX_SET_UPLOAD_BYTES // 2**20} MB")
        return path
    if bundled == "shift":
        return generated_set()
    if bundled == "examples":
        if not examples_dir.is_dir():
            raise UserError("this server has no example scenes; upload a zip")
        return examples_dir
    raise UserError("choose a bundled set or upload a zip")


def run_set(backbone: Backbone, plan: Plan, source: Path, progress: Callable[[int, int, str], None] | None = None,
            stop_after_s: float | None = None) -> SetRun:
    """Inspect ``source`` (capped at :data:`MAX_SET_IMAGES`) into a fresh report folder and zip."""
    _clean_old_runs(WORK_DIR / "runs")
    folder = WORK_DIR / "runs" / uuid.uuid4().hex
    with open_set(source, quiet=source.is_dir()) as images:  # bundled folders hold a README too
        if len(images) > MAX_SET_IMAGES:
            raise UserError(f"the set holds {len(images)} images; the app takes at most {MAX_SET_IMAGES}. "
                            "Use `python -m prune_viz inspect` for larger sets")
        if len(images) == 0:
            raise UserError("the set holds no images")
        report = inspect_set(backbone, plan, images, top_k=GALLERY_CASES, progress=progress, stop_after_s=stop_after_s)
    folder.mkdir(parents=True)
    write_csv(report, folder / "inspect.csv")
    write_html(report, folder)
    zip_path = folder / "inspect_report.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p != zip_path:
                z.write(p, f"inspect_report/{p.relative_to(folder)}")
    cases = [(str(folder / case_file(int(c.row["rank"]), c.row["image"], "tokens")),
              f"#{c.row['rank']} {c.row['image']} · agreement {c.row['agreement_miou']}") for c in report.cases]
    return SetRun(report, folder, zip_path, source, cases)


def _clean_old_runs(runs: Path, max_age_s: float = RUN_MAX_AGE_S) -> None:
    """Report folders older than the tab's state lives (an hour) go, so the server's disk stays bounded."""
    if not runs.is_dir():
        return
    now = time.time()
    for old in runs.iterdir():
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def table_rows(report: SetReport) -> list[list[Any]]:
    keys = ["rank", "image", "saved_pct", "agreement_miou", "boundary_f", "miou", "ood_score", "worst_class", "note"]
    return [[row.get(k, "") for k in keys] for row in report.rows]


def summary(run: SetRun) -> str:
    m = run.report.meta
    text = (f"**{m['images']} images** ({m['with_mask']} with a mask, {m['skipped']} skipped) · {m['method']} on "
            f"{m['backbone']}, layers {m['layers']} · mean MAC saving {m['mean_saved_pct']} %, mean agreement mIoU "
            f"{m['mean_agreement_miou']}. Ranked {m['ranking']}. Click a case to open it in the main view.")
    if m.get("stopped"):
        text += f"\n\n**Incomplete:** {m['stopped']}."
    return text


def open_case(run: SetRun, index: int) -> tuple[str, str | None, str]:
    """(image file, mask file or None, name) of gallery case ``index``, as files the main view
    loads: paths in a folder set, members of a zip unpacked next to the report."""
    if not 0 <= index < len(run.report.cases):
        raise UserError("that case is no longer in the list; run the set again")
    name = run.report.cases[index].row["image"]
    if run.source.is_dir():
        image = run.source / name
        masks = [p for p in run.source.glob(f"{Path(name).stem}_mask.*")]
        return str(image), (str(masks[0]) if masks else None), Path(name).name
    dest = run.folder / "open"
    dest.mkdir(exist_ok=True)
    with SafeZip(run.source) as zf:
        stem = str(Path(name).with_suffix(""))
        mask_name = next((n for n in zf.names if is_mask_name(n) and str(Path(n).with_suffix("")) == f"{stem}_mask"), None)
        image = dest / f"{index:03d}_{Path(name).name}"
        image.write_bytes(zf.read(name))
        mask = None
        if mask_name is not None:
            mask = dest / f"{index:03d}_{Path(mask_name).name}"
            mask.write_bytes(zf.read(mask_name))
    return str(image), (str(mask) if mask else None), Path(name).name


def attribution_views(session: Session, backbone: Backbone) -> tuple[np.ndarray, str, list[list[Any]]]:
    """For the analysis on show: the map, the statement and the ranked groups."""
    analysis, plan = session.analysis, session.plan
    if analysis is None or plan is None or session.image is None:
        raise UserError("run an analysis first (open a case, or pick an image on the left)")
    att = attribute(backbone, session.image, plan, analysis.baseline, analysis.trace)
    image = attribution_image(att, session.image, analysis.baseline, analysis.trace, backbone.patch_size)
    rows = ranked_rows(att)
    text = (f"{att.statement}\n\n*Map: changed pixels in vermillion; tested groups in yellow, stronger for a larger "
            f"share restored; the statement's tokens outlined in white. {att.runs} re-runs from the prefix cache in "
            f"{att.seconds:.1f} s (at most 32 runs / 20 s).*")
    return image, text, rows


__all__ = ["BUNDLED", "CAPS_TEXT", "RANKED_HEADERS", "TABLE_HEADERS", "SetRun", "attribution_views", "generated_set",
           "open_case", "run_set", "set_source", "summary", "table_rows"]
