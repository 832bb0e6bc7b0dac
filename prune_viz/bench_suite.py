"""``python -m prune_viz bench --suite v2``: every method as a curve, with error bars.

    python -m prune_viz bench --suite v2 --split val --n 100 --out runs/v2_val
    python -m prune_viz bench --suite v2 --split val --quick --n 2 --out runs/smoke

Each method sweeps its main knob (rate / threshold / alpha / layers / resolution) over a grid
meant to cover -10 .. -70 % MACs (what a grid actually covers is reported, never assumed); the
grids are written in terms of the backbone (its depth, its auxiliary heads, its input size), so
the same suite runs on any demo model. For every point: mIoU over the split with a bootstrap
95 % CI over scenes (``stats.py``), 3 seeds for stochastic methods, MACs with each decision's own
arithmetic counted, and latency (median and IQR of timed runs, interleaved across
configurations, in this one process, ``--threads`` threads). Per method: mIoU at the budgets
(30 / 50 / 70 % fewer MACs) by interpolation, and the area under the curve.
The trivial baselines are curves too: ``exit@L`` (every token leaves at the aux head after block
L) and ``lowres`` (the same model fed a smaller image; :class:`ResizedInput`).
Outputs: ``bench_report.write_suite`` (budgets.csv, curves.csv/json, tradeoff.png, *.md).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .backbones.base import Prepared
from .backbones.vit import TimmViT, resize_rgb

from .errors import UserError

BUDGETS = (30.0, 50.0, 70.0)
# Per-step removal rates for the rate-driven methods (random, EViT, ToMe) at one early layer:
# from ~-10 % to ~-72 % MACs on a 12-block model pruned after block 3 (1 - rate of the tokens
# go on; attention is quadratic, so the saving grows faster than the rate).
RATES = (0.1, 0.3, 0.5, 0.7, 0.85, 0.99)
# DToP exits a token when its aux confidence reaches the threshold; the demo model is so sure of
# most tokens that the interesting range is within 1e-4 of 1.
DTOP_THRESHOLDS = (0.99999, 0.99995, 0.9999, 0.999, 0.99, 0.9, 0.7, 0.4)
MATP_ALPHAS = (0.2, 0.5, 0.8, 1.2, 2.0, 4.0)
STOCHASTIC = {"random"}  # methods whose decision depends on the seed
# Backbone -> the registered backbone that is its MATP fine-tune (the paper trains with pruning in
# the loop). A backbone without one runs MATP on itself, and the outputs say "no fine-tune".
MATP_FINETUNES = {"demo": "demo_matp"}


def default_matp_backbone(backbone: str) -> str:
    return MATP_FINETUNES.get(backbone, backbone)


@dataclass(frozen=True)
class Point:
    """One configuration on a curve: pruning layers + method values, or an input size."""

    layers: tuple[int, ...] = ()
    values: tuple[tuple[str, Any], ...] = ()
    size: int | None = None

    def label(self) -> str:
        if self.size is not None:
            return f"{self.size}px"
        parts = [f"{k}={v}" for k, v in self.values]
        if self.layers:
            parts.append("L=" + ",".join(map(str, self.layers)))
        return ";".join(parts) or "-"


@dataclass
class Curve:
    """A named method in the suite: which registry method on which backbone, and its points.
    ``method`` is "lowres" for the input-size baseline (no pruning, a smaller input)."""

    name: str
    method: str
    backbone: str
    points: list[Point]
    seeds: tuple[int, ...] = (0,)
    knob: str = ""


@dataclass
class ResizedInput:
    """The same backbone fed a ``size`` x ``size`` input instead of its native one.

    Everything but ``prepare`` and ``embed`` is the wrapped adapter's (blocks, heads, MACs: all
    follow the smaller token grid; the prediction is upsampled to the image size by the same
    decode). Position embeddings: timm's own resampling for ``dynamic_img_size`` models
    (``VisionTransformer._pos_embed``: bicubic, antialiased, from the native grid to the new one),
    so the whole image keeps the layout the model was trained on. The demo's ``embed`` would
    instead *crop* the native grid (that is how its training crops see positions), which suits a
    crop but not a shrunken whole image. Resizing the image costs no MACs in our count (neither
    does the resize to the native size of the unpruned model).
    """

    inner: TimmViT
    size: int
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.inner, TimmViT):
            raise UserError(f"lowres needs a timm-based backbone (demo, timm:*), got {type(self.inner).__name__}")
        if self.size % self.inner.patch_size:
            raise UserError(f"input size {self.size} must be a multiple of the patch size {self.inner.patch_size}")
        self.name = f"{self.inner.name}@{self.size}px"

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def prepare(self, image: np.ndarray) -> Prepared:
        s = self.size
        image01 = torch.from_numpy(np.ascontiguousarray(resize_rgb(image, s, s))).permute(2, 0, 1).float() / 255.0
        g = s // self.inner.patch_size
        return Prepared((image01[None] - self.inner.mean) / self.inner.std, image01, (g, g), (s, s), image.shape[:2])

    def embed(self, prep: Prepared) -> torch.Tensor:
        return TimmViT.embed(self.inner, prep)


def stage_layers(bb: Any) -> tuple[int, ...]:
    """DToP's stage boundaries that this backbone has aux heads at (3, 6, 9 on the demo)."""
    from .methods import dtop

    return tuple(layer for layer in dtop.default_layers(bb.num_blocks) if layer in bb.aux_layers)


