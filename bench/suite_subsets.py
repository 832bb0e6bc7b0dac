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
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.bench_report import BUDGET_METHODS, summarise  # noqa: E402
from prune_viz.bench_suite import Measured, load_raw  # noqa: E402
from prune_viz.data.synthetic import split_kind  # noqa: E402


def scenes_subset(m: Measured, idx: np.ndarray) -> Measured:
    """The same measurements restricted to scenes ``idx`` (the scene axis is axis 1)."""
    return dataclasses.replace(m, cms=m.cms[:, idx], cms_edge=m.cms_edge[:, idx], macs=m.macs[:, idx],
                               decision_macs=m.decision_macs[:, idx])


def class_share(ref: Measured, classes: list[int]) -> np.ndarray:
    """Per scene, the ground-truth pixel share of ``classes`` (confusion rows are ground truth)."""
    gt = ref.cms[0].sum(axis=2)  # S x K
    return gt[:, classes].sum(axis=1) / gt.sum(axis=1)


def spread_at(measured: list[Measured], refs: dict[str, Measured], meta: dict, idx: np.ndarray, budget: float) -> dict:
    sub_meta = dict(meta, n=len(idx), budgets=(budget,))
    s = summarise([scenes_subset(m, idx) for m in measured], {k: scenes_subset(v, idx) for k, v in refs.items()}, sub_meta, (budget,))
    reached = {b["method"]: b["miou"] for b in s["budgets"] if b.get("miou") is not None and b["method"] in BUDGET_METHODS}
    if not reached:
        print(f"error: no method reaches -{budget:g} % MACs on these scenes", file=sys.stderr)
        raise SystemExit(2)
    best, worst = max(reached, key=reached.get), min(reached, key=reached.get)
    return {"unpruned": s["ref_miou"], "random": reached.get("random"), "best": best, "best_miou": reached[best],
            "worst": worst, "worst_miou": reached[worst], "spread_pts": 100 * (reached[best] - reached[worst])}


def print_by_kind(measured: list[Measured], refs: dict[str, Measured], meta: dict, budget: float, control: int) -> None:
    """One row per layout kind (``synthetic.split_kind``) of the run's scenes, then all scenes:
    how many scenes, the unpruned mIoU, random's, the best and worst method and their spread at
    ``budget``. With ``control`` > 0, also the spread on that many random subsets of the same
    size (median [10th, 90th percentile]): a best-minus-worst over few scenes is larger by
    chance alone, so a kind separates the methods only where it beats that."""
    start = int(meta.get("start", 0))
    n = int(meta["n"])
    kinds = np.array([split_kind(meta["split"], start + i) for i in range(n)])
    rng = np.random.default_rng(0)
    extra = " random subsets of that size |" if control else ""
    print(f"| kind | scenes | unpruned | random | best | worst | spread (points) |{extra}")
    print("|---|---|---|---|---|---|---|" + ("---|" if control else ""))
    groups = [(k, np.flatnonzero(kinds == k)) for k in dict.fromkeys(sorted(kinds))] + [("all", np.arange(n))]
    for name, idx in groups:
        r = spread_at(measured, refs, meta, idx, budget)
        rnd = "unreached" if r["random"] is None else f"{r['random']:.3f}"
        row = (f"| {name} | {len(idx)} | {r['unpruned']:.3f} | {rnd} | {r['best']} {r['best_miou']:.3f} | "
               f"{r['worst']} {r['worst_miou']:.3f} | {r['spread_pts']:.1f} |")
        if control and len(idx) < n:
            sp = [spread_at(measured, refs, meta, np.sort(rng.choice(n, len(idx), replace=False)), budget)["spread_pts"]
                  for _ in range(control)]
            row += f" {np.median(sp):.1f} [{np.percentile(sp, 10):.1f}, {np.percentile(sp, 90):.1f}] |"
        elif control:
            row += " — |"
        print(row)


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
