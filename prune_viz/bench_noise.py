"""``python -m prune_viz bench --noise ...``: pruning under input corruptions (issue 16, item 3).

    python -m prune_viz bench --noise gaussian,saltpepper,blur,jpeg,haze --split val --n 50 --out runs/noise

For every scene of the split, the clean image and each corruption at each level
(``data/corrupt.py``; ``--levels`` overrides every kind's levels) run through the unpruned model
and every method at its defaults (``matp`` on ``--matp-backbone``, as ``--suite`` pairs them).
Per method, kind and level:

- ``d_miou_unpruned`` / ``d_miou_pruned``: mIoU against the split's labels on the corrupted
  images minus the same model's on the clean ones, percentage points, with a paired 95 %
  bootstrap CI over scenes (``stats.py``: one table of draws for everything);
- ``mac_saving_pct``: MACs the pruned forward saves over the unpruned one (1 multiply-add =
  1 MAC; the decisions' own arithmetic is not counted here, ``bench`` plain/``--suite`` do);
- ``flip_pct``: **decision stability**, the share of grid tokens whose keep/prune decision
  differs from the same method's on the clean image. The decision is the *final alive set*: a
  token counts as kept when it reaches the last block (``Trace.drop_layer == num_blocks``), so
  for multi-layer methods (DToP, MATP) a token that leaves at layer 3 on one image and layer 6
  on the other does not flip; one that survives on one and not on the other does. Merged
  (ToMe) and exited (DToP, exit) tokens count as not kept. Mean over scenes, bootstrap CI;
- ``ood_score``: the unpruned model's out-of-domain score (``ood.py``), mean over scenes, and
  ``ood_flag_pct``, the share of scenes over the threshold.

Shards: ``--start S --n N`` runs scenes S..S+N-1; ``--merge DIR1,DIR2 --out DIR`` summarises
shards together (every run saves its measurements after each scene, so a stopped run still
counts). Writes ``DIR/noise.csv`` (one row per method x kind x level, level 0 = clean), ``DIR/noise.md``
(a table in the shape of MATP's noise table, then the details) and ``DIR/noise_raw.npz``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

DEFAULT_METHODS = "random,evit,lvtp,dtop,matp,tome,exit"


def add_noise_args(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group("robustness (--noise)")
    g.add_argument("--noise", default=None, help="corruptions to sweep, e.g. gaussian,saltpepper,blur,jpeg,haze (data/corrupt.py)")
    g.add_argument("--levels", default=None, help="levels for every --noise kind, comma-separated (default: each kind's four)")
    g.add_argument("--start", type=int, default=0, help="first scene index (to run shards of a split in parallel)")
    g.add_argument("--merge", default=None, help="comma-separated output folders of shards: summarise them together into --out")


def keep_mask(trace: Any) -> np.ndarray:
    """gh x gw bool: tokens that reach the last block (the final alive set)."""
    return np.asarray(trace.drop_layer) >= trace.num_blocks


def flip_share(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Share of tokens whose kept / not-kept decision differs between two runs (same grid)."""
    if clean.shape != noisy.shape:
        raise ValueError(f"decision grids differ: {clean.shape} vs {noisy.shape}")
    return float(np.mean(clean != noisy))


def representative(trace: Any) -> np.ndarray | None:
    """gh x gw int: grid position whose final feature each token is decoded with; None when the
    run merged nothing."""
    return None if trace.merged_into is None else np.asarray(trace.merged_into)


