"""Calibrate and check the out-of-domain warning (prune_viz/ood.py) on the demo segmenter.

    python bench/bench_ood.py --n 200            # rates at ood.OOD_THRESHOLD
    python bench/bench_ood.py --n 200 --threshold 0.2

Scores the unpruned demo model on: ``--n`` val scenes (in domain), ``--n`` shift scenes (same
generator, a layout mix training never saw: mildly out of domain), and images available offline
that are not synthetic aerial scenes: matplotlib's sample photos (grace_hopper.jpg; logo2.png and
Minduka_Present_Blue_Pack.png, two graphics), two DEMs rendered as hill-shaded colour maps
(jacksboro_fault_dem.npz, topobathy.npz), and generated non-aerial images (a rendered line plot,
a checkerboard, uniform noise, a flat grey). Prints the score distribution per group and the
share of images over the threshold (the banner rate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz import ood  # noqa: E402
from prune_viz.backbones import build_backbone  # noqa: E402
from prune_viz.data import synthetic  # noqa: E402
from prune_viz.engine import run_baseline  # noqa: E402
from prune_viz.io import load_image  # noqa: E402


def _rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return img


def offline_images() -> dict[str, np.ndarray]:
    """Named non-aerial RGB uint8 images, all from files shipped with matplotlib or generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LightSource

    data = Path(matplotlib.get_data_path()) / "sample_data"
    out = {name: load_image(data / name).rgb for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png")}
    ls = LightSource(azdeg=315, altdeg=45)
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        z = np.load(data / name)[key].astype(float)
        rgb = ls.shade(z, cmap=plt.get_cmap("gist_earth"), blend_mode="soft", vert_exag=0.05 if key == "topo" else 1.0)
        out[f"{name} (hill-shaded)"] = (rgb[..., :3] * 255).astype(np.uint8)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    x = np.linspace(0, 10, 200)
    ax.plot(x, np.sin(x), x, np.cos(x))
    ax.set_title("a line plot")
    out["line plot (rendered)"] = _rendered(fig)
    yy, xx = np.mgrid[:512, :512]
    out["checkerboard 64 px"] = np.repeat((((yy // 64 + xx // 64) % 2) * 255).astype(np.uint8)[..., None], 3, 2)
    out["uniform noise"] = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    out["flat grey"] = np.full((512, 512, 3), 128, np.uint8)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=ood.OOD_THRESHOLD)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bb = build_backbone("demo")

    def score(img: np.ndarray) -> float:
        return ood.ood_score(bb, run_baseline(bb, img))

    print(f"signal: mean normalised per-token class entropy of the unpruned demo model; threshold {args.threshold}")
    for split in ("val", "shift"):
        s = np.array([score(synthetic.split_scene(split, i, bb.input_size)[0]) for i in range(args.n)])
        p50, p95, p99 = np.percentile(s, [50, 95, 99])
        flagged = float(np.mean(s > args.threshold))
        print(f"{split:6s} n={args.n}: median {p50:.3f}  p95 {p95:.3f}  p99 {p99:.3f}  max {s.max():.3f}  "
              f"banner on {100 * flagged:.1f} % (absent on {100 * (1 - flagged):.1f} %)")
    photos = offline_images()
    hits = 0
    for name, img in photos.items():
        s = score(img)
        hits += s > args.threshold
        print(f"{name:36s} {img.shape[1]}x{img.shape[0]}  score {s:.3f}  banner {'YES' if s > args.threshold else 'no'}")
    print(f"offline non-aerial images: banner on {hits} of {len(photos)}")


if __name__ == "__main__":
    main()
