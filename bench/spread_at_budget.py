"""How far apart the methods land at one MAC budget, for several suite runs side by side.

    python bench/spread_at_budget.py v2=runs/suite/val v2+1500=runs/suite3/val --budget 50

Each argument is LABEL=DIR, DIR an output folder of ``python -m prune_viz bench --suite v2``
(its ``curves.json``). Prints one markdown row per run: the unpruned mIoU, random's mIoU at the
budget, the best and the worst method there (mIoU interpolated on each method's curve, as in
``budgets.csv``), their spread in points, the best method's paired difference to random with its
CI, and whether the best method's CI is clear of random's: the two halves of issue #11's bar.
The last column, unpruned minus worst, is the largest spread any method could give without
beating the unpruned model: where it is under 5, no pruning method can meet the bar.
The same figures as each run's own findings (``bench_report.budget_extremes``), side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.bench_report import budget_extremes  # noqa: E402


def fail(message: str) -> NoReturn:
    """The project's CLI convention for bad input: one ``error: ...`` line, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def at_budget(curves: dict[str, Any], budget: int) -> dict[str, Any]:
    """The numbers of one run at ``budget`` (a MAC reduction in %), as the suite's own findings
    compute them (:func:`prune_viz.bench_report.budget_extremes`), plus the unpruned mIoU."""
    e = budget_extremes(curves["budgets"], budget)
    if e is None:
        fail(f"no method reaches -{budget} % in this run")
    if e["random"] is None:
        fail("the run has no random curve at this budget")
    return {"ref": curves["ref_miou"], **e}


def row(label: str, r: dict[str, Any]) -> str:
    rnd, best, worst = r["random"], r["best"], r["worst"]
    vs = "—" if best["vs_random_pts"] is None else f"{best['vs_random_pts']:+.1f} {best['vs_random_ci']}"
    return (f"| {label} | {r['ref']:.3f} | {rnd['miou']:.3f} [{rnd['ci_low']:.3f}, {rnd['ci_high']:.3f}] "
            f"| {best['method']} {best['miou']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}] "
            f"| {worst['method']} {worst['miou']:.3f} | {r['spread_pts']:.1f} | {vs} | {'yes' if r['clear'] else 'no'} "
            f"| {100 * (r['ref'] - worst['miou']):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=DIR, DIR a --suite v2 output folder")
    ap.add_argument("--budget", type=int, default=50, help="MAC reduction in %% (one of the suite's budgets)")
    args = ap.parse_args()
    print(f"| model | unpruned | random at −{args.budget} % | best at −{args.budget} % | worst | spread, pts "
          f"| best vs random, pts (paired) | best's CI clear of random's | ceiling: unpruned − worst, pts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep:
            fail(f"{item!r} is not LABEL=DIR")
        path = Path(folder) / "curves.json"
        if not path.is_file():
            fail(f"{path} not found")
        print(row(label, at_budget(json.loads(path.read_text()), args.budget)))


if __name__ == "__main__":
    main()
