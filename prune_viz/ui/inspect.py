"""The token inspector: one token's signals at every pruning layer, the thresholds in force,
the rule that decided it in one sentence, and "what if it had stayed / gone?" (a re-run from the
prefix cache with that decision overruled). Numbers and strings only, no gradio.

Tokens are addressed on the token grid: ``row``, ``col`` 0-based, row-major index
``row * gw + col`` (the engine's ``kept_idx`` numbering).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..backbones.base import Backbone
from ..engine import Plan, StepRecord, Trace
from ..errors import ParamError
from ..methods.base import EXITED, GONE, KEPT, PENDING_KEPT, PRUNED, STATUS_LABELS
from .session import ModelKey, Session


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the inspector says about one token (JSON-ready through :meth:`as_json`)."""

    row: int
    col: int
    status: str  # its fate: "kept to the end", "pruned", "exited"
    decided_at_layer: int | None  # the pruning layer that removed it; None when it was never removed
    rule: str  # the one sentence
    signals: dict[str, dict[int, float | None]]  # name -> pruning layer -> value (None: not alive)
    thresholds: dict[int, dict[str, float]]  # pruning layer -> scalar values and parameters in force

    def as_json(self) -> dict[str, Any]:
        return {
            "row": self.row, "col": self.col, "status": self.status, "decided_at_layer": self.decided_at_layer,
            "rule": self.rule,
            "signals": {k: {str(layer): v for layer, v in per.items()} for k, per in self.signals.items()},
            "thresholds": {str(layer): v for layer, v in self.thresholds.items()},
        }


