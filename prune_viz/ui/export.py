"""The export zip: report.json, the PNGs, the input the run saw, and command.txt with the CLI
line that reproduces the run."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .. import viz
from ..analysis import Analysis, save_outputs
from ..backbones import BackboneFacts, input_size_for
from ..backbones.base import Backbone
from ..engine import Plan
from ..errors import UserError
from ..methods import get_method
from ..methods.base import STATUSES
from ..params import plan_params
from .figure import write_figure
from .session import Session
from .views import depth_view, diagnostics_panels, segmentation_views, tabs_for, token_map_view


def cli_command(backbone: str, input_size: int | None, plan: Plan, image_name: str = "input.png", mask_name: str | None = None) -> str:
    """The CLI line that reproduces a run (scalar parameters; tuples cannot be given there)."""
    parts = ["python -m prune_viz analyze", image_name, "--out out", f"--backbone {backbone}"]
    if input_size and input_size != input_size_for(backbone, None):
        parts.append(f"--input-size {input_size}")
    parts += [f"--method {plan.method.name}", f"--layers {','.join(map(str, plan.layers))}"]
    notes = []
    for f in dataclasses.fields(plan.params):
        v = getattr(plan.params, f.name)
        if isinstance(v, (tuple, list)):
            if v != f.default:
                notes.append(f"# {f.name}={list(v)} is not settable from the command line (default {list(f.default)})")
            continue
        parts.append(f"--{f.name.replace('_', '-')} {v}")
    parts.append(f"--seed {plan.seed}")
    if mask_name:
        parts.append(f"--mask {mask_name}")
    return " ".join(parts) + "\n" + "".join(n + "\n" for n in notes)


def export_zip(
    session: Session, backbone: Backbone, facts: BackboneFacts, root: str | Path | None = None,
    extra_pngs: dict[str, np.ndarray] | None = None,
) -> Path:
    """report.json, the PNGs of ``save_outputs``, the token-depth and change maps and the method's
    signal panels per pruning layer, the input (and mask) the run saw, and command.txt with the
    CLI line that reproduces it, zipped."""
    a = session.analysis
    if a is None or session.image is None:
        raise UserError("run an analysis first")
    root = Path(root or Path(tempfile.gettempdir()) / "prune_viz_exports")
    root.mkdir(parents=True, exist_ok=True)
    _clean_old(root, max_age_s=3600)
    work = Path(tempfile.mkdtemp(prefix="run_", dir=root))
    out = work / "prune_viz_run"
    save_outputs(a, out, session.image, backbone.patch_size)
    viz.write_png(out / "input.png", session.image)
    mask_name = None
    if session.gt is not None:
        mask_name = "mask.png"
        viz.write_png(out / mask_name, session.gt.astype(np.uint8))
    extra = dict(extra_pngs or {})
    extra.update(legended_maps(a, session.image, backbone.num_blocks, backbone.patch_size))
    extra["token_depth"] = depth_view(a, backbone.num_blocks, backbone.patch_size)
    for step in a.trace.steps:
        for tab, names in tabs_for(a.trace.method, step.diagnostics).items():
            extra[f"{tab}_L{step.layer}"] = diagnostics_panels(a, step, names, backbone.patch_size)
    for name, rgb in extra.items():
        if rgb is not None:
            viz.write_png(out / f"{name}.png", rgb)
    # The lecture composite: token maps, legend, before / after, change map, key numbers, title.
    write_figure(a, session.image, backbone.num_blocks, backbone.patch_size, out / "figure")
    plan = Plan(get_method(a.report["method"]), plan_params(a.report["method"], a.report["params"]),
                tuple(a.report["layers_pruned"]), int(a.report["seed"]))
    (out / "command.txt").write_text(
        "# Reproduce this run from inside this folder:\n" + cli_command(facts.name, facts.input_size, plan, "input.png", mask_name)
    )
    zpath = work / f"prune_viz_{facts.name.replace(':', '_')}_{plan.method.name}.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(out.iterdir()):
            z.write(p, f"prune_viz_run/{p.name}")
    shutil.rmtree(out)
    return zpath


def legended_maps(a: Analysis, image: np.ndarray, num_blocks: int, patch: int, width: int = 512) -> dict[str, np.ndarray]:
    """The zip's token maps, segmentations and change map, each with a title and its legend
    (they replace the bare maps the CLI writes; ``input.png`` and ``mask.png`` stay data)."""
    method = a.trace.method
    statuses = [(s.label, viz.STATUS_COLOURS[s.code]) for s in STATUSES]
    out = {}
    for step in a.trace.steps:
        rgb, _ = token_map_view(a, step.layer, num_blocks, patch)
        out[f"token_map_L{step.layer}"] = viz.titled_panel(
            rgb, f"{method}: tokens after pruning layer {step.layer} ({step.tokens_kept} of {step.tokens_in} go on)",
            viz.colorbar(width, categories=statuses), width=width)
    seg = segmentation_views(a, image)
    before = a.baseline.seg
    classes = ([(n, tuple(int(c) for c in col)) for n, col in zip(before.class_names, before.palette)]
               if before.kind == "semantic" and before.palette is not None else None)
    legend = viz.colorbar(width, categories=classes) if classes else None
    out["seg_before"] = viz.titled_panel(seg["pair"][0], "segmentation, unpruned model", legend, width=width)
    out["seg_after"] = viz.titled_panel(seg["pair"][1], f"segmentation after {method} pruning", legend, width=width)
    out["change_map"] = viz.titled_panel(
        seg["change"], f"pixels whose class changed (vermillion): {100 * seg['changed_fraction']:.2f} %", width=width)
    return out


def _clean_old(root: Path, max_age_s: float) -> None:
    now = time.time()
    for p in root.iterdir():
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass
