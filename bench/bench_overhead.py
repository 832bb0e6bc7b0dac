"""Decision overhead of every method against the unpruned forward, in one command.

For each method at its defaults the pruned forward is run once (``diagnostics=False``, as timed)
to record what every decision saw; then, interleaved with the unpruned forward, are timed:

* decide: the method's ``decide`` on the recorded context of every pruning step (no view-only
  diagnostics), summed over the steps;
* inputs: what the decision needs that the unpruned forward does not compute: attention
  statistics (EViT: the block run with ``want_attn`` minus the block without) or the auxiliary
  heads on the alive tokens (DToP, MATP);
* overhead = (decide + inputs) / the unpruned forward, medians of ``--reps`` rounds.

Demo model at 512 x 512 (random rate 0.5 after 6, evit, lvtp, dtop on ``demo``; matp on
``demo_matp``): the unpruned forward is the whole one (prepare, embed, blocks, decode); bound 3 %.
SAM ViT-B at 1024 x 1024, random weights (random, evit, lvtp; DToP and MATP need auxiliary heads):
the unpruned forward is the image encoder (embed + 12 blocks; the everything-mode mask decoder
would make the overhead look smaller); bound 1 %.

    python bench/bench_overhead.py [--threads 2] [--reps 5] [--only demo|sam] [--sam-reps 3] [--sam-methods evit,lvtp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.backbones import build_backbone  # noqa: E402
from prune_viz.backbones.base import Backbone  # noqa: E402
from prune_viz.engine import Plan, run_baseline, run_pruned  # noqa: E402
from prune_viz.io import load_image  # noqa: E402
from prune_viz.methods.base import MethodSpec  # noqa: E402
from prune_viz.params import make_plan  # noqa: E402

DEMO_CASES = [("demo", "random", "6", {"rate": 0.5}), ("demo", "evit", None, {}), ("demo", "lvtp", None, {}),
              ("demo", "dtop", None, {}), ("demo_matp", "matp", None, {})]
SAM_CASES = [("sam_vit_b", "random", None, {"rate": 0.5}), ("sam_vit_b", "evit", None, {}), ("sam_vit_b", "lvtp", None, {})]


def record(bb: Backbone, image: np.ndarray, plan: Plan) -> tuple[list[Any], list[tuple]]:
    """Contexts the method saw and the (layer, x, kept_idx, grid) of blocks run with statistics."""
    contexts: list[Any] = []
    stats_calls: list[tuple] = []

    def spy(ctx, params):
        contexts.append(ctx)
        return plan.method.decide(ctx, params)

    original = bb.run_block

    def run_block(layer, x, kept_idx, grid, want_attn=False):
        if want_attn:
            stats_calls.append((layer, x, kept_idx, grid))
        return original(layer, x, kept_idx, grid, want_attn)

    bb.run_block = run_block  # type: ignore[method-assign]
    try:
        spec = MethodSpec(plan.method.name, plan.method.params_cls, spy, "", plan.method.needs_attention, plan.method.needs_aux)
        run_pruned(bb, image, Plan(spec, plan.params, plan.layers, plan.seed), diagnostics=False)
    finally:
        del bb.run_block
    return contexts, stats_calls


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


@torch.no_grad()
def overhead(bb: Backbone, image: np.ndarray, plan: Plan, forward: Callable[[], Any], reps: int) -> dict[str, float]:
    contexts, stats_calls = record(bb, image, plan)

    def decide() -> None:
        for ctx in contexts:
            plan.method.decide(ctx, plan.params)

    def inputs_with() -> None:
        for layer, x, kept, grid in stats_calls:
            bb.run_block(layer, x, kept, grid, want_attn=True)
        if plan.method.needs_aux:
            for ctx in contexts:
                bb.aux_logits(ctx.layer, ctx.tokens)

    def inputs_without() -> None:
        for layer, x, kept, grid in stats_calls:
            bb.run_block(layer, x, kept, grid, want_attn=False)

    fns = {"forward": forward, "decide": decide, "with": inputs_with, "without": inputs_without}
    for fn in fns.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(reps):  # interleaved: machine drift hits all parts alike
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            runs[name].append(timed(fns[name]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    inputs = max(0.0, med["with"] - med["without"]) if stats_calls else med["with"]
    return {"forward": med["forward"], "forward_min": min(runs["forward"]), "forward_max": max(runs["forward"]),
            "decide": med["decide"], "inputs": inputs, "steps": len(contexts)}


def table(title: str, rows: list[tuple[str, Plan, dict[str, float]]], bound: float) -> None:
    print(f"\n{title}")
    print("| method | layers | steps | decide (ms) | inputs (ms) | unpruned forward (ms, median [min-max]) | overhead | bound | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, plan, r in rows:
        pct = 100 * (r["decide"] + r["inputs"]) / r["forward"]
        print(f"| {name} | {','.join(map(str, plan.layers))} | {r['steps']} | {r['decide']:.2f} | {r['inputs']:.2f} | "
              f"{r['forward']:.0f} [{r['forward_min']:.0f}-{r['forward_max']:.0f}] | {pct:.2f} % | {bound:g} % | "
              f"{'yes' if pct <= bound else 'NO'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sam-reps", type=int, default=3)
    ap.add_argument("--only", choices=("demo", "sam"), default=None)
    ap.add_argument("--sam-methods", default="random,evit,lvtp", help="methods timed on SAM (each costs ~5 encoder forwards)")
    ap.add_argument("--image", default="examples/mixed.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = load_image(args.image).rgb
    from prune_viz.threads import _runtimes

    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start {os.getloadavg()[0]:.2f}, "
          f"{args.image}; medians of interleaved rounds after one warm-up; LVTP/DToP/MATP decisions on one intra-op "
          f"thread: {'yes' if args.threads > 1 and _runtimes() is not None else 'no'} (prune_viz/threads.py)")
    if args.only in (None, "demo"):
        rows, models = [], {}
        for bname, method, layers, values in DEMO_CASES:
            bb = models.setdefault(bname, build_backbone(bname))
            plan = make_plan(bb, method, layers, 0, values)
            rows.append((f"{method} ({bname})", plan, overhead(bb, image, plan, lambda: run_baseline(bb, image), args.reps)))
        table(f"Demo model, 512 x 512 (load average now {os.getloadavg()[0]:.2f})", rows, 3.0)
    if args.only in (None, "sam"):
        from prune_viz.backbones.sam import build_sam

        torch.manual_seed(0)
        sam = build_sam("sam_vit_b", img_size=1024, random_weights=True, points_per_side=1)
        prep = sam.prepare(image)

        def encoder() -> None:
            x = sam.embed(prep)
            for layer in range(1, sam.num_blocks + 1):
                x = sam.run_block(layer, x, None, prep.grid).x

        rows = []
        for _, method, layers, values in SAM_CASES:
            if method not in args.sam_methods.split(","):
                continue
            plan = make_plan(sam, method, layers, 0, values)
            rows.append((method, plan, overhead(sam, image, plan, encoder, args.sam_reps)))
        table(f"SAM ViT-B, 1024 x 1024, random weights; unpruned = image encoder (load average now {os.getloadavg()[0]:.2f})",
              rows, 1.0)


if __name__ == "__main__":
    main()
