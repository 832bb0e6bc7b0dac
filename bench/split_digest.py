"""A fingerprint of the scenes some splits draw, to check that a change to the generator left
them as they were (run it before and after; equal digests = byte-identical images and labels).

    python bench/split_digest.py train val test shift --scenes 0,1,7 --size 128

Prints one line per split: its name and the sha256 of scenes' images and labels, in order.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_viz.data.synthetic import split_scene  # noqa: E402


def split_digest(split: str, scenes: list[int], size: int) -> str:
    """sha256 over (image bytes, label bytes) of ``split_scene(split, i, size)`` for i in scenes."""
    h = hashlib.sha256()
    for i in scenes:
        image, labels = split_scene(split, i, size)
        h.update(image.tobytes())
        h.update(labels.tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("splits", nargs="+", help="split names (prune_viz.data.synthetic.SPLIT_SEEDS)")
    p.add_argument("--scenes", default="0,1,7", help="comma list of scene indices (default 0,1,7)")
    p.add_argument("--size", type=int, default=128, help="scene side in px (default 128)")
    a = p.parse_args(argv)
    try:
        scenes = [int(s) for s in a.scenes.split(",")]
        for split in a.splits:
            print(split, split_digest(split, scenes, a.size))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
