"""Several methods on one image, side by side: each at its defaults, or with its ``rate``
bisected to a matched MAC budget; all share the session's cached unpruned forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import viz
from ..analysis import Analysis, analyze
from ..backbones.base import Backbone
from ..engine import Baseline, Plan, attention_surcharge, estimate_macs
from ..errors import UserError, echo
from ..methods import get_method
from ..params import make_plan, method_availability, param_names
from .session import ModelKey, Session
from .views import depth_view, segmentation_views


# The knob Compare turns to meet a MAC budget, per parameter name: (value that saves least, value
# that saves most). Each is monotone in the saving: a larger rate prunes more, a lower DToP
# threshold lets more tokens exit, a larger MATP alpha prunes more.
BUDGET_KNOBS: dict[str, tuple[float, float]] = {"rate": (0.0, 0.95), "threshold": (1.0, 0.3), "alpha": (0.05, 4.0)}


def budget_knob(method: str) -> tuple[str, float, float] | None:
    """(parameter, least-saving value, most-saving value) of the knob that sets ``method``'s
    saving, or None for methods without one (none, exit)."""
    names = param_names(get_method(method))
    for name, (least, most) in BUDGET_KNOBS.items():
        if name in names:
            return name, least, most
    return None


def match_budget(
    backbone: Backbone, baseline: Baseline, method: str, layers: Any, seed: int, target_pct: float, values: dict[str, Any],
    iters: int = 12,
) -> tuple[Plan, str]:
    """Bisect the method's budget knob (rate, DToP's threshold, MATP's alpha) so the estimated MAC
    reduction reaches ``target_pct``; a budget the knob cannot reach is said, not hidden. The
    estimate is exact with one pruning layer; with several, later layers' savings are estimated,
    so the run's own figure (in the table) is the one to read."""
    knob = budget_knob(method)
    plan = make_plan(backbone, method, layers, seed, values)
    if knob is None:
        return plan, "no knob sets its saving: shown at its settings, not at the budget"
    name, least, most = knob

    def reduction(t: float) -> tuple[float, Plan]:
        p = make_plan(backbone, method, layers, seed, {**values, name: least + t * (most - least)})
        est = estimate_macs(backbone, baseline, p)
        macs = est["macs"]
        if p.method.needs_attention:  # the run also pays for the attention statistics (not in the estimate)
            macs += attention_surcharge(backbone, p.layers[0], backbone.grid_at(p.layers[0], baseline.prep.grid))
        return 100.0 * (est["baseline"] - macs) / est["baseline"], p

    r_most, p_most = reduction(1.0)
    if r_most < target_pct:
        return p_most, f"cannot reach the budget: saves at most {r_most:.1f} % ({name} {most:g})"
    r_least, p_least = reduction(0.0)
    if r_least >= target_pct:
        return p_least, f"already saves {r_least:.1f} % at {name} {least:g}"
    lo, hi, best = 0.0, 1.0, p_most
    for _ in range(iters):
        mid = (lo + hi) / 2
        r, p = reduction(mid)
        if r >= target_pct:
            hi, best = mid, p
        else:
            lo = mid
    return best, f"{name} {getattr(best.params, name):.3f} chosen for the budget"


MAX_COMPARED = 8  # every registered method, each run once per comparison


def check_methods(methods: list[str]) -> list[str]:
    """The methods a comparison runs: each once (20 copies of one are one comparison), at least
    2 and at most MAX_COMPARED, all known; checked before any image is loaded or model run."""
    methods = list(dict.fromkeys(methods))
    if len(methods) < 2:
        raise UserError("choose at least two different methods to compare")
    if len(methods) > MAX_COMPARED:
        raise UserError(f"compare at most {MAX_COMPARED} methods at once, got {len(methods)}")
    for method in methods:
        get_method(method)
    return methods


