"""Wall-clock speedup of real token pruning against the MAC ratio it promises.

For SAM ViT-B at 1024 x 1024 and timm ``vit_base_patch16_224`` at 512 x 512 (random weights),
random pruning after layer 3 keeps 75 %, 50 % or 25 % of the patch tokens; blocks 4.. then run
on the kept tokens only. Printed per configuration:

* MAC ratio: baseline MACs / pruned MACs of the **encoder** (embed + blocks), analytic
  (``Backbone.block_macs``, which the tests hold equal to ``torch.utils.flop_counter``).
* speedup: median wall time of the baseline encoder / median wall time of the pruned encoder.
  Timed: embed + blocks + scattering the kept tokens back onto the grid. Not timed: the token
  choice (a random permutation), ``prepare`` and ``decode`` (SAM's everything mode would
  dominate and does not change with pruning).
* quotient: speedup / MAC ratio (1.0 = every MAC saved is time saved).

Both wall-clock and process CPU time are reported: with one thread and an otherwise idle core
they agree; on a shared machine the CPU time is the steadier of the two.

Run: ``python bench/bench_speed.py [--threads 1] [--reps 3] [--warmup 1] [--only sam|timm]``.
The default is one thread: on a machine shared with other jobs, multi-threaded timings of the
many small per-window operations measure the neighbours' load more than this code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.backbones.base import Backbone, Prepared  # noqa: E402
from prune_viz.methods.base import num_to_keep  # noqa: E402

PRUNE_AFTER = 3
KEEP = (0.75, 0.5, 0.25)


def encode(bb: Backbone, prep: Prepared, kept: torch.Tensor | None) -> torch.Tensor:
    """Encoder only, as the engine runs it: blocks 1..PRUNE_AFTER on the full grid, the rest on
    ``kept`` (None: every block in full); dropped tokens keep their features. -> 1 x N x C."""
    grid = prep.grid
    x = bb.embed(prep)
    layers = range(1, bb.num_blocks + 1)
    if kept is None:
        for layer in layers:
            x = bb.run_block(layer, x, None, grid).x
        return x
    for layer in layers[:PRUNE_AFTER]:
        x = bb.run_block(layer, x, None, grid).x
    prefix, patches = bb.split_prefix(x)
    full = patches.clone()
    x = torch.cat([prefix, patches[:, kept]], dim=1)
    for layer in layers[PRUNE_AFTER:]:
        x = bb.run_block(layer, x, kept, grid).x
    full[:, kept] = bb.split_prefix(x)[1]
    return full


def encoder_macs(bb: Backbone, prep: Prepared, kept: torch.Tensor | None) -> int:
    total = bb.embed_macs(prep)
    for layer in range(1, bb.num_blocks + 1):
        total += bb.block_macs(layer, kept if layer > PRUNE_AFTER else None, prep.grid)
    return total


def median_time(fn, reps: int, warmup: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) over ``reps`` runs."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


@torch.no_grad()
def bench(name: str, bb: Backbone, image: np.ndarray, reps: int, warmup: int) -> list[tuple]:
    prep = bb.prepare(image)
    n = prep.grid[0] * prep.grid[1]
    base_macs = encoder_macs(bb, prep, None)
    base_wall, base_cpu = median_time(lambda: encode(bb, prep, None), reps, warmup)
    print(
        f"{name}: grid {prep.grid[0]}x{prep.grid[1]}, baseline encoder {base_macs / 1e9:.1f} GMACs, "
        f"{base_wall:.2f} s wall, {base_cpu:.2f} s CPU",
        flush=True,
    )
    rows = []
    g = torch.Generator().manual_seed(0)
    for keep in KEEP:
        kept = torch.sort(torch.randperm(n, generator=g)[: num_to_keep(n, 1.0 - keep)]).values
        macs = encoder_macs(bb, prep, kept)
        wall, cpu = median_time(lambda: encode(bb, prep, kept), reps, warmup)
        ratio = base_macs / macs
        s_wall, s_cpu = base_wall / wall, base_cpu / cpu
        rows.append((name, keep, macs, wall, cpu, ratio, s_wall, s_cpu))
        print(
            f"  keep {keep:.0%}: {macs / 1e9:.1f} GMACs, {wall:.2f} s wall, {cpu:.2f} s CPU | MAC ratio {ratio:.2f} | "
            f"speedup wall {s_wall:.2f} (/ratio {s_wall / ratio:.2f}), CPU {s_cpu:.2f} (/ratio {s_cpu / ratio:.2f})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", choices=("sam", "timm"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = (np.random.default_rng(0).random((768, 1024, 3)) * 255).astype(np.uint8)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.reps} after {args.warmup} warm-up; "
          f"random pruning after layer {PRUNE_AFTER}; MACs: 1 multiply-add = 1 MAC", flush=True)
    if args.only in (None, "sam"):
        from prune_viz.backbones.sam import build_sam

        sam = build_sam("sam_vit_b", img_size=1024, random_weights=True, points_per_side=1)  # decode is not timed
        bench("sam_vit_b@1024", sam, image, args.reps, args.warmup)
    if args.only in (None, "timm"):
        from prune_viz.backbones.vit import build_timm

        bench("timm:vit_base_patch16_224@512", build_timm("vit_base_patch16_224", input_size=512), image, args.reps, args.warmup)


if __name__ == "__main__":
    main()
