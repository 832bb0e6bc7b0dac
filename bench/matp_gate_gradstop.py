"""MATP's training-time ablations (retention gate, gradient stop) on demo model v2: the shipped
MATP fine-tune against fine-tunes that differ by one switch, paired over the same val scenes.

Each fine-tune is first measured by the suite (``bench --suite v2 --methods matp,random@FT``:
MATP's alpha x layers sweep on that fine-tune, and the same fine-tune pruned at random), which
writes ``raw.npz`` (per-scene confusion matrices). This script reads those runs and writes one
table: per arm (one fine-tune, or several seeds of one recipe averaged: ``NAME=DIR1+DIR2``), its
unpruned mIoU, MATP at its defaults, MATP and "the same fine-tune + random" at matched MAC budgets
(linear interpolation of each sweep, ``stats.at_budget``), each with a 95 % bootstrap CI over
scenes, and paired differences against the first arm (the shipped recipe) and against random on
the same weights. Every run must cover the same split and scenes
with the same number of bootstrap draws: the draws (``stats.resample_counts``, seed 0) are then
the same table of scene counts, so differences are taken replicate by replicate.

    python bench/matp_gate_gradstop.py --run shipped=runs/abl_shipped --run no-gate=runs/abl_nogate \
        --run no-grad-stop=runs/abl_nogradstop --out docs/bench/ablations_v2/matp_gate_gradstop

Writes OUT.csv and OUT.md (the measurement commands go in with ``--command``, the reading of the
table with ``--notes FILE``).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.bench_suite import Measured, load_raw  # noqa: E402
from prune_viz.stats import CurvePoint, at_budget, percentile_ci, point_and_samples, resample_counts  # noqa: E402

COLUMNS = ["finetune", "row", "params", "budget_pct", "reduction_pct", "miou", "ci_low", "ci_high",
           "vs_first_pts", "vs_first_ci_low", "vs_first_ci_high", "vs_random_pts", "vs_random_ci_low", "vs_random_ci_high", "how"]


@dataclass
class Run:
    """One fine-tune's suite run, reduced to what the table needs."""

    name: str
    backbone: str  # the MATP fine-tune's backbone name in that run
    unpruned: CurvePoint
    matp: list[CurvePoint]
    random: list[CurvePoint]
    default: CurvePoint | None  # MATP at its defaults (alpha of MATPParams at every layer of the sweep)
    meta: dict[str, Any]


def load_run(name: str, path: Path, default_alpha: float) -> Run:
    """Read ``path/raw.npz`` of a suite run with a ``matp`` curve (and ``random@<fine-tune>``)."""
    measured, refs, meta = load_raw(path)
    counts = resample_counts(meta["n"], meta["boot"], seed=0)
    ref_macs = float(refs[meta["backbone"]].macs.mean())

    def point(m: Measured, label: str) -> CurvePoint:
        miou, samples = point_and_samples(m.cms, counts)
        return CurvePoint(100.0 * (1.0 - float(m.macs.mean()) / ref_macs), miou, samples, label=label)

    ft = meta["matp_backbone"]
    if ft not in refs:
        raise SystemExit(f"{path}: no unpruned reference of the MATP fine-tune {ft}")
    matp = [(m, point(m, m.point.label())) for m in measured if m.curve.name == "matp"]
    if not matp:
        raise SystemExit(f"{path}: no matp curve (run the suite with --methods matp,random@{ft})")
    random = [point(m, m.point.label()) for m in measured if m.curve.name == f"random@{ft}"]
    deepest = max(len(m.point.layers) for m, _ in matp)
    defaults = [p for m, p in matp if len(m.point.layers) == deepest and dict(m.point.values).get("alpha") == default_alpha]
    return Run(name, ft, point(refs[ft], "unpruned"), [p for _, p in matp], random, defaults[0] if defaults else None, meta)


