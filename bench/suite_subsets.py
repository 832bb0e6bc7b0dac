"""Where does the suite tell methods apart? The spread at one budget on a subset of its scenes,
chosen by ground truth alone (the scenes with the largest pixel share of some classes), from a
suite run's per-scene data (``raw.npz``; no forward pass is run).

Exploratory: it says which kind of scene separates the methods (for designing a harder task);
it does not replace the benchmark's bar, which is on whole splits.

    python bench/suite_subsets.py runs/suite/val --classes 4 --classes 4,6 --top 25 --budget 50
    python bench/suite_subsets.py runs/suite/val --by-kind --control 30 --budget 50   # a row per layout kind

Prints, per selection: the classes' mean pixel share, unpruned mIoU, random's mIoU, best and
worst method at the budget (interpolated on each curve, as ``budgets.csv``) and the spread in
points. Classes are the demo's indices (4 car, 6 clutter; ``assets/MODEL_CARD.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.bench_report import by_kind, md_table, scenes_subset, spread_on  # noqa: E402, F401 (scenes_subset: tests)
from prune_viz.bench_suite import Measured, load_raw  # noqa: E402


def class_share(ref: Measured, classes: list[int]) -> np.ndarray:
    """Per scene, the ground-truth pixel share of ``classes`` (confusion rows are ground truth)."""
    gt = ref.cms[0].sum(axis=2)  # S x K
    return gt[:, classes].sum(axis=1) / gt.sum(axis=1)


def spread_at(measured: list[Measured], refs: dict[str, Measured], meta: dict, idx: np.ndarray, budget: float) -> dict:
    """``bench_report.spread_on`` as flat figures; exits with an error line where no method
    reaches the budget on these scenes."""
    e = spread_on(measured, refs, meta, idx, budget)
    if e is None:
        print(f"error: no method reaches -{budget:g} % MACs on these scenes", file=sys.stderr)
        raise SystemExit(2)
    return {"unpruned": e["unpruned"], "random": e["random"]["miou"] if e["random"] else None,
            "best": e["best"]["method"], "best_miou": e["best"]["miou"], "worst": e["worst"]["method"],
            "worst_miou": e["worst"]["miou"], "spread_pts": e["spread_pts"]}


def print_by_kind(measured: list[Measured], refs: dict[str, Measured], meta: dict, budget: float, control: int) -> None:
    """``bench_report.by_kind`` on the run's scenes, as a markdown table (the suite's summary.md
    has the same section at its middle budget)."""
    cols = ["kind", "scenes", "unpruned", "random", "best", "worst", "spread_pts"] + (["random_subsets_pts"] if control else [])
    print(md_table(by_kind(measured, refs, meta, budget, control), cols))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="a suite run's --out folder (holds raw.npz, raw.json)")
    ap.add_argument("--classes", action="append", default=None, help="comma-separated class indices (repeatable); default 4")
    ap.add_argument("--top", type=int, default=25, help="scenes with the largest share")
    ap.add_argument("--budget", type=float, default=50.0, help="MAC saving in %%")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--by-kind", action="store_true", help="one row per scene layout kind instead of class shares")
    ap.add_argument("--control", type=int, default=0, help="with --by-kind: this many random same-size subsets per kind")
    args = ap.parse_args(argv)
    measured, refs, meta = load_raw(args.raw)
    meta["boot"] = args.boot
    ref = refs[meta["backbone"]]
    print(f"{args.raw}: {meta['split']}, {meta['n']} scenes, budget -{args.budget:g} % MACs")
    if args.by_kind:
        print_by_kind(measured, refs, meta, args.budget, args.control)
        return 0
    print("| selection | share | unpruned | random | best | worst | spread (points) |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.classes or ["4"]:
        classes = [int(c) for c in spec.split(",")]
        share = class_share(ref, classes)
        order = np.argsort(-share, kind="stable")
        top = min(args.top, len(order))
        for name, idx in ((f"top {top} by share of {spec}", order[:top]), ("the other scenes", order[top:]), ("all", order)):
            if not len(idx):
                continue
            r = spread_at(measured, refs, meta, idx, args.budget)
            rnd = "unreached" if r["random"] is None else f"{r['random']:.3f}"
            print(f"| {name} | {100 * share[idx].mean():.1f} % | {r['unpruned']:.3f} | {rnd} | "
                  f"{r['best']} {r['best_miou']:.3f} | {r['worst']} {r['worst_miou']:.3f} | {r['spread_pts']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