def variants(kinds: list[str], levels: list[float] | None) -> list[tuple[str, float]]:
    """(kind, level) pairs to run, the clean image first as ("clean", 0)."""
    from .data.corrupt import CORRUPTIONS

    unknown = [k for k in kinds if k not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown --noise kind {unknown[0]!r}; choose from {', '.join(CORRUPTIONS)}")
    out = [("clean", 0.0)]
    for k in kinds:
        out += [(k, float(v)) for v in (levels or CORRUPTIONS[k].levels)]
    return out


def run_noise(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch
    from tqdm import tqdm

    from .analysis import attention_layers
    from .backbones import build_backbone
    from .data import synthetic
    from .data.corrupt import corrupt
    from .engine import run_baseline, run_pruned
    from .metrics import ConfusionMatrix
    from .ood import is_out_of_domain, ood_score
    from .params import make_plan

    if args.split not in synthetic.SPLIT_SEEDS:
        raise UserError(f"unknown split {args.split!r}; this data module offers {tuple(synthetic.SPLIT_SEEDS)}")
    if args.n < 1 or args.start < 0:
        raise UserError("--n must be at least 1 and --start at least 0")
    torch.set_num_threads(args.compute_threads)
    kinds = [k.strip() for k in args.noise.split(",") if k.strip()]
    levels = [float(v) for v in args.levels.split(",")] if args.levels else None
    todo = variants(kinds, levels)
    methods = [m.strip() for m in (args.methods or DEFAULT_METHODS).split(",") if m.strip() and m.strip() != "none"]
    backbones: dict[str, Any] = {}
    jobs = []  # (method, backbone name, plan)
    for m in methods:
        name = args.matp_backbone if m == "matp" else args.backbone
        if name not in backbones:
            backbones[name] = build_backbone(name, checkpoint=args.checkpoint if name == args.backbone else None)
            if backbones[name].num_classes == 0:
                raise UserError(f"bench --noise scores against the synthetic labels and needs a semantic backbone; {name} has none")
        jobs.append((m, name, make_plan(backbones[name], m, None, args.seed, {})))
    attn = {name: tuple(sorted({la for _, bn, p in jobs if bn == name for la in attention_layers(p)})) for name in backbones}
    k = next(iter(backbones.values())).num_classes
    size = int(next(iter(backbones.values())).input_size)
    n, v, j = args.n, len(todo), len(jobs)
    ref_cms = {name: np.zeros((v, n, k, k), np.int64) for name in backbones}
    ood = {name: np.full((v, n), np.nan) for name in backbones}
    cms = np.zeros((j, v, n, k, k), np.int64)
    saving = np.zeros((j, v, n))
    flips = np.zeros((j, v, n))
    remerge = np.full((j, v, n), np.nan)
    meta = {"split": args.split, "n": n, "start": args.start, "backbone": args.backbone, "matp_backbone": args.matp_backbone,
            "compute_threads": args.compute_threads, "seed": args.seed, "boot": args.boot,
            "todo": todo, "jobs": [(m, name) for m, name, _ in jobs],
            "command": "python -m prune_viz " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None}
    t0 = time.time()
    for i in tqdm(range(n), desc=f"noise {args.split}"):
        clean, gt = synthetic.split_scene(args.split, args.start + i, size)
        kept_clean: list[np.ndarray] = []
        rep_clean: list[np.ndarray | None] = []
        for vi, (kind, level) in enumerate(todo):
            image = clean if kind == "clean" else corrupt(clean, kind, level, seed=args.seed * 1_000_003 + args.start + i)
            bases = {}
            for name, bb in backbones.items():
                bases[name] = run_baseline(bb, image, attn_layers=attn[name])
                cm = ConfusionMatrix(k)
                cm.update(bases[name].seg.labels, gt)
                ref_cms[name][vi, i] = cm.mat
                score = ood_score(bb, bases[name])
                ood[name][vi, i] = np.nan if score is None else score
            for ji, (_, name, plan) in enumerate(jobs):
                trace = run_pruned(backbones[name], image, plan, baseline=bases[name], diagnostics=False)
                cm = ConfusionMatrix(k)
                cm.update(trace.seg.labels, gt)
                cms[ji, vi, i] = cm.mat
                saving[ji, vi, i] = 100.0 * (1.0 - trace.macs["total"] / bases[name].macs)
                keep = keep_mask(trace)
                rep = representative(trace)
                if vi == 0:
                    kept_clean.append(keep)
                    rep_clean.append(rep)
                flips[ji, vi, i] = 100.0 * flip_share(kept_clean[ji], keep)
                if rep is not None or rep_clean[ji] is not None:
                    own = np.arange(keep.size).reshape(keep.shape)
                    remerge[ji, vi, i] = 100.0 * flip_share(own if rep_clean[ji] is None else rep_clean[ji], own if rep is None else rep)
        # After every scene: a run stopped early still leaves what it measured (``--merge``).
        meta["accuracy_s"] = round(time.time() - t0, 1)
        save_raw(args.out, meta, i + 1, {"cms": cms, "saving": saving, "flips": flips, "remerge": remerge,
                                          **{f"ref_cms:{nm}": a for nm, a in ref_cms.items()}, **{f"ood:{nm}": a for nm, a in ood.items()}})
    return rows_from_raw([args.out], args.boot)


def _scene_axis(key: str) -> int:
    return 1 if key.startswith(("ref_cms:", "ood:")) else 2


def save_raw(out: Path, meta: dict[str, Any], done: int, arrays: dict[str, np.ndarray]) -> None:
    """``out/noise_raw.npz`` with the first ``done`` scenes of every array and the run's meta."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    cut = {key: np.take(a, range(done), axis=_scene_axis(key)) for key, a in arrays.items()}
    tmp = out / "noise_raw.partial.npz"  # then renamed: a merge never reads a half-written file
    np.savez_compressed(tmp, meta=np.array(json.dumps({**meta, "done": done})), **cut)
    tmp.replace(out / "noise_raw.npz")


def rows_from_raw(dirs: list[Path], boot: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Summarise one run, or shards of one (same kinds, levels, methods; scenes concatenated
    in the order given)."""
    import json

    from .ood import is_out_of_domain

    parts = [np.load(Path(d) / "noise_raw.npz") for d in dirs]
    metas = [json.loads(str(p["meta"])) for p in parts]
    meta = dict(metas[0])
    if any((m["todo"], m["jobs"]) != (meta["todo"], meta["jobs"]) for m in metas):
        raise UserError("--merge: the shards ran different noise levels or methods")
    arrays = {key: np.concatenate([p[key] for p in parts], axis=_scene_axis(key)) for key in parts[0].files if key != "meta"}
    # A scene measured by two shards (one stopped after its neighbour started) counts once.
    index = [m["start"] + i for m in metas for i in range(m["done"])]
    first = sorted({sc: pos for pos, sc in reversed(list(enumerate(index)))}.items())
    keep = [pos for _, pos in first]
    arrays = {key: np.take(a, keep, axis=_scene_axis(key)) for key, a in arrays.items()}
    meta["n"] = len(keep)
    meta["scenes"] = [[m["start"], m["start"] + m["done"]] for m in metas]
    meta["accuracy_s"] = round(sum(m["accuracy_s"] for m in metas), 1)
    if len(dirs) > 1:
        meta["command"] = " ; ".join(m["command"] or "?" for m in metas)
    todo = [tuple(t) for t in meta["todo"]]
    jobs = [(m, name, None) for m, name in meta["jobs"]]
    names = dict.fromkeys(name for _, name in meta["jobs"])
    rows = summarise(todo, jobs, {nm: arrays[f"ref_cms:{nm}"] for nm in names}, {nm: arrays[f"ood:{nm}"] for nm in names},
                     arrays["cms"], arrays["saving"], arrays["flips"], arrays["remerge"], boot, is_out_of_domain)
    return rows, meta


def summarise(todo, jobs, ref_cms, ood, cms, saving, flips, remerge, boot: int, flag) -> list[dict[str, Any]]:
    """One row per method x (kind, level); paired bootstrap over scenes for every interval."""
    from .stats import miou_of_cms, percentile_ci, resample_counts

    n = cms.shape[2]
    counts = resample_counts(n, boot, seed=0).astype(np.float64)  # B x S

    def split_miou(c: np.ndarray) -> tuple[float, np.ndarray]:  # S x K x K -> point, B replicates
        return float(miou_of_cms(c.sum(0))), miou_of_cms(np.einsum("bs,skl->bkl", counts, c.astype(np.float64)))

    def pp(x: float) -> float:
        return round(100.0 * x, 2)

    rows = []
    for vi, (kind, level) in enumerate(todo):
        for ji, (method, name, _) in enumerate(jobs):
            u0, u0r = split_miou(ref_cms[name][0])
            u, ur = split_miou(ref_cms[name][vi])
            p0, p0r = split_miou(cms[ji, 0])
            p, pr = split_miou(cms[ji, vi])
            du_lo, du_hi = percentile_ci(ur - u0r)
            dp_lo, dp_hi = percentile_ci(pr - p0r)
            f = flips[ji, vi]
            f_lo, f_hi = percentile_ci(counts @ f / n)
            scores = ood[name][vi]
            rows.append({
                "noise": kind, "level": level, "method": method, "backbone": name,
                "miou_unpruned": round(u, 4), "d_miou_unpruned": pp(u - u0), "d_miou_unpruned_ci_low": pp(du_lo), "d_miou_unpruned_ci_high": pp(du_hi),
                "miou_pruned": round(p, 4), "d_miou_pruned": pp(p - p0), "d_miou_pruned_ci_low": pp(dp_lo), "d_miou_pruned_ci_high": pp(dp_hi),
                "pruning_gap": pp(p - u),
                "mac_saving_pct": round(float(saving[ji, vi].mean()), 2),
                "flip_pct": round(float(f.mean()), 2), "flip_ci_low": round(f_lo, 2), "flip_ci_high": round(f_hi, 2),
                "remerge_pct": None if np.all(np.isnan(remerge[ji, vi])) else round(float(np.nanmean(remerge[ji, vi])), 2),
                "ood_score": None if np.all(np.isnan(scores)) else round(float(np.nanmean(scores)), 4),
                "ood_flag_pct": round(100.0 * float(np.mean([flag(None if np.isnan(s) else float(s)) for s in scores])), 1),
            })
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """MATP's noise table shape (mIoU % per level, the unpruned model as "Baseline"), then the
    details per kind (deltas with CIs, MAC saving, flips)."""
    from .data.corrupt import CORRUPTIONS

    methods = list(dict.fromkeys((r["method"], r["backbone"]) for r in rows))
    clean = {(r["method"], r["backbone"]): r for r in rows if r["noise"] == "clean"}
    out = [f"Robustness to input corruptions: {meta['split']} split, {meta['n']} scenes, methods at their defaults.",
           "", f"Command: `{meta.get('command') or 'python -m prune_viz bench --noise ...'}`", "",
           "mIoU in %, against the synthetic labels; Δ in percentage points against the same model on the clean images, "
           "[95 % bootstrap CI over scenes]; MAC saving: pruned vs unpruned forward (1 MAC = 1 multiply-add, decision "
           "arithmetic not counted); flips: % of tokens whose final keep decision differs from the clean image's.", ""]
    out += stability_summary(rows) + [""]
    for kind in dict.fromkeys(r["noise"] for r in rows if r["noise"] != "clean"):
        kr = [r for r in rows if r["noise"] == kind]
        levels = list(dict.fromkeys(r["level"] for r in kr))
        c = CORRUPTIONS[kind]
        out += [f"### {c.label} ({c.unit})", "",
                "| method | backbone | clean | " + " | ".join(f"{lv:g}" for lv in levels) + " |",
                "|---|---|---|" + "---|" * len(levels)]
        for name in dict.fromkeys(b for _, b in methods):
            first = next(m for m, b in methods if b == name)
            vals = [clean[(first, name)]["miou_unpruned"]] + [next(r for r in kr if r["method"] == first and r["backbone"] == name and r["level"] == lv)["miou_unpruned"] for lv in levels]
            out.append(f"| unpruned | {name} | " + " | ".join(f"{100 * x:.2f}" for x in vals) + " |")
        for m, b in methods:
            vals = [clean[(m, b)]["miou_pruned"]] + [next(r for r in kr if r["method"] == m and r["backbone"] == b and r["level"] == lv)["miou_pruned"] for lv in levels]
            out.append(f"| +{m} | {b} | " + " | ".join(f"{100 * x:.2f}" for x in vals) + " |")
        out += ["", "| method | level | Δ mIoU unpruned | Δ mIoU pruned | pruned − unpruned | MAC saving % | flips % | re-merged % | OOD flagged % |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in kr:
            out.append(f"| {r['method']} | {r['level']:g} | {r['d_miou_unpruned']:+.2f} [{r['d_miou_unpruned_ci_low']:+.2f}, {r['d_miou_unpruned_ci_high']:+.2f}] | "
                       f"{r['d_miou_pruned']:+.2f} [{r['d_miou_pruned_ci_low']:+.2f}, {r['d_miou_pruned_ci_high']:+.2f}] | {r['pruning_gap']:+.2f} | "
                       f"{r['mac_saving_pct']:.1f} | {r['flip_pct']:.1f} [{r['flip_ci_low']:.1f}, {r['flip_ci_high']:.1f}] | "
                       f"{'—' if r['remerge_pct'] is None else format(r['remerge_pct'], '.1f')} | {r['ood_flag_pct']:.0f} |")
        out.append("")
    return "\n".join(out)


def stability_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per method, flips % at each kind's levels (mildest / ... / strongest), and
    Δ pruned − Δ unpruned at the strongest level (points; negative = pruning suffers more)."""
    kinds = list(dict.fromkeys(r["noise"] for r in rows if r["noise"] != "clean"))
    methods = list(dict.fromkeys((r["method"], r["backbone"]) for r in rows))
    out = ["### Decision stability: flips % per level (mildest / … / strongest)", "",
           "| method | " + " | ".join(kinds) + " | Δ pruned − Δ unpruned at the strongest level, points (negative: the pruned model suffers more) (" + ", ".join(kinds) + ") |",
           "|---|" + "---|" * (len(kinds) + 1)]
    for m, b in methods:
        cells, extra = [], []
        for kind in kinds:
            kr = [r for r in rows if r["noise"] == kind and r["method"] == m and r["backbone"] == b]
            cells.append(" / ".join(f"{r['flip_pct']:.1f}" for r in kr))
            extra.append(f"{kr[-1]['d_miou_pruned'] - kr[-1]['d_miou_unpruned']:+.2f}")
        out.append(f"| {m} ({b}) | " + " | ".join(cells) + " | " + ", ".join(extra) + " |")
    return out


def write_noise(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "noise.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "noise.md").write_text(markdown(rows, meta) + f"\nWall time of the measurement: {meta['accuracy_s']} s "
                                  f"({meta['compute_threads']} torch thread(s)).\n")


def cmd_noise(args: argparse.Namespace) -> int:
    if args.suite or args.sweep or args.set or args.layers:
        raise UserError("--noise runs every method at its defaults; --suite, --sweep, --set and --layers do not combine with it")
    if args.merge:
        rows, meta = rows_from_raw([Path(d) for d in args.merge.split(",") if d.strip()], args.boot)
    else:
        rows, meta = run_noise(args)
    write_noise(rows, meta, args.out)
    print((args.out / "noise.md").read_text())
    print(f"wrote {args.out}/noise.csv")
    return 0
