"""Where the time of a pruned forward goes (torch.profiler op table + cProfile by function).

Demo model, 512 x 512, each method at its defaults (random rate 0.5 after 6, evit, lvtp, dtop on
``demo``; matp on ``demo_matp``); the forward is ``engine.run_pruned`` from scratch, as
``analyze --repeat`` times it, next to ``engine.run_baseline``.

    python bench/profile_pruned.py [--threads 2] [--reps 5] [--out runs/profile_before.txt]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.backbones import build_backbone  # noqa: E402
from prune_viz.engine import run_baseline, run_pruned  # noqa: E402
from prune_viz.io import load_image  # noqa: E402
from prune_viz.params import make_plan  # noqa: E402

CASES = [("demo", "random", "6", {"rate": 0.5}), ("demo", "evit", None, {}), ("demo", "lvtp", None, {}),
         ("demo", "dtop", None, {}), ("demo_matp", "matp", None, {})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image", default="examples/mixed.png")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = load_image(args.image).rgb
    lines = [f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}, {args.image}"]
    models = {}
    for bname, method, layers, values in CASES:
        bb = models.setdefault(bname, build_backbone(bname))
        plan = make_plan(bb, method, layers, 0, values)
        base = lambda: run_baseline(bb, image)  # noqa: E731
        pruned = lambda: run_pruned(bb, image, plan, diagnostics=False)  # noqa: E731 (the timed path)
        base(), pruned()
        tb, tp = [], []
        for _ in range(args.reps):
            for fn, acc in ((base, tb), (pruned, tp)):
                t0 = time.perf_counter()
                fn()
                acc.append((time.perf_counter() - t0) * 1e3)
        lines.append(f"\n=== {bname} / {method} layers {plan.layers}: unpruned {statistics.median(tb):.1f} ms, "
                     f"pruned {statistics.median(tp):.1f} ms (medians of {args.reps}, interleaved)")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                pruned()
        lines.append("torch.profiler, 3 pruned forwards, top ops by self CPU time:")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(3):
            pruned()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(28)
        text = s.getvalue()
        lines.append("cProfile, 3 pruned forwards, by cumulative time:")
        lines.append(text[text.find("ncalls"):])
    out = "\n".join(lines)
    print(out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(out)


if __name__ == "__main__":
    main()
