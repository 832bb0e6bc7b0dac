"""What EViT's attention statistics cost on a SAM block over the full grid, in one process.

For each chosen block of SAM ViT-B @ 1024 (random weights, the input it gets from examples/mixed.png)
three ways of running it are timed, interleaved (drift on a shared machine hits all alike):

* stock: segment-anything's own ``Block`` (no statistics): what the unpruned encoder runs;
* before: the route the statistics took before (global block: the subset path over every token;
  windowed block: the stock block plus a statistics-only pass of the subset path);
* now: ``SamBackbone.run_block(..., want_attn=True)`` (the block's arithmetic chunked over query
  rows, statistics from the same probabilities, chunks on one-thread workers).

It first checks that "now" gives the stock block's output (allclose at fp32 tolerance, and the
largest difference) and the same statistics as "before" (largest difference, and the kept set of
EViT at rate 0.5 identical). Statistics cost = median(with) - median(stock); wall time and the
process CPU time (less sensitive to other jobs, but it counts OpenMP spin-waiting) are printed.

    python bench/bench_sam_stats.py [--threads 2] [--reps 5] [--layers 5,6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.backbones.base import BlockOutput  # noqa: E402
from prune_viz.backbones.sam import build_sam  # noqa: E402
from prune_viz.backbones.sam_attention import run_block_subset, subset_attention  # noqa: E402
from prune_viz.io import load_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", default="5,6", help="1-based blocks (sam_vit_b: 3, 6, 9, 12 global)")
    ap.add_argument("--image", default="examples/mixed.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")]
    torch.manual_seed(0)
    sam = build_sam("sam_vit_b", img_size=1024, random_weights=True, points_per_side=1)
    prep = sam.prepare(load_image(args.image).rgb)
    grid = prep.grid
    everything = torch.arange(grid[0] * grid[1])
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}, {args.reps} interleaved rounds")

    def before(block: torch.nn.Module, x: torch.Tensor) -> BlockOutput:
        if not block.window_size:
            return run_block_subset(block, x, everything, grid, True)
        out = block(x.reshape(1, *grid, -1)).reshape(x.shape)
        _, received = subset_attention(block, block.norm1(x[0]), everything, grid, True, False)
        return BlockOutput(x=out, received=received)

    with torch.no_grad():
        inputs, x = {}, sam.embed(prep)
        for layer in range(1, max(layers) + 1):
            inputs[layer] = x
            x = sam.run_block(layer, x, None, grid).x
        for layer in layers:
            block, xin = sam._block(layer), inputs[layer]
            fns: dict[str, Callable[[], BlockOutput]] = {
                "stock": lambda: BlockOutput(x=block(xin.reshape(1, *grid, -1)).reshape(xin.shape)),
                "before": lambda: before(block, xin),
                "now": lambda: sam.run_block(layer, xin, None, grid, want_attn=True),
            }
            outs = {k: f() for k, f in fns.items()}
            diff = (outs["now"].x - outs["stock"].x).abs().max().item()
            close = torch.allclose(outs["now"].x, outs["stock"].x, rtol=1e-5, atol=1e-6)
            r_now, r_before = outs["now"].received, outs["before"].received
            keep = r_now.numel() // 2
            same = torch.equal(torch.topk(r_now, keep).indices.sort().values, torch.topk(r_before, keep).indices.sort().values)
            print(f"block {layer} ({sam.block_kind(layer)}): now vs stock output max diff {diff:.3g} (allclose {close}); "
                  f"statistics now vs before max diff {(r_now - r_before).abs().max().item():.3g}; EViT keep set at rate 0.5 identical: {same}")
            wall: dict[str, list[float]] = {k: [] for k in fns}
            cpu: dict[str, list[float]] = {k: [] for k in fns}
            for i in range(args.reps):
                for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fns[name]()
                    wall[name].append((time.perf_counter() - t0) * 1e3)
                    cpu[name].append((time.process_time() - c0) * 1e3)
            med = {k: statistics.median(v) for k, v in wall.items()}
            cmed = {k: statistics.median(v) for k, v in cpu.items()}
            print("  " + "; ".join(f"{k} {med[k]:.0f} ms wall [{min(wall[k]):.0f}-{max(wall[k]):.0f}], {cmed[k]:.0f} ms CPU" for k in fns))
            print(f"  statistics cost (median with - stock): before {med['before'] - med['stock']:+.0f} ms wall / "
                  f"{cmed['before'] - cmed['stock']:+.0f} ms CPU, now {med['now'] - med['stock']:+.0f} ms wall / "
                  f"{cmed['now'] - cmed['stock']:+.0f} ms CPU (load average now {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