def token_at(x: float, y: float, shown_hw: tuple[int, int], grid: tuple[int, int], valid_frac: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """A click at pixel (x, y) of a map shown ``shown_hw`` (H, W) px -> (row, col) on the grid.

    The map covers the valid (unpadded) part of the model input, ``valid_frac`` of the grid's
    height and width, stretched to any aspect; proportions are therefore what counts."""
    gh, gw = grid
    h, w = shown_hw
    row = int(np.clip(math.floor(y / max(h, 1) * gh * valid_frac[0]), 0, gh - 1))
    col = int(np.clip(math.floor(x / max(w, 1) * gw * valid_frac[1]), 0, gw - 1))
    return row, col


def check_token(trace: Trace, row: Any, col: Any) -> tuple[int, int]:
    gh, gw = trace.grid
    try:
        r, c = int(row), int(col)
    except (TypeError, ValueError):
        raise ParamError(f"row and col must be whole numbers, got {row!r}, {col!r}") from None
    if not (0 <= r < gh and 0 <= c < gw):
        raise ParamError(f"token ({r}, {c}) is outside the {gh} x {gw} token grid (row 0..{gh - 1}, col 0..{gw - 1})")
    return r, c


def _value(step: StepRecord, name: str, r: int, c: int, grid: tuple[int, int]) -> float | None:
    v = step.diagnostics.get(name)
    if isinstance(v, np.ndarray) and v.shape == grid:
        x = float(v[r, c])
        return x if math.isfinite(x) else None
    return None


def inspect_token(analysis: Analysis, row: Any, col: Any) -> Inspection:
    """Signals, thresholds and the deciding rule of the token at (row, col)."""
    trace = analysis.trace
    r, c = check_token(trace, row, col)
    grid = trace.grid
    signals: dict[str, dict[int, float | None]] = {}
    thresholds: dict[int, dict[str, float]] = {}
    for step in trace.steps:
        f = grid[0] // step.status_grid.shape[0]  # > 1 at a coarser stage of a hierarchical backbone
        for name, v in step.diagnostics.items():
            if isinstance(v, np.ndarray) and v.shape == step.status_grid.shape:
                signals.setdefault(name, {})[step.layer] = _value(step, name, r // f, c // f, v.shape)
            elif isinstance(v, (int, float)):
                thresholds.setdefault(step.layer, {})[name] = float(v)
        params = {k: float(v) for k, v in trace.params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        thresholds.setdefault(step.layer, {}).update(params)
    dropped = int(trace.drop_layer[r, c])
    left = dropped < trace.num_blocks
    status = ("exited" if trace.exited[r, c] else "pruned") if left else "kept to the end"
    step = next((s for s in trace.steps if s.layer == dropped), None) if left else (trace.steps[-1] if trace.steps else None)
    rule = explain(trace, step, r, c) if step is not None else "No pruning step ran."
    forced = [(o["layer"], "stay" if _index_at(trace, r, c, o["layer"]) in o["keep"] else "go")
              for o in analysis.report.get("overrides", [])
              if _index_at(trace, r, c, o["layer"]) in o["keep"] + o["prune"]]
    if forced:
        layers = ", ".join(str(at) for at, _ in forced)
        rule = (f"You forced it to {forced[0][1]} at layer(s) {layers}, overruling {trace.method}; "
                "this run shows what followed. Run again to see the method's own decision.")
    return Inspection(r, c, status, dropped if left else None, rule, signals, thresholds)


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def explain(trace: Trace, step: StepRecord, r: int, c: int) -> str:
    """The rule that decided the token's status at ``step``, in one sentence, per method. (r, c)
    on the input grid; on a hierarchical backbone, the step's stage token that contains it."""
    f = trace.grid[0] // step.status_grid.shape[0]
    r, c = r // f, c // f
    code = int(step.status_grid[r, c])
    if code == GONE:
        return f"It had already been removed before layer {step.layer}."
    what = STATUS_LABELS.get(code, str(code))
    grid, p, at = step.status_grid.shape, trace.params, f"at layer {step.layer}"
    val = lambda name: _value(step, name, r, c, grid)  # noqa: E731 - a short local reader
    alive = step.status_grid != GONE
    method = trace.method
    if method == "none":
        return "Method none prunes nothing: every token goes through every block."
    if method == "random":
        return (f"random removed {_pct(p.get('rate', 0))} of the alive tokens {at}, drawn by a seeded random "
                f"generator, not by any signal: this one was {what} by chance.")
    if method == "evit":
        score = step.diagnostics.get("attention_score")
        v = val("attention_score")
        if v is None or not isinstance(score, np.ndarray):
            return f"evit {what} it {at}."
        rank = int((score[alive] > v).sum()) + 1
        n, keep_n = int(alive.sum()), step.tokens_kept
        side = "within" if code == KEPT else "outside"
        return (f"Its attention score {v:.3g} ranks {rank} of {n} alive tokens {at}; evit keeps the top {keep_n} "
                f"({_pct(1 - p.get('rate', 0))}), so, {side} them, it was {what}.")
    if method == "lvtp":
        return _explain_lvtp(step, r, c, code, p, at, alive)
    if method == "dtop":
        conf, t = val("confidence"), step.diagnostics.get("threshold", p.get("threshold"))
        if conf is None:
            return f"dtop {what} it {at}."
        if code == EXITED:
            return (f"Its auxiliary head is {conf:.3f} confident (≥ threshold {t:.3g}) {at}, so it exited: "
                    f"that early prediction is its final class.")
        if val("retained") == 1.0:
            return (f"Confident enough to exit ({conf:.3f} ≥ {t:.3g}), but it is one of the {int(p.get('k', 0))} most "
                    f"confident tokens of its class, kept {at} as context for the others.")
        return f"Its auxiliary head is only {conf:.3f} confident (< threshold {t:.3g}) {at}, so it stayed in the network."
    if method == "matp":
        s, tau = val("score"), step.diagnostics.get("adaptive_threshold")
        if s is None or tau is None:
            return f"matp {what} it {at}."
        if code == PRUNED:
            how = {"adaptive": "this image's cut-off {:.3f} (alpha x mean score) and its prediction entropy is below beta",
                   "fixed": "the fixed threshold {:.3f}",
                   "topk": "{:.3f}, the lowest score that stays under the top-k rate"}.get(p.get("criterion"), "the cut-off {:.3f}")
            return f"Its difficulty score {s:.3f} is below {how.format(tau)}, so it was pruned {at}."
        if val("retained") == 1.0:
            return (f"Its score {s:.3f} is below the cut-off {tau:.3f}, but it is among the {int(p.get('k', 0))} most typical "
                    f"tokens of its class, kept {at} as context.")
        if s < tau:
            return (f"Its score {s:.3f} is below the cut-off {tau:.3f}, but its prediction entropy reaches beta "
                    f"({p.get('beta', 0):.3g} bits): too uncertain to prune, kept {at}.")
        return f"Its difficulty score {s:.3f} is at or above this image's cut-off {tau:.3f}, so it was kept {at}."
    return f"{method} {what} it {at}."


def _explain_lvtp(step: StepRecord, r: int, c: int, code: int, p: dict[str, Any], at: str, alive: np.ndarray) -> str:
    c1 = step.diagnostics.get("cluster1")
    c2 = step.diagnostics.get("cluster2")
    if not isinstance(c1, np.ndarray):
        return f"lvtp decided it {at}."
    rank = int(c1[r, c])
    ranks = c1[alive].astype(int)
    status = step.status_grid[alive]
    m = int(ranks.max()) + 1 if ranks.size else 0
    kept_ranks = sorted({int(k) for k in np.unique(ranks) if (status[ranks == k] == KEPT).all()})
    cut = f"ranks 0-{max(kept_ranks)} kept" if kept_ranks else "no cluster kept outright"
    head = f"Its 1st-pass cluster has entropy rank {rank} of {m} (0 = highest entropy; {cut})"
    if code == KEPT:
        return f"{head}: a high-entropy cluster, so it was kept {at} without a second test."
    second = int(c2[r, c]) if isinstance(c2, np.ndarray) and np.isfinite(c2[r, c]) else -1
    if p.get("second") == "none":
        return f"{head}: below the keep cut-off, and with second = none every such token is pruned {at}."
    if second < 0:
        return f"{head}: one of the lowest-entropy clusters, which drop = {p.get('drop', 0):.3g} removes outright, so it was pruned {at}."
    edge = step.diagnostics.get("edge_energy")
    pend = alive & (np.nan_to_num(c2, nan=-1) >= 0)
    share = ""
    if isinstance(edge, np.ndarray) and pend.any():
        share = f"its edge energy is weaker than {_pct(float((edge[pend] > edge[r, c]).mean()))} of the {int(pend.sum())} pending tokens; "
    verdict = "pruned" if code == PRUNED else "kept"
    rate = float(p.get("rate", 0))
    if p.get("second") == "simple":  # the 2nd pass orders by entropy, not by edges
        share, kind = "", "entropy cluster"
    else:
        kind = "edge cluster"
    return (f"{head}: below the keep cut-off, so pending; {share}the 2nd pass removes whole {kind}s, weakest "
            f"first, until {_pct(rate)} of the pending tokens are gone (its {kind}: {second}, 0 = weakest), "
            f"so it was {verdict} {at}.")


# ------------------------------------------------------------------------------ what if?


def _index_at(trace: Trace, row: int, col: int, layer: int) -> int:
    """Row-major index, on the grid of ``layer``'s stage, of the token holding input-grid (row, col)."""
    gh, gw = trace.grid_at(layer)
    f = trace.grid[0] // gh
    return (row // f) * gw + col // f


def forced_plan(plan: Plan, trace: Trace, row: int, col: int, keep: bool, layer: int | None = None) -> Plan:
    """``plan`` with the token at (row, col) forced to stay through every pruning layer (``keep``)
    or forced out at ``layer`` (default: the first pruning layer)."""
    if keep:
        overrides = tuple((at, (_index_at(trace, row, col, at),), ()) for at in plan.layers)
    else:
        at = layer if layer in plan.layers else plan.layers[0]
        overrides = ((at, (), (_index_at(trace, row, col, at),)),)
    return dataclasses.replace(plan, overrides=overrides)


def what_if(session: Session, backbone: Backbone, key: ModelKey, plan: Plan, row: Any, col: Any, keep: bool,
            layer: int | None = None) -> tuple[Analysis, str]:
    """Re-run ``plan`` from the session's prefix cache with one token overruled; the session then
    shows the overruled run. Returns it and a sentence with the change in MACs and pixels."""
    before = session.analysis
    if before is None:
        raise ParamError("run an analysis first, then pick a token")
    r, c = check_token(before.trace, row, col)
    after = session.run(backbone, key, forced_plan(plan, before.trace, r, c, keep, layer))
    if after is None:
        raise ParamError("settings changed while this ran; pick the token again")
    d_macs = after.report["macs"]["pruned"] - before.report["macs"]["pruned"]
    changed = int((after.trace.seg.labels != before.trace.seg.labels).sum())
    total = before.trace.seg.labels.size
    verb = "kept through every pruning layer" if keep else "pruned"
    return after, (f"**What if token ({r}, {c}) were {verb}?** {d_macs / 1e6:+.2f} MMACs "
                   f"({100 * d_macs / before.report['macs']['baseline']:+.3f} % of the unpruned model); "
                   f"{changed} of {total} pixels ({100 * changed / total:.2f} %) changed class against the method's own "
                   f"decision. Run again to return to it.")


def inspection_markdown(ins: Inspection) -> str:
    """The inspector panel: the sentence, then a small table of signals per pruning layer."""
    layers = sorted({layer for per in ins.signals.values() for layer in per} | set(ins.thresholds))
    out = [f"**Token ({ins.row}, {ins.col})** — {ins.status}"
           + (f" at layer {ins.decided_at_layer}" if ins.decided_at_layer else "") + f".\n\n{ins.rule}\n"]
    if ins.signals:
        out.append("| signal | " + " | ".join(f"layer {x}" for x in layers) + " |")
        out.append("|---|" + "---|" * len(layers))
        for name, per in ins.signals.items():
            cells = ["—" if per.get(x) is None else f"{per[x]:.4g}" for x in layers]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        names = sorted({n for t in ins.thresholds.values() for n in t})
        for name in names:
            cells = [f"{ins.thresholds.get(x, {}).get(name, float('nan')):.4g}" for x in layers]
            out.append(f"| *{name}* (in force) | " + " | ".join(cells) + " |")
    return "\n".join(out)
