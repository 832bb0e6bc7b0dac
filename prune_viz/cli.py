"""Command line: ``python -m prune_viz analyze IMAGE --out DIR [...]`` (and ``bench``, ``inspect``).

User errors (bad file, bad parameter, missing checkpoint, an ``--out`` that cannot be written)
print one ``error: ...`` line and exit with code 2, checked before the run where they can be.
Only :class:`~prune_viz.errors.UserError` is caught: a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import UserError, echo
from .params import DEFAULT_METHOD, MAX_INPUT_SIZE, MAX_SEED, make_plan, param_names

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error: ...`` line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per parameter of every registered method (``--q1``, ``--rate``, ...)."""
    from .methods import METHODS

    seen: dict[str, type] = {}
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.params_cls):
            if f.name in seen:
                continue
            kind = f.type if isinstance(f.type, type) else {"float": float, "int": int, "str": str}.get(str(f.type), str)
            seen[f.name] = kind
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None, help=f"method parameter ({spec.name}, default {f.default})")


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS

    parser = _Parser(prog="python -m prune_viz", description="Token pruning in ViT segmenters, made visible.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("analyze", help="run one image: token maps, segmentation before/after, report.json")
    a.add_argument("image", type=Path)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--backbone", default="demo", help="demo | sam_vit_b | sam_vit_l | sam_vit_h | timm:NAME | models:NAME (registered in $PRUNE_VIZ_MODELS)")
    a.add_argument("--checkpoint", default=None)
    a.add_argument("--download", action="store_true", help="download official weights when not on disk (SAM; timm: its pretrained weights) (needs network)")
    a.add_argument("--input-size", type=_whole_number(16, MAX_INPUT_SIZE), default=None,
                   help=f"square input size in pixels, 16..{MAX_INPUT_SIZE} (default: the backbone's)")
    a.add_argument("--method", default=DEFAULT_METHOD, choices=sorted(METHODS))
    a.add_argument("--layers", default=None, help="1-based pruning layers, e.g. 3,6,8 (default: the backbone's)")
    a.add_argument("--mask", type=Path, default=None, help="ground-truth label mask for mIoU")
    a.add_argument("--seed", type=_whole_number(0, MAX_SEED), default=0)
    a.add_argument("--repeat", type=_whole_number(0, 100), default=3, help="timed rounds, each one unpruned and one pruned forward, interleaved (median and spread after one warm-up; 0: no timing)")
    a.add_argument("--no-measure", action="store_true", help="skip the FLOP-counter cross-check")
    a.add_argument("--attribution", action="store_true", help="also attribute the changed pixels to the pruned tokens "
                   "(restores groups of them, at most 32 re-runs / 20 s): attribution.png + attribution.json")
    add_method_options(a)
    from .bench import add_bench_parser
    from .inspect_cli import add_inspect_parser

    add_bench_parser(sub)
    add_inspect_parser(sub, _whole_number, add_method_options)
    return parser


def _whole_number(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (a bad one is argparse's one-line usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {echo(text)}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}")
        return value

    return parse


def check_out_dir(out: Path) -> None:
    """Make sure ``--out`` is (or can become) a writable folder before anything runs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to write the results into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: the folder is not writable")


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze, mask_refusal, save_outputs
    from .backbones import build_backbone
    from .io import load_image, load_mask
    from .methods import get_method

    check_out_dir(args.out)
    loaded = load_image(args.image)
    for notice in loaded.notices:
        print(f"note: {notice}", file=sys.stderr)
    backbone = build_backbone(args.backbone, checkpoint=args.checkpoint, input_size=args.input_size, download=args.download)
    values = {name: getattr(args, name) for name in param_names(get_method(args.method))}
    plan = make_plan(backbone, args.method, args.layers, args.seed, values)
    gt, input_notices = None, list(loaded.notices)
    if args.mask is not None:
        reason = mask_refusal(backbone)
        if reason:
            raise UserError(f"--mask: {reason}")
        gt, notices = load_mask(args.mask, loaded.rgb.shape[:2], backbone.num_classes, backbone.palette)
        for notice in notices:
            print(f"note: {notice}", file=sys.stderr)
        input_notices += [f"mask: {n}" for n in notices]
    result = analyze(backbone, loaded.rgb, plan, gt=gt, repeat=max(0, args.repeat), measure=not args.no_measure)
    result.report["input_notices"] = input_notices
    result.report["command"] = " ".join(["python -m prune_viz"] + sys.argv[1:]) if sys.argv[1:2] == ["analyze"] else None
    written = save_outputs(result, args.out, loaded.rgb, backbone.patch_size)
    if args.attribution:
        from .attribution import attribute, save_attribution

        att = attribute(backbone, loaded.rgb, plan, result.baseline, result.trace)
        written += save_attribution(att, loaded.rgb, result.baseline, result.trace, backbone.patch_size, args.out)
        print(att.statement)
    m = result.report["macs"]
    print(f"{backbone.name} / {plan.method.name} at layers {list(plan.layers)}: "
          f"{m['baseline'] / 1e9:.2f} -> {m['pruned'] / 1e9:.2f} GMACs ({m['delta_pct']:+.1f}%), "
          f"agreement mIoU {result.report['metrics']['agreement_miou']:.3f}; wrote {len(written)} files to {args.out}")
    print(f"weights: {result.report['weights']} ({result.report['weights_note']})")
    if result.report["latency_ms"]:
        print(latency_line(result.report["latency_ms"]))
    from .ood import ood_line

    print(ood_line(result.report["ood"]))
    return 0


def latency_line(lat: dict) -> str:
    """One line: medians [IQR] of the interleaved timings, the speedup and the efficiency."""
    sp = lat["spread"]

    def iqr(d: dict, fmt: str) -> str:
        return f"{fmt.format(d['median'])} [IQR {fmt.format(d['q1'])}-{fmt.format(d['q3'])}]"

    load = "unknown" if lat["load_average"] is None else f"{lat['load_average']:.2f}"
    eff = "—" if lat["efficiency"] is None else f"{lat['efficiency']:.2f}"
    return (f"wall time, {lat['repeat']} interleaved rounds, {lat['threads']} thread(s), load average {load}: "
            f"unpruned {iqr(sp['baseline'], '{:.1f}')} ms, pruned {iqr(sp['pruned'], '{:.1f}')} ms, "
            f"speedup {iqr(sp['speedup'], '{:.2f}')}, MAC ratio {lat['mac_ratio']:.2f}, efficiency {eff}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "analyze":
            return cmd_analyze(args)
        if args.command == "inspect":
            from .inspect_cli import cmd_inspect

            return cmd_inspect(args, check_out_dir)
        from .bench import cmd_bench

        return cmd_bench(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
