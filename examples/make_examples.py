"""Regenerate the shipped example scenes: `python examples/make_examples.py`.

Each scene is `prune_viz.data.synthetic.make_scene(seed, 512, kind, style)` with the seed below:
the first six from the *test* split's seed range (never seen in training, disjoint from val), the
`shift_*` ones from the *shift* split's range, drawn with the shift generator settings (autumn,
0.5-2x ground sampling distance, low sun). The image is saved as PNG and its ground truth as a
single-channel label PNG (values 0..6 = CLASSES). The printout gives each scene's class shares.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from prune_viz.data import synthetic

# name -> (kind, seed, style), chosen to show different difficulties for pruning.
EXAMPLES = {
    "mixed": ("mixed", 20_000_011, synthetic.TRAIN_STYLE),  # a bit of everything, footpaths
    "dense_buildings": ("dense_buildings", 20_000_003, synthetic.TRAIN_STYLE),  # sharp edges everywhere
    "road_network": ("road_network", 20_000_007, synthetic.TRAIN_STYLE),  # thin roads, cars
    "water": ("water", 20_000_005, synthetic.TRAIN_STYLE),  # a large flat water body: redundant tokens
    "fields": ("fields", 20_000_013, synthetic.TRAIN_STYLE),  # parcels cut by 1-2 px boundaries and paths
    "parking": ("parking", 20_000_017, synthetic.TRAIN_STYLE),  # many small cars: aggressive pruning fails
    "shift_town_river": ("town_river", 30_000_002, synthetic.SHIFT_STYLE),  # unseen layout, autumn
    "shift_parking": ("parking", 30_000_003, synthetic.SHIFT_STYLE),  # coarser ground sampling: ~600 cars of ~65 px
}


def main() -> None:
    out = Path(__file__).resolve().parent
    for name, (kind, seed, style) in EXAMPLES.items():
        image, labels = synthetic.make_scene(seed, 512, kind, style)
        cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"{name}_mask.png"), labels)
        print(name, kind, seed, style.name, {c: round(float((labels == i).mean()), 3) for i, c in enumerate(synthetic.CLASSES)})


if __name__ == "__main__":
    main()