def check_paired(runs: list[Run]) -> None:
    """The runs must share split, scene count and bootstrap draws, or nothing can be paired."""
    keys = {(r.meta["split"], r.meta["n"], r.meta["boot"], r.meta["backbone"]) for r in runs}
    if len(keys) != 1:
        raise SystemExit(f"runs differ in (split, n, boot, backbone): {sorted(keys)}; they cannot be paired")


def _diff(a: np.ndarray | None, b: np.ndarray | None, pa: float, pb: float) -> tuple[float | None, float | None, float | None]:
    """a - b in mIoU points with the percentile CI of the replicate-by-replicate difference."""
    if a is None or b is None:
        return None, None, None
    lo, hi = percentile_ci(100.0 * (a - b))
    return 100.0 * (pa - pb), lo, hi


@dataclass
class Value:
    """A quantity of an arm: mean over its fine-tunes (seeds) of the point and of each bootstrap
    replicate (the scenes, not the seeds, are what the CI generalises over)."""

    miou: float
    samples: np.ndarray
    reduction: float
    how: str


def arm_value(runs: list[Run], kind: str, budget: float | None = None) -> Value | None:
    """``kind``: "unpruned", "default" (MATP at its defaults, each at its own budget), "matp" or
    "random" at ``budget`` (interpolated per fine-tune, then averaged). None where any fine-tune
    of the arm lacks it or cannot reach the budget."""
    parts = []
    for run in runs:
        if kind == "unpruned":
            p = run.unpruned
            parts.append((p.miou, p.samples, p.reduction, ""))
        elif kind == "default":
            if run.default is None:
                return None
            parts.append((run.default.miou, run.default.samples, run.default.reduction, run.default.label))
        else:
            curve = run.matp if kind == "matp" else run.random
            bv = at_budget(curve, budget) if curve else None
            if bv is None or not bv.reached:
                return None
            parts.append((bv.miou, bv.samples, budget, bv.how))
    how = parts[0][3] if len({p[3] for p in parts}) == 1 else " / ".join(p[3] for p in parts)
    return Value(float(np.mean([p[0] for p in parts])), np.mean([p[1] for p in parts], axis=0), float(np.mean([p[2] for p in parts])), how)


def table(arms: list[tuple[str, list[Run]]], budgets: list[float]) -> list[dict[str, Any]]:
    """One row per (arm, quantity); an arm is one fine-tune or several seeds of one recipe
    (averaged). Differences against the first arm at the same quantity, and against the same
    weights pruned at random at the same budget."""
    first = arms[0][1]
    rows: list[dict[str, Any]] = []

    def row(name: str, kind: str, params: str, budget: float | None, v: Value, ref: Value | None, rnd: Value | None, how: str) -> None:
        lo, hi = percentile_ci(v.samples)
        d1 = _diff(v.samples, ref.samples, v.miou, ref.miou) if ref is not None else (None, None, None)
        d2 = _diff(v.samples, rnd.samples, v.miou, rnd.miou) if rnd is not None else (None, None, None)
        rows.append({"finetune": name, "row": kind, "params": params, "budget_pct": budget, "reduction_pct": round(v.reduction, 2),
                     "miou": round(v.miou, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                     "vs_first_pts": _r(d1[0]), "vs_first_ci_low": _r(d1[1]), "vs_first_ci_high": _r(d1[2]),
                     "vs_random_pts": _r(d2[0]), "vs_random_ci_low": _r(d2[1]), "vs_random_ci_high": _r(d2[2]), "how": how})

    for k, (name, runs) in enumerate(arms):
        is_first = k == 0
        backbone = "+".join(r.backbone for r in runs)
        row(name, "unpruned", "-", None, arm_value(runs, "unpruned"), None if is_first else arm_value(first, "unpruned"), None, "")
        d = arm_value(runs, "default")
        if d is not None:
            fd = arm_value(first, "default")
            row(name, "matp default", d.how, None, d, None if is_first else fd, None,
                "" if fd is None else f"own budget (first arm: {fd.reduction:.2f} %)")
        for b in budgets:
            mv, rv = arm_value(runs, "matp", b), arm_value(runs, "random", b)
            if mv is None:
                rows.append({"finetune": name, "row": "matp", "budget_pct": b, "how": "unreachable"})
            else:
                row(name, "matp", "alpha x layers sweep", b, mv, None if is_first else arm_value(first, "matp", b), rv, mv.how)
            if any(r.random for r in runs):
                if rv is None:
                    rows.append({"finetune": name, "row": f"random@{backbone}", "budget_pct": b, "how": "unreachable"})
                else:
                    row(name, f"random@{backbone}", "rate sweep", b, rv, None if is_first else arm_value(first, "random", b), None, rv.how)
    return rows


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)


