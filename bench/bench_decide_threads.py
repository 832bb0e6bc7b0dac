"""Decision time with and without the one-thread section (prune_viz/threads.py), at 1 and 2
intra-op threads, interleaved in one process.

Each method at its defaults (lvtp, dtop on ``demo``; matp on ``demo_matp``) records the contexts
of its pruning steps once (``diagnostics=False``, the timed path); then ``decide`` (one thread for
small inputs) and ``decide.__wrapped__`` (the same function under the process's thread setting)
are timed on them, summed over the steps, in alternating order. Also checks that both give the
same kept tokens.

    python bench/bench_decide_threads.py [--reps 21] [--image examples/mixed.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_overhead import record  # noqa: E402
from prune_viz.backbones import build_backbone  # noqa: E402
from prune_viz.io import load_image  # noqa: E402
from prune_viz.params import make_plan  # noqa: E402

CASES = [("demo", "lvtp"), ("demo", "dtop"), ("demo_matp", "matp")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--image", default="examples/mixed.png")
    args = ap.parse_args()
    image = load_image(args.image).rgb
    cases, models = {}, {}
    for bname, method in CASES:
        bb = models.setdefault(bname, build_backbone(bname))
        plan = make_plan(bb, method, None, 0, {})
        contexts = [dataclasses.replace(c, want_diagnostics=False) for c in record(bb, image, plan)[0]]
        cases[method] = (plan, contexts)
    keys = [(m, v, t) for m in cases for v in ("one thread", "as set") for t in (1, 2)]
    runs: dict[tuple, list[float]] = {k: [] for k in keys}
    load0 = os.getloadavg()[0]
    for i in range(args.reps + 1):  # round 0: warm-up
        for m, v, t in keys if i % 2 == 0 else keys[::-1]:
            plan, contexts = cases[m]
            fn = plan.method.decide if v == "one thread" else plan.method.decide.__wrapped__
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            kept = [fn(c, plan.params).keep for c in contexts]
            if i:
                runs[(m, v, t)].append((time.perf_counter() - t0) * 1e3)
            if i == 0 and v == "as set" and t == 1:
                torch.set_num_threads(2)
                same = all(torch.equal(a, plan.method.decide(c, plan.params).keep) for a, c in zip(kept, contexts))
                print(f"{m}: one-thread decision at 2 threads == decision at 1 thread: {same}")
    print(f"\nload average {load0:.2f} -> {os.getloadavg()[0]:.2f}; {args.reps} interleaved rounds; decide summed over "
          "the steps, ms, median [interquartile range]")
    print("| method | threads | one-thread section | as set (before) |")
    print("|---|---|---|---|")
    for m in cases:
        for t in (1, 2):
            cells = []
            for v in ("one thread", "as set"):
                x = sorted(runs[(m, v, t)])
                q = len(x) // 4
                cells.append(f"{statistics.median(x):.2f} [{x[q]:.2f}-{x[-q - 1]:.2f}]")
            print(f"| {m} | {t} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