def lowres_sizes(bb: Any, quick: bool) -> list[int]:
    """The native size (the curve's 0 % point), then minus 4, 6, 8, ... patches down to half the
    native side (512: 512, 448, 416, 384, 352, 320, 288, 256). Hierarchical backbones (Swin):
    the sizes down to half the native side whose stage grids the windows tile
    (``stage_grids``; demo_swin, patch 8, window 8: 512 and 256 only)."""
    native, step = int(bb.input_size), 2 * int(bb.patch_size)
    if getattr(bb, "stage_ends", ()):
        step = int(bb.patch_size) << len(bb.stage_ends)
        sizes = [s for s in range(native, native // 2 - 1, -step) if bb.stage_grids(s) is not None]
    else:
        sizes = [native] + [native - step * i for i in range(2, 9) if native - step * i >= native // 2]
    return list(dict.fromkeys([sizes[1], sizes[-1]] if quick and len(sizes) > 2 else sizes))


def resized_input(bb: Any, size: int) -> Any:
    """The ``lowres`` baseline's backbone: a Swin's own re-sized copy, else :class:`ResizedInput`."""
    return bb.at_input_size(size) if hasattr(bb, "at_input_size") else ResizedInput(bb, size)


def stage_starts(bb: Any) -> tuple[int, ...]:
    """Hierarchical backbones: the first block of every stage but the last, where that block is
    not also the stage's last (demo_swin: 1, 3, 5). Pruning there lets the stage's remaining
    blocks run on the kept tokens; pruning at a stage's *end* saves little, since a merged token
    lives on when any of its four children does (random 50 % keeps 94 % of the next stage)."""
    ends = tuple(bb.stage_ends)
    starts = (1,) + tuple(e + 1 for e in ends[:-1])
    return tuple(s for s in starts if s not in ends and s < bb.num_blocks)


def method_refusal(bb: Any, method: str) -> str | None:
    """Why ``method`` cannot run on ``bb`` (None: it can), as the method itself says."""
    from .methods import get_method

    spec = get_method(method)
    return spec.unmet_need(bb.name, tuple(bb.aux_layers))


def build_suite(bb: Any, matp_bb: Any, matp_name: str, seeds: int, quick: bool) -> list[Curve]:
    """The v2 suite on ``bb`` (and MATP on its fine-tune ``matp_bb``). Grids come from the
    backbone's depth and heads; ``quick`` keeps two points per curve and one seed."""
    from .methods import matp

    nb = bb.num_blocks
    hier = bool(getattr(bb, "stage_ends", ()))
    if hier:  # Swin: exits / DToP / MATP at the aux heads; rate sweeps at each stage's first block
        stages = tuple(layer for layer in bb.aux_layers if layer < nb) or (max(1, nb // 4),)
        rate_layers = stage_starts(bb) or (1,)
    else:
        stages = stage_layers(bb) or (max(1, nb // 4),)
        rate_layers = stages[:1]
    first, mid = stages[0], max(1, nb // 2)
    seed_list = tuple(range(1 if quick else seeds))

    def pick(seq: tuple) -> tuple:
        return (seq[1], seq[-2]) if quick and len(seq) > 3 else seq

    def rate_points(layers: tuple[int, ...]) -> list[Point]:
        return [Point(layers, (("rate", r),)) for r in pick(RATES)]

    # LVTP keeps at least half of its first-pass clusters per step, so one layer cannot go past
    # ~-45 %: the knob that spans the range is the layer schedule (one middle layer .. every
    # other layer from block 2), with the rate / drop of each step.
    every_other = tuple(range(max(1, first - 1), nb, 2))[:4]
    lvtp = [
        Point((mid,), (("rate", 0.0),)), Point((mid,), (("rate", 0.8),)),
        Point((first,), (("rate", 0.3),)), Point((first,), (("rate", 0.9),)),
        Point(stages, (("rate", 0.6),)), Point(stages, (("drop", 0.5), ("second", "none"))),
        Point(every_other, (("rate", 0.6),)), Point(every_other, (("drop", 0.5), ("second", "none"))),
    ]
    if hier:
        # LVTP's Swin setting (first block of stage 2), then the first block of each stage, then
        # more blocks inside the stages (never a stage's last block but the deepest one), since one
        # LVTP step keeps at least half its first-pass clusters (demo_swin: about -50 % at most).
        s2 = rate_layers[1:2] or rate_layers[:1]
        inner = tuple(sorted({*rate_layers, *(layer for layer in range(rate_layers[-1], nb) if layer not in bb.stage_ends)}))[:5]
        dense = tuple(range(1, bb.stage_ends[-1] + 1))
        lvtp = [Point(s2, (("rate", 0.3),)), Point(s2, (("rate", 0.9),)), Point(rate_layers[:1], (("rate", 0.9),)),
                Point(rate_layers, (("rate", 0.6),)), Point(rate_layers, (("rate", 0.9),)),
                Point(inner, (("rate", 0.9),)), Point(inner, (("drop", 0.5), ("second", "none"))),
                Point(dense, (("drop", 0.5), ("second", "none")))]
    if hier:  # every aux head but one on the last block: the paper's 3 / 6 / 8 are ViT layers
        matp_layers = tuple(layer for layer in matp_bb.aux_layers if layer < nb) or stages
    else:
        matp_layers = tuple(layer for layer in matp.default_layers(nb) if layer in matp_bb.aux_layers) or stages
    # MATP's alpha at its paper's layers, plus its last one or two layers alone for small savings.
    matp_points = [Point(matp_layers[-1:], (("alpha", 1.2),)), Point(matp_layers[-2:], (("alpha", 1.2),))]
    matp_points = list(dict.fromkeys(matp_points)) + [Point(matp_layers, (("alpha", a),)) for a in MATP_ALPHAS]
    curves = [
        Curve("random", "random", bb.name, rate_points(rate_layers), seed_list, "rate"),
        Curve("evit", "evit", bb.name, rate_points(rate_layers), (0,), "rate"),
        Curve("tome", "tome", bb.name, rate_points(rate_layers), (0,), "rate"),
        Curve("lvtp", "lvtp", bb.name, [lvtp[1], lvtp[-1]] if quick else lvtp, (0,), "layers x rate/drop"),
        Curve("dtop", "dtop", bb.name, [Point(stages, (("threshold", t),)) for t in pick(DTOP_THRESHOLDS)], (0,), "threshold"),
        Curve("matp", "matp", matp_name, [matp_points[0], matp_points[-1]] if quick else matp_points, (0,), "layers x alpha"),
    ]
    if matp_name != bb.name:  # the MATP fine-tune pruned at random: separates MATP's criterion from its fine-tune
        curves.append(Curve(f"random@{matp_name}", "random", matp_name, rate_points(rate_layers), seed_list, "rate"))
    curves += [Curve(f"exit@{layer}", "exit", bb.name, [Point((layer,))], (0,), "layer") for layer in stages]
    curves.append(Curve("lowres", "lowres", bb.name, [Point(size=s) for s in lowres_sizes(bb, quick)], (0,), "input size"))
    return curves


@dataclass
class Measured:
    """Everything measured for one (curve, point): per seed and scene."""

    curve: Curve
    point: Point
    cms: np.ndarray  # R x S x K x K
    cms_edge: np.ndarray  # R x S x K x K (boundary region)
    macs: np.ndarray  # R x S total MACs
    decision_macs: np.ndarray  # R x S
    compute_s: float = 0.0  # wall seconds spent on this config's accuracy runs
    times_ms: list[float] = field(default_factory=list)


def job_of(m: Measured, bb: Any, seeds: tuple[int, ...]) -> tuple[Measured, Any, list[Any]]:
    """(measured, the backbone it runs on, one plan per seed) for one curve point; lowres runs the
    unpruned forward of the resized input, with no plan."""
    from .params import make_plan

    if m.curve.method == "lowres":
        return m, resized_input(bb, m.point.size), []
    return m, bb, [make_plan(bb, m.curve.method, m.point.layers, s, dict(m.point.values)) for s in seeds]


def run_suite(args: argparse.Namespace) -> tuple[list[Measured], dict[str, Measured], dict[str, Any]]:
    """Measure the suite. Returns (one Measured per curve point, reference Measured per
    backbone name (unpruned), run metadata)."""
    from tqdm import tqdm

    from .analysis import attention_layers
    from .backbones import build_backbone
    from .data import synthetic
    from .engine import run_baseline, run_pruned
    from .metrics import ConfusionMatrix, boundary_region

    if args.split not in synthetic.SPLIT_SEEDS:
        raise UserError(f"unknown split {args.split!r}; this data module offers {tuple(synthetic.SPLIT_SEEDS)}")
    # Accuracy runs use --compute-threads (1 by default: on a shared 2-core machine, 2 threads
    # were 4-5x slower than 1); latency is measured afterwards with --threads.
    torch.set_num_threads(args.compute_threads)
    bb = build_backbone(args.backbone, checkpoint=args.checkpoint)
    matp_bb = build_backbone(args.matp_backbone) if args.matp_backbone != args.backbone else bb
    if bb.num_classes == 0:
        raise UserError(f"the suite scores against the synthetic labels and needs a semantic backbone; {bb.name} has none")
    backbones = {args.backbone: bb, args.matp_backbone: matp_bb}
    curves = build_suite(bb, matp_bb, args.matp_backbone, args.seeds, args.quick)
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")}
        curves = [c for c in curves if c.name in wanted or c.method in wanted]
    # A method the backbone refuses (its own words: MethodSpec.unmet_need) is
    # left out and named in the outputs as "not applicable", never silently dropped.
    not_applicable = {}
    for c in curves:
        reason = None if c.method == "lowres" else method_refusal(backbones[c.backbone], c.method)
        if reason:
            not_applicable[c.name] = reason
    curves = [c for c in curves if c.name not in not_applicable]
    k = bb.num_classes
    n = args.n
    jobs: list[tuple[Measured, Any, list[Any]]] = []  # (measured, backbone, plan per seed)
    for c in curves:
        for p in c.points:
            shape = (len(c.seeds), n)
            m = Measured(c, p, np.zeros((*shape, k, k), np.int64), np.zeros((*shape, k, k), np.int64), np.zeros(shape), np.zeros(shape))
            jobs.append(job_of(m, backbones[c.backbone], c.seeds))
    refs = {name: Measured(Curve("none", "none", name, [Point()]), Point(), np.zeros((1, n, k, k), np.int64),
                           np.zeros((1, n, k, k), np.int64), np.zeros((1, n)), np.zeros((1, n))) for name in backbones}
    attn = {name: tuple(sorted({layer for m, b, plans in jobs if m.curve.backbone == name for pl in plans for layer in attention_layers(pl)}))
            for name in backbones}
    size = int(bb.input_size)
    t_start = time.time()
    for i in tqdm(range(n), desc=f"suite v2 {args.split}"):
        image, gt = synthetic.split_scene(args.split, i, size)
        edge = boundary_region(gt, 3)

        def score(m: Measured, r: int, labels: np.ndarray, macs: int, dmacs: int) -> None:
            cm, cme = ConfusionMatrix(k), ConfusionMatrix(k)
            cm.update(labels, gt)
            cme.update(labels, gt, region=edge)
            m.cms[r, i], m.cms_edge[r, i], m.macs[r, i], m.decision_macs[r, i] = cm.mat, cme.mat, macs, dmacs

        bases = {}
        for name, b in backbones.items():
            bases[name] = run_baseline(b, image, attn_layers=attn[name])
            score(refs[name], 0, bases[name].seg.labels, bases[name].macs, 0)
        for m, b, plans in jobs:
            t0 = time.perf_counter()
            if not plans:  # lowres: the unpruned forward of a smaller input
                base = run_baseline(b, image)
                score(m, 0, base.seg.labels, base.macs, 0)
            for r, plan in enumerate(plans):
                trace = run_pruned(b, image, plan, baseline=bases[m.curve.backbone], count_decisions=True)
                score(m, r, trace.seg.labels, trace.macs["total"], trace.macs["decision"])
            m.compute_s += time.perf_counter() - t0
    accuracy_s = time.time() - t_start
    time_configs(args, jobs, refs, backbones, synthetic, size)
    meta = {"split": args.split, "n": n, "backbone": args.backbone, "matp_backbone": args.matp_backbone,
            "seeds": args.seeds if not args.quick else 1, "threads": args.threads, "compute_threads": args.compute_threads, "time_runs": args.time_runs,
            "quick": bool(args.quick), "accuracy_s": round(accuracy_s, 1), "boot": args.boot,
            "not_applicable": not_applicable, "stage_ends": list(getattr(bb, "stage_ends", ())),
            "matp_note": "" if args.matp_backbone != args.backbone else f"no fine-tune: MATP runs on {args.backbone} itself"}
    return [m for m, _, _ in jobs], refs, meta


def time_configs(args: argparse.Namespace, jobs: list, refs: dict, backbones: dict, synthetic: Any, size: int) -> None:
    """Latency from scratch (no prefix cache, decisions not counted): ``args.time_runs`` runs per
    configuration (seed 0) on the first scenes in turn, after one warm-up. Runs are interleaved
    across configurations (run j of every config, then run j + 1) so that a change in machine
    load spreads over all of them instead of biasing the ones timed during it."""
    from .engine import run_baseline, run_pruned

    if args.time_runs <= 0:
        return
    images = [synthetic.split_scene(args.split, i, size)[0] for i in range(min(args.n, args.time_runs))]
    torch.set_num_threads(args.threads)
    timed: list[tuple[Measured, Any]] = []
    for name, b in backbones.items():
        timed.append((refs[name], lambda img, b=b: run_baseline(b, img)))
    for m, b, plans in jobs:
        if plans:
            timed.append((m, lambda img, b=b, plan=plans[0]: run_pruned(b, img, plan)))
        else:
            timed.append((m, lambda img, b=b: run_baseline(b, img)))
    for _, fn in timed:  # warm-up
        fn(images[0])
    for j in range(args.time_runs):
        for m, fn in timed:
            t0 = time.perf_counter()
            fn(images[j % len(images)])
            m.times_ms.append((time.perf_counter() - t0) * 1e3)


def retime(measured: list[Measured], refs: dict[str, Measured], meta: dict[str, Any], time_runs: int, threads: int,
           checkpoint: Any = None) -> None:
    """Latency for the configurations of an earlier run (``bench --suite v2 --from-raw DIR
    --retime``), so a long accuracy run can go on a busy machine and only the timing on a quiet
    one. Rebuilds each point's plan from its recorded (method, layers, values, size) with seed 0,
    as :func:`time_configs` does, and replaces the recorded ``times_ms``; accuracy is untouched."""
    from .backbones import build_backbone
    from .data import synthetic

    names = {meta["backbone"], meta["matp_backbone"]}
    backbones = {name: build_backbone(name, checkpoint=checkpoint if name == meta["backbone"] else None) for name in names}
    jobs = [job_of(m, backbones[m.curve.backbone], m.curve.seeds[:1]) for m in measured]
    for m in [*measured, *refs.values()]:
        m.times_ms = []
    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.time()
    args = argparse.Namespace(time_runs=time_runs, threads=threads, split=meta["split"], n=meta["n"])
    time_configs(args, jobs, refs, backbones, synthetic, int(backbones[meta["backbone"]].input_size))
    meta.update(time_runs=time_runs, threads=threads, retime_s=round(time.time() - t0, 1),
                retime_load_avg=load_before)


def save_raw(path: Any, measured: list[Measured], refs: dict[str, Measured], meta: dict[str, Any]) -> None:
    """Every per-scene measurement (``raw.npz`` + ``raw.json``), so tables and plots can be
    rebuilt (:func:`load_raw`) without measuring again."""
    import json
    from pathlib import Path

    path = Path(path)
    items = [(f"ref:{name}", m) for name, m in refs.items()] + [(f"m{j}", m) for j, m in enumerate(measured)]
    arrays = {f"{key}:{a}": getattr(m, a) for key, m in items for a in ("cms", "cms_edge", "macs", "decision_macs")}
    np.savez_compressed(path / "raw.npz", **arrays)
    index = [{"key": key, "curve": m.curve.name, "method": m.curve.method, "backbone": m.curve.backbone, "knob": m.curve.knob,
              "seeds": list(m.curve.seeds), "layers": list(m.point.layers), "values": [list(v) for v in m.point.values],
              "size": m.point.size, "compute_s": m.compute_s, "times_ms": m.times_ms} for key, m in items]
    (path / "raw.json").write_text(json.dumps({"meta": meta, "items": index}, indent=1, default=str))


def load_raw(path: Any) -> tuple[list[Measured], dict[str, Measured], dict[str, Any]]:
    """Inverse of :func:`save_raw`."""
    import json
    from pathlib import Path

    path = Path(path)
    info = json.loads((path / "raw.json").read_text())
    arrays = np.load(path / "raw.npz")
    measured, refs = [], {}
    for it in info["items"]:
        point = Point(tuple(it["layers"]), tuple(tuple(v) for v in it["values"]), it["size"])
        curve = Curve(it["curve"], it["method"], it["backbone"], [point], tuple(it["seeds"]), it["knob"])
        m = Measured(curve, point, *(arrays[f"{it['key']}:{a}"] for a in ("cms", "cms_edge", "macs", "decision_macs")),
                     compute_s=it["compute_s"], times_ms=list(it["times_ms"]))
        if it["key"].startswith("ref:"):
            refs[it["backbone"]] = m
        else:
            measured.append(m)
    return measured, refs, info["meta"]