def to_markdown(rows: list[dict[str, Any]], first: str) -> str:
    head = ("| fine-tune | row | budget (% fewer MACs) | mIoU [95 % CI] | vs " + first + " (pts) [95 % CI] | "
            "vs random, same fine-tune (pts) [95 % CI] | how |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if r.get("miou") is None:
            lines.append(f"| {r['finetune']} | {r['row']} | {r['budget_pct']:g} | unreachable | — | — | |")
            continue
        budget = f"{r['reduction_pct']:.1f}" if r["budget_pct"] is None else f"{r['budget_pct']:g}"
        ci = f"{r['miou']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        vs1 = "—" if r["vs_first_pts"] is None else f"{r['vs_first_pts']:+.2f} [{r['vs_first_ci_low']:+.2f}, {r['vs_first_ci_high']:+.2f}]"
        vsr = "—" if r["vs_random_pts"] is None else f"{r['vs_random_pts']:+.2f} [{r['vs_random_ci_low']:+.2f}, {r['vs_random_ci_high']:+.2f}]"
        kind = r["row"] + ("" if r["row"] == "unpruned" or r["budget_pct"] is not None else f" ({r['params']})")
        lines.append(f"| {r['finetune']} | {kind} | {budget} | {ci} | {vs1} | {vsr} | {r['how']} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from prune_viz.methods.matp import MATPParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR[+DIR...]",
                    help="an arm: one suite run, or several (seeds of one recipe, averaged); the first arm is the reference")
    ap.add_argument("--budgets", default="30,50,70", help="MAC reductions in %%; the first run's MATP default is added")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.csv and OUT.md")
    ap.add_argument("--command", action="append", default=[], help="a measurement command to quote in the .md (repeatable)")
    ap.add_argument("--title", default="MATP (reconstructed): retention gate and gradient stop, paired over the same scenes")
    ap.add_argument("--notes", type=Path, default=None, help="a markdown file put under the title (the reading of the table)")
    args = ap.parse_args(argv)
    arms = []
    for item in args.run:
        name, _, paths = item.partition("=")
        arms.append((name, [load_run(name, Path(p), MATPParams().alpha) for p in paths.split("+")]))
    runs = [r for _, rs in arms for r in rs]
    check_paired(runs)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    first_default = arm_value(arms[0][1], "default")
    if first_default is not None:
        budgets = sorted({*budgets, round(first_default.reduction, 1)})
    rows = table(arms, budgets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    meta = runs[0].meta
    notes = args.notes.read_text().strip() + "\n\n" if args.notes else ""
    text = (f"# {args.title}\n\n{notes}## Table\n\n{meta['split']} split, {meta['n']} scenes, 95 % bootstrap CI over scenes ({meta['boot']} paired draws, the same "
            f"for every run); MAC reductions against the unpruned original model ({meta['backbone']}).\n\n"
            + "".join(f"`{c}`\n\n" for c in args.command)
            + f"`python bench/matp_gate_gradstop.py {' '.join('--run ' + shlex.quote(r) for r in args.run)} --budgets {args.budgets} --out {args.out}`\n\n"
            + to_markdown(rows, arms[0][0]))
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
