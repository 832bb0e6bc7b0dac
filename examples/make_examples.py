"""Regenerate the shipped example scenes: `python examples/make_examples.py`.

Each scene is `prune_viz.data.synthetic.make_scene(seed, 512, kind)` with the seed below, taken
from the *test* split's seed range (never seen in training, disjoint from val). The image is
saved as PNG and its ground truth as a single-channel label PNG (values 0..6 = CLASSES).
"""

from __future__ import annotations

from pathlib import Path

import cv2

from prune_viz.data import synthetic

# kind -> seed (test split), chosen to show different difficulties for pruning.
EXAMPLES = {
    "mixed": 20_000_011,  # a bit of everything
    "dense_buildings": 20_000_003,  # many sharp edges: pruning has little to remove
    "road_network": 20_000_007,  # thin curved roads and cars: small structures
    "water": 20_000_005,  # a large flat water body: many redundant tokens
    "fields": 20_000_013,  # almost uniform fields: the easy case for every method
    "parking": 20_000_017,  # many small cars: where aggressive pruning fails
}


def main() -> None:
    out = Path(__file__).resolve().parent
    for kind, seed in EXAMPLES.items():
        image, labels = synthetic.make_scene(seed, 512, kind)
        cv2.imwrite(str(out / f"{kind}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"{kind}_mask.png"), labels)
        print(kind, seed, {c: round(float((labels == i).mean()), 3) for i, c in enumerate(synthetic.CLASSES)})


if __name__ == "__main__":
    main()
