"""LVTP's decision overhead (entropy + clustering + Sobel) against the baseline forward.

SAM ViT-B at 1024 x 1024 (random weights: timing does not depend on them). The baseline is the
full unpruned encoder forward (embed + 12 blocks, ``engine.run_baseline`` without decode); the
decision is ``lvtp.decide`` at its defaults on the real features after layer 6 (4096 tokens x 768
channels) and the 1024 x 1024 input image. Prints medians of ``--reps`` runs after a warm-up.

    python bench/bench_lvtp_overhead.py [--threads 2] [--reps 3]
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

from prune_viz.backbones.sam import build_sam  # noqa: E402
from prune_viz.methods.base import PruneContext  # noqa: E402
from prune_viz.methods.lvtp import LVTPParams, decide  # noqa: E402


def median_s(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layer", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_sam("sam_vit_b", img_size=1024, random_weights=True)
    image = (np.random.default_rng(0).random((1024, 1024, 3)) * 255).astype(np.uint8)
    prep = sam.prepare(image)

    @torch.no_grad()
    def encoder(stop: int | None = None) -> torch.Tensor:
        x = sam.embed(prep)
        for layer in range(1, (stop or sam.num_blocks) + 1):
            x = sam.run_block(layer, x, None, prep.grid).x
        return x

    forward_s = median_s(encoder, args.reps)
    feats = encoder(args.layer)[0]
    n = feats.shape[0]
    ctx = PruneContext(
        layer=args.layer, step=0, num_steps=1, tokens=feats, kept_idx=torch.arange(n), grid=prep.grid,
        patch_size=sam.patch_size, image=prep.image01, seed=0, num_tokens_total=n,
    )
    params = LVTPParams()
    decide_s = median_s(lambda: decide(ctx, params), args.reps)
    print(f"SAM ViT-B 1024, {args.threads} thread(s): baseline encoder forward {forward_s * 1e3:.0f} ms")
    print(f"LVTP decide at layer {args.layer} ({n} tokens x {feats.shape[1]} ch, defaults {params}): {decide_s * 1e3:.1f} ms")
    print(f"overhead = {100 * decide_s / forward_s:.2f}% of the baseline forward (target <= 5%)")


if __name__ == "__main__":
    main()
