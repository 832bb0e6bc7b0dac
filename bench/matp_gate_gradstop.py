"""MATP's training-time ablations (retention gate, gradient stop) on demo model v2: the shipped
MATP fine-tune against fine-tunes that differ by one switch, paired over the same val scenes.

Each fine-tune is first measured by the suite (``bench --suite v2 --methods matp,random@FT``:
MATP's alpha x layers sweep on that fine-tune, and the same fine-tune pruned at random), which
writes ``raw.npz`` (per-scene confusion matrices). This script reads those runs and writes one
table: per fine-tune, its unpruned mIoU, MATP at its defaults, MATP and "the same fine-tune +
random" at matched MAC budgets (linear interpolation of each sweep, ``stats.at_budget``), each with
a 95 % bootstrap CI over scenes, and paired differences against the first run (the shipped
fine-tune) and against random on the same weights. Every run must cover the same split and scenes
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


def table(runs: list[Run], budgets: list[float]) -> list[dict[str, Any]]:
    """One row per (fine-tune, quantity); differences against ``runs[0]`` at the same quantity and
    against the same fine-tune pruned at random at the same budget."""
    first = runs[0]
    rows: list[dict[str, Any]] = []

    def row(run: Run, kind: str, params: str, budget: float | None, red: float | None, miou: float, samples: np.ndarray | None,
            first_val: tuple[float, np.ndarray | None] | None, rnd: tuple[float, np.ndarray | None] | None, how: str) -> None:
        lo, hi = percentile_ci(samples) if samples is not None else (None, None)
        d1 = _diff(samples, first_val[1], miou, first_val[0]) if first_val and run is not first else (None, None, None)
        d2 = _diff(samples, rnd[1], miou, rnd[0]) if rnd else (None, None, None)
        rows.append({"finetune": run.name, "row": kind, "params": params, "budget_pct": budget,
                     "reduction_pct": None if red is None else round(red, 2), "miou": round(miou, 4),
                     "ci_low": None if lo is None else round(lo, 4), "ci_high": None if hi is None else round(hi, 4),
                     "vs_first_pts": _r(d1[0]), "vs_first_ci_low": _r(d1[1]), "vs_first_ci_high": _r(d1[2]),
                     "vs_random_pts": _r(d2[0]), "vs_random_ci_low": _r(d2[1]), "vs_random_ci_high": _r(d2[2]), "how": how})

    for run in runs:
        u = run.unpruned
        row(run, "unpruned", "-", None, 0.0, u.miou, u.samples, (first.unpruned.miou, first.unpruned.samples), None, "")
        if run.default is not None:
            d, fd = run.default, first.default
            row(run, "matp default", d.label, None, d.reduction, d.miou, d.samples,
                (fd.miou, fd.samples) if fd is not None else None, None,
                "" if fd is None else f"own budget (first run: {fd.reduction:.2f} %)")
        for b in budgets:
            bv, fb = at_budget(run.matp, b), at_budget(first.matp, b)
            rb = at_budget(run.random, b) if run.random else None
            if not bv.reached:
                rows.append({"finetune": run.name, "row": "matp", "budget_pct": b, "how": "unreachable"})
            else:
                row(run, "matp", "alpha x layers sweep", b, b, bv.miou, bv.samples,
                    (fb.miou, fb.samples) if fb.reached else None, (rb.miou, rb.samples) if rb is not None and rb.reached else None, bv.how)
            if rb is not None:
                fr = at_budget(first.random, b) if first.random else None
                if rb.reached:
                    row(run, f"random@{run.backbone}", "rate sweep", b, b, rb.miou, rb.samples,
                        (fr.miou, fr.samples) if fr is not None and fr.reached else None, None, rb.how)
                else:
                    rows.append({"finetune": run.name, "row": f"random@{run.backbone}", "budget_pct": b, "how": "unreachable"})
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
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR", help="a suite run (the first is the reference)")
    ap.add_argument("--budgets", default="30,50,70", help="MAC reductions in %%; the first run's MATP default is added")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.csv and OUT.md")
    ap.add_argument("--command", action="append", default=[], help="a measurement command to quote in the .md (repeatable)")
    ap.add_argument("--title", default="MATP (reconstructed): retention gate and gradient stop, paired over the same scenes")
    ap.add_argument("--notes", type=Path, default=None, help="a markdown file put under the title (the reading of the table)")
    args = ap.parse_args(argv)
    runs = []
    for item in args.run:
        name, _, path = item.partition("=")
        runs.append(load_run(name, Path(path), MATPParams().alpha))
    check_paired(runs)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if runs[0].default is not None:
        budgets = sorted({*budgets, round(runs[0].default.reduction, 1)})
    rows = table(runs, budgets)
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
            + f"`python bench/matp_gate_gradstop.py {' '.join('--run ' + r for r in args.run)} --budgets {args.budgets} --out {args.out}`\n\n"
            + to_markdown(rows, runs[0].name))
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