def check_budget(target_pct: Any) -> float | None:
    """A matched-budget target in percent fewer MACs (None or 0: each method at its defaults)."""
    if target_pct in (None, "", 0):
        return None
    try:
        value = float(target_pct)
    except (TypeError, ValueError):
        raise UserError(f"the target reduction must be a number of percent, got {echo(target_pct)}") from None
    if not 0 < value < 100:
        raise UserError(f"the target reduction must be between 0 and 100 %, got {value:g}")
    return value


@dataclass
class CompareRow:
    method: str
    analysis: Analysis | None
    note: str


def compare_methods(
    session: Session, backbone: Backbone, model_key: ModelKey, methods: list[str], layers: Any, seed: int,
    target_pct: float | None, values_by_method: dict[str, dict[str, Any]] | None = None,
) -> list[CompareRow]:
    """Each method on the session's image (its own defaults, or a matched MAC budget), all
    sharing one cached unpruned forward."""
    if session.image is None:
        raise UserError("load an image first (upload one or click an example)")
    methods = check_methods(methods)
    values_by_method = values_by_method or {}
    avail = method_availability(backbone)
    rows: list[CompareRow] = []
    for method in methods:
        get_method(method)
        if avail.get(method):
            rows.append(CompareRow(method, None, f"not available on {backbone.name}: {avail[method]}"))
            continue
        values = dict(values_by_method.get(method, {}))
        note = ""
        try:
            make_plan(backbone, method, layers, seed, values)
            use_layers = layers
        except ValueError as exc:
            use_layers, note = None, f"layers {layers} not usable ({exc}); its default layers used. "
        baseline = session.baseline_for_compare(backbone, model_key)
        if target_pct is not None:
            plan, budget_note = match_budget(backbone, baseline, method, use_layers, seed, float(target_pct), values)
            note += budget_note
        else:
            plan = make_plan(backbone, method, use_layers, seed, values)
            note += "defaults"
        result = analyze(backbone, session.image, plan, gt=session.gt, baseline=baseline, measure=False, repeat=0)
        rows.append(CompareRow(method, result, note))
    return rows


def compare_views(rows: list[CompareRow], image: np.ndarray, num_blocks: int, patch: int) -> tuple[np.ndarray | None, list[list[Any]]]:
    """One image (row 1: token depth per method; row 2: segmentation after pruning) and a table."""
    done = [r for r in rows if r.analysis is not None]
    table = []
    for r in rows:
        if r.analysis is None:
            table.append([r.method, "—", "—", "—", "—", "—", "—", r.note])
            continue
        rep = r.analysis.report
        met = rep["metrics"]
        table.append([
            r.method, ",".join(map(str, rep["layers_pruned"])), f"{rep['macs']['pruned'] / 1e9:.2f}",
            f"{round(-rep['macs']['delta_pct'], 1) + 0.0:.1f}", f"{met['agreement_miou']:.3f}",
            "—" if met.get("miou") is None else f"{met['miou']:.3f}",
            "—" if met.get("gamma") is None else f"{met['gamma']:.2f}", r.note,
        ])
    if not done:
        return None, table
    width = 300 if len(done) <= 3 else 240
    depth = [viz.titled_panel(depth_view(r.analysis, num_blocks, patch, width=width), r.method, width=width) for r in done]
    segs = []
    for r in done:
        seg = segmentation_views(r.analysis, image)
        macs = r.analysis.report["macs"]
        segs.append(viz.titled_panel(seg["pair"][1], f"{r.method}: {macs['pruned'] / 1e9:.2f} GMACs "
                                     f"({round(-macs['delta_pct'], 1) + 0.0:.1f} % saved), {100 * seg['changed_fraction']:.1f} % px changed",
                                     width=width))
    return viz.tile(depth + segs, ncols=len(done)), table


COMPARE_HEADERS = ["method", "layers", "GMACs", "% MACs saved", "agreement mIoU", "mIoU vs GT", "gamma", "note"]
