"""``python -m prune_viz inspect FOLDER_OR_ZIP --out DIR`` (or ``--synthetic shift --n 100``):
every image unpruned and pruned, ranked worst first -> ``DIR/inspect.csv`` + ``DIR/index.html``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable


def add_inspect_parser(sub: argparse._SubParsersAction, whole_number: Callable[[int, int], Callable[[str], int]],
                       add_method_options: Callable[[argparse.ArgumentParser], None]) -> None:
    from .inspect_set import MAX_SYNTHETIC, TOP_K
    from .methods import METHODS
    from .params import DEFAULT_METHOD, MAX_INPUT_SIZE, MAX_SEED

    p = sub.add_parser("inspect", help="a folder / zip of images (or a generated split) ranked by what pruning did to each: inspect.csv + index.html")
    p.add_argument("source", type=Path, nargs="?", default=None, help="a folder or a .zip of images (or use --synthetic)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbone", default="demo", help="demo | sam_vit_b | sam_vit_l | sam_vit_h | timm:NAME")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--input-size", type=whole_number(16, MAX_INPUT_SIZE), default=None)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS))
    p.add_argument("--layers", default=None, help="1-based pruning layers, e.g. 3,6,8 (default: the backbone's)")
    p.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0)
    p.add_argument("--masks", type=Path, default=None,
                   help="folder of ground-truth masks: <stem>_mask.* or the image's own file name (masks next to the images are found too)")
    p.add_argument("--limit", type=whole_number(1, 100_000), default=None, help="only the first N images (by name)")
    p.add_argument("--synthetic", default=None, metavar="SPLIT", help="instead of files: scenes of a generated split (val, test, shift) with their ground truth")
    p.add_argument("--n", type=whole_number(1, MAX_SYNTHETIC), default=100, help="with --synthetic: how many scenes")
    p.add_argument("--size", type=whole_number(64, 1024), default=512, help="with --synthetic: scene side in pixels")
    p.add_argument("--top-k", type=whole_number(0, 100), default=TOP_K, help="worst cases drawn in the gallery")
    p.add_argument("--attribution", type=whole_number(0, 100), default=0, metavar="K",
                   help="also attribute the changed pixels of the K worst cases to their pruned tokens (up to 32 re-runs / 20 s each)")
    add_method_options(p)


def cmd_inspect(args: argparse.Namespace, check_out_dir: Callable[[Path], None]) -> int:
    from tqdm import tqdm

    from .backbones import build_backbone
    from .errors import UserError
    from .inspect_report import write_csv, write_html
    from .inspect_set import attribute_cases, inspect_set, open_set
    from .methods import get_method
    from .params import make_plan, param_names

    if (args.source is None) == (args.synthetic is None):
        raise UserError("give either a folder / .zip of images or --synthetic SPLIT, not both and not neither")
    check_out_dir(args.out)
    backbone = build_backbone(args.backbone, checkpoint=args.checkpoint, input_size=args.input_size)
    values = {name: getattr(args, name) for name in param_names(get_method(args.method))}
    plan = make_plan(backbone, args.method, args.layers, args.seed, values)
    t0 = time.perf_counter()
    with open_set(args.source, args.masks, args.synthetic, args.n, args.size) as images:
        images = images.limited(args.limit)
        with tqdm(total=len(images), desc="inspect", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
            def progress(done: int, total: int, name: str) -> None:
                bar.set_postfix_str(name[-30:], refresh=False)
                bar.update(1)

            report = inspect_set(backbone, plan, images, top_k=args.top_k, progress=progress)
        if args.attribution:
            with tqdm(total=min(args.attribution, len(report.cases)), desc="attribution", unit="case", file=sys.stderr) as bar:
                attribute_cases(backbone, plan, images, report, args.attribution, lambda *_: bar.update(1))
    command = " ".join(["python -m prune_viz"] + sys.argv[1:]) if sys.argv[1:2] == ["inspect"] else None
    csv_path = write_csv(report, args.out / "inspect.csv")
    html_path = write_html(report, args.out, command)
    m = report.meta
    print(f"{m['images']} images ({m['skipped']} skipped) in {time.perf_counter() - t0:.1f} s; {images.label}; "
          f"ranked worst first by agreement mIoU. Mean MAC saving {m['mean_saved_pct']} %, mean agreement mIoU "
          f"{m['mean_agreement_miou']}; wrote {csv_path} and {html_path}")
    for row in report.rows[:3]:
        if "rank" in row:
            print(f"  #{row['rank']} {row['image']}: agreement mIoU {row['agreement_miou']}, boundary F {row['boundary_f']}, "
                  f"saved {row['saved_pct']} %" + (f", mIoU {row['miou']}" if row["miou"] != "" else ""))
    return 0
