"""Decision time of this checkout against an earlier commit, interleaved in one process, on the
same recorded contexts; and whether the two decide the same tokens.

Each method at its defaults (lvtp, dtop on ``demo``; matp on ``demo_matp``) records the contexts of
its pruning steps once per image (``diagnostics=False``, the timed path). The earlier commit's
``prune_viz`` is extracted with ``git archive`` into a temporary folder and imported under another
name (the package imports itself relatively), so both versions run in this process. Then, in
alternating order, each version's ``decide`` runs on every recorded context (summed over the steps
and images); wall time and the calling thread's CPU time (``time.thread_time``: less exposed to
neighbours on a shared machine, but it does not count a helper thread's work) are reported.
Before timing, kept tokens, statuses and (with diagnostics) every diagnostic tensor are compared
for several seeds and parameter sets.

    python bench/bench_decide_ab.py --old 53b6e41 [--threads 2] [--reps 21] [--images examples/mixed.png,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import record  # noqa: E402
from prune_viz.backbones import build_backbone  # noqa: E402
from prune_viz.io import load_image  # noqa: E402
from prune_viz.params import make_plan  # noqa: E402

CASES = [("demo", "lvtp"), ("demo", "dtop"), ("demo_matp", "matp")]
CHECK_PARAMS = {
    "lvtp": [{}, {"entropy": "shannon"}, {"entropy": "none"}, {"second": "simple"}, {"second": "none"},
             {"alpha_mode": "literal"}, {"k": 16, "k2": 8, "iters": 30}],
    "dtop": [{}, {"k": 0}],
    "matp": [{}, {"criterion": "fixed"}, {"criterion": "topk"}, {"k": 0}, {"weights": (1, 0, 0)}],
}


def import_old(rev: str, into: str) -> str:
    """Extract ``prune_viz`` at ``rev`` into ``into`` as package ``pv_old``; returns its name."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "prune_viz"], check=True, capture_output=True).stdout
    path = Path(into) / "old.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    os.rename(Path(into) / "prune_viz", Path(into) / "pv_old")
    sys.path.insert(0, into)
    return "pv_old"


def same(a: object, b: object) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and torch.equal(a.float().nan_to_num(-7.0), b.float().nan_to_num(-7.0))
    return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="commit to compare against (e.g. 53b6e41)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--images", default="examples/mixed.png,examples/fields.png,examples/parking.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="decide_ab_")
    old_pkg = import_old(args.old, tmp)
    images = [load_image(p).rgb for p in args.images.split(",")]
    cases, models = {}, {}
    for bname, method in CASES:
        bb = models.setdefault(bname, build_backbone(bname))
        new_mod = importlib.import_module(f"prune_viz.methods.{method}")
        old_mod = importlib.import_module(f"{old_pkg}.methods.{method}")
        plan = make_plan(bb, method, None, 0, {})
        contexts = [dataclasses.replace(c, want_diagnostics=False) for im in images for c in record(bb, im, plan)[0]]
        seeded = [dataclasses.replace(c, seed=s) for c in contexts for s in (0, 1, 7)]
        n_checked = n_differ = 0
        for values in CHECK_PARAMS[method]:
            p_old, p_new = old_mod.SPEC.params_cls(**values), new_mod.SPEC.params_cls(**values)
            for ctx in seeded:
                for want in (False, True):
                    c = dataclasses.replace(ctx, want_diagnostics=want)
                    a, b = old_mod.decide(c, p_old), new_mod.decide(c, p_new)
                    ok = torch.equal(a.keep, b.keep) and torch.equal(a.status, b.status)
                    ok = ok and set(a.diagnostics) == set(b.diagnostics)
                    ok = ok and all(same(a.diagnostics[k], b.diagnostics[k]) for k in a.diagnostics)
                    n_checked += 1
                    n_differ += not ok
        print(f"{method}: {n_checked} decisions compared (seeds 0, 1, 7; {len(CHECK_PARAMS[method])} parameter sets; "
              f"with and without diagnostics): {n_differ} differ", flush=True)
        cases[method] = (contexts, old_mod.decide, old_mod.SPEC.params_cls(), new_mod.decide, new_mod.SPEC.params_cls())
    runs: dict[tuple[str, str, str], list[float]] = {}
    load0 = os.getloadavg()[0]
    for i in range(args.reps + 1):  # round 0: warm-up
        for method, (contexts, old_fn, p_old, new_fn, p_new) in cases.items():
            order = [("old", old_fn, p_old), ("new", new_fn, p_new)]
            for version, fn, params in order if i % 2 == 0 else order[::-1]:
                w0, c0 = time.perf_counter(), time.thread_time()
                for ctx in contexts:
                    fn(ctx, params)
                if i:
                    runs.setdefault((method, version, "wall"), []).append((time.perf_counter() - w0) * 1e3)
                    runs.setdefault((method, version, "cpu"), []).append((time.thread_time() - c0) * 1e3)
    print(f"\n{args.threads} thread(s); load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; {args.reps} interleaved rounds; "
          f"decide summed over the steps of {len(images)} image(s), ms: median [interquartile range]; old/new = median "
          "of the per-round ratios")
    print("| method | clock | old | new | old/new |")
    print("|---|---|---|---|---|")
    for method in cases:
        for clock in ("wall", "cpu"):
            cells = []
            for version in ("old", "new"):
                x = sorted(runs[(method, version, clock)])
                q = len(x) // 4
                cells.append(f"{statistics.median(x):.2f} [{x[q]:.2f}-{x[-q - 1]:.2f}]")
            ratio = statistics.median(o / n for o, n in zip(runs[(method, "old", clock)], runs[(method, "new", clock)]))
            print(f"| {method} | {clock} | {cells[0]} | {cells[1]} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
