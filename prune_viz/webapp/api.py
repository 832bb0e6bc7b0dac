"""The named endpoints for gradio_client (``/analyze``, ``/estimate``, ``/compare``, ``/export``;
documented in docs/api.md). Each call is stateless: a fresh Session with the uploaded image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backbones.base import Backbone
from ..checkpoints import CheckpointError
from ..engine import Plan
from ..errors import UserError
from ..params import DEFAULT_METHOD, make_plan
from ..ui import compare
from ..ui.choices import DEFAULT_BACKBONE, backbone_info
from ..ui.controls import parse_params_json
from ..ui.export import export_zip
from ..ui.session import Session
from ..ui.tables import json_ready
from .glue import uploaded, user_errors


def _prepare(image: str | None, backbone: str, method: str, layers: str, params: str, seed: Any, mask: str | None):
    """A fresh Session with the image (and mask) loaded, the model, its facts, a plan, and the
    input notices."""
    if not image:
        raise UserError("give an image file")
    facts, model = backbone_info(backbone or DEFAULT_BACKBONE)
    if model is None:
        raise CheckpointError(facts.missing)
    image, mask = uploaded(image), (uploaded(mask) if mask else None)
    session = Session()
    session.set_image(image, Path(image).name)
    notices = list(session.notices)
    if mask:
        notices += [f"mask: {n}" for n in session.set_mask(mask, model)]
    method = (method or DEFAULT_METHOD).strip()
    plan = make_plan(model, method, layers or None, seed, parse_params_json(params), strict=True)
    return session, model, facts, plan, notices


def _run(session: Session, model: Backbone, key, plan: Plan):
    analysis = session.run(model, key, plan)
    assert analysis is not None  # a fresh session has no newer run
    return analysis


@user_errors
def api_analyze(image, backbone, method, layers, params, seed, mask=None) -> dict:
    """Report JSON of one analysis (MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs)."""
    session, model, facts, plan, notices = _prepare(image, backbone, method, layers, params, seed, mask)
    report = _run(session, model, facts.key, plan).report
    return json_ready({**report, "input_notices": notices})


@user_errors
def api_estimate(image, backbone, method, layers, params, seed) -> dict:
    """MAC readout (what the live counter shows) for these settings."""
    session, model, facts, plan, notices = _prepare(image, backbone, method, layers, params, seed, None)
    return json_ready({**session.estimate(model, facts.key, plan, from_scratch=True), "input_notices": notices})


@user_errors
def api_compare(image, backbone, methods, layers, target_reduction_pct, seed) -> dict:
    """Several methods on one image: at their defaults, or at a matched MAC reduction (%)."""
    names = compare.check_methods([m.strip() for m in str(methods or "").replace(";", ",").split(",") if m.strip()])
    budget = compare.check_budget(target_reduction_pct)
    session, model, facts, _, _ = _prepare(image, backbone, "none", "", "", seed, None)
    rows = compare.compare_methods(session, model, facts.key, names, layers or None, int(seed or 0), budget)
    _, table = compare.compare_views(rows, session.image, model.num_blocks, model.patch_size)
    return {
        "columns": compare.COMPARE_HEADERS,
        "rows": table,
        "reports": {r.method: json_ready(r.analysis.report) for r in rows if r.analysis is not None},
    }


@user_errors
def api_export(image, backbone, method, layers, params, seed, mask=None) -> str:
    """Zip: report.json, PNGs, input.png (+ mask.png) and command.txt (the CLI line)."""
    session, model, facts, plan, _ = _prepare(image, backbone, method, layers, params, seed, mask)
    _run(session, model, facts.key, plan)
    return str(export_zip(session, model, facts))
