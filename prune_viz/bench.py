"""``python -m prune_viz bench``: methods x parameter sweeps on a split of the synthetic scenes.

    python -m prune_viz bench --backbone demo --methods none,random,lvtp --split val --n 100 --out runs/bench
    python -m prune_viz bench --methods lvtp --sweep rate=0,0.2,0.4,0.6,0.8 --out runs/lvtp_rate

Writes ``DIR/results.csv`` (one row per configuration, the columns below plus per-class IoU and
boundary-region mIoU), ``DIR/results.md``, ``DIR/tradeoff.png`` and ``DIR/tradeoff.html``.
mIoU is in [0, 1] and accumulated over the split, with a 95 % bootstrap CI over scenes
(``miou_ci_low`` / ``miou_ci_high``, ``stats.py``); ``delta_miou`` is in percentage points and
``delta_macs_pct`` in percent, both against ``none`` (negative = fewer / worse); gamma is LVTP's
Eq. 11 (None when mIoU did not drop). MACs are per image (1 multiply-add = 1 MAC), averaged, and
include each decision's own arithmetic (``decision_macs``, measured with the FLOP counter).
LVTP rows also carry the statistics of Eq. 4's alpha at the first pruning layer (``alpha_*``).
Every scene's unpruned forward is computed once and reused as the prefix cache for all configs.

``--suite v2`` runs the curve benchmark instead (``bench_suite.py``, ``bench_report.py``);
``--noise KINDS`` the robustness sweep (``bench_noise.py``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import UserError

COLUMNS = ["backbone", "method", "params", "miou", "miou_ci_low", "miou_ci_high", "macs", "decision_macs", "delta_miou", "delta_macs_pct", "gamma", "latency_ms"]


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="methods x sweeps on the synthetic val/test split -> results.csv + plots")
    b.add_argument("--backbone", default="demo")
    b.add_argument("--checkpoint", default=None)
    b.add_argument("--methods", default=None, help="comma-separated, e.g. none,random,evit,lvtp (default none; with --suite: a subset of the suite's curves)")
    b.add_argument("--split", default="val", help="a split of the synthetic data module (val, test, and shift where offered)")
    b.add_argument("--n", type=int, default=100)
    b.add_argument("--layers", default=None, help="pruning layers for every method (default: each method's/backbone's)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed method parameter (repeatable)")
    b.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="sweep a parameter (repeatable; cartesian). Use layers=6;3,6 to sweep layer sets")
    b.add_argument("--budgets", default="", help="also pick, per method, the swept row closest to these MAC reductions, e.g. 50,70")
    b.add_argument("--time-scenes", type=int, default=5, help="scenes timed from scratch for latency (median)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--boot", type=int, default=1000, help="bootstrap draws over scenes for the 95%% CIs")
    s = b.add_argument_group("curve suite (--suite v2)")
    s.add_argument("--suite", choices=["v2"], default=None, help="sweep every method as a curve: budgets.csv, curves, tradeoff.png")
    s.add_argument("--seeds", type=int, default=3, help="seeds for stochastic methods (random)")
    s.add_argument("--quick", action="store_true", help="smoke run: two points per curve, one seed")
    s.add_argument("--time-runs", type=int, default=5, help="timed runs per configuration (median, IQR); 0 = no latency")
    s.add_argument("--threads", type=int, default=2, help="torch threads for the latency runs")
    s.add_argument("--compute-threads", type=int, default=1, help="torch threads for the accuracy runs")
    s.add_argument("--matp-backbone", default=None, help="the MATP fine-tune that matp runs on (default: demo_matp for demo; else the backbone itself, no fine-tune)")
    s.add_argument("--from-raw", type=Path, default=None, help="rebuild tables and plots from DIR/raw.npz of an earlier suite run")
    s.add_argument("--retime", action="store_true",
                   help="with --from-raw: time that run's configurations now (--time-runs, --threads; on a quiet machine) and keep its accuracy")
    from .bench_noise import add_noise_args

    add_noise_args(b)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: list[str], sweep: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"expected KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key == "layers":
            # layer sets separated by ';' (each set comma-separated)
            out[key] = [tuple(int(v) for v in s.split(",")) for s in value.split(";")] if sweep else [tuple(int(v) for v in value.split(","))]
        else:
            out[key] = [_parse_value(v) for v in value.split(",")] if sweep else [_parse_value(value)]
    return out


@dataclass
class Config:
    method: str
    layers: tuple[int, ...] | None
    values: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None  # None = the bench's --backbone

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.values.items())]
        if self.layers:
            parts.append("layers=" + ",".join(map(str, self.layers)))
        return ";".join(parts)


def expand_configs(methods: list[str], fixed: dict[str, list[Any]], sweep: dict[str, list[Any]], layers: tuple[int, ...] | None) -> list[Config]:
    """``none`` once (the reference), every other method x the sweep's cartesian product.
    A method written ``name@backbone`` runs on that backbone (e.g. ``matp@demo_matp``)."""
    from .params import method_values

    configs = [Config("none", layers, {})]
    seen = set()
    keys = list(sweep)
    for entry in methods:
        method, _, backbone = entry.partition("@")
        if method == "none" and not backbone:
            continue
        for combo in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
            values = {k: v[0] for k, v in fixed.items() if k != "layers"}
            values.update({k: v for k, v in zip(keys, combo) if k != "layers"})
            values = method_values(method, values)  # a method ignores knobs it does not have
            lay = dict(zip(keys, combo)).get("layers", fixed.get("layers", [layers])[0])
            key = (method, backbone, tuple(sorted(values.items())), lay)
            if key not in seen:
                seen.add(key)
                configs.append(Config(method, lay, values, backbone or None))
    return configs


def count_params_m(backbone) -> float:
    """Parameters of everything the backbone holds (heads included), in millions."""
    return backbone.num_params() / 1e6  # the adapter's own count: every family, Swin included


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .analysis import attention_layers, median_ms
    from .backbones import build_backbone
    from .data import synthetic
    from .engine import run_baseline, run_pruned
    from .metrics import ConfusionMatrix, boundary_region, gamma
    from .params import make_plan, parse_layers

    from .stats import percentile_ci, point_and_samples, resample_counts

    if args.split not in synthetic.SPLIT_SEEDS:
        raise UserError(f"unknown split {args.split!r}; this data module offers {tuple(synthetic.SPLIT_SEEDS)}")
    methods = [m.strip() for m in (args.methods or "none").split(",") if m.strip()]
    configs = expand_configs(methods, parse_assignments(args.set, False), parse_assignments(args.sweep, True), parse_layers(args.layers))
    backbones = {}
    for cfg in configs:
        name = cfg.backbone or args.backbone
        if name not in backbones:
            backbones[name] = build_backbone(name, checkpoint=args.checkpoint if name == args.backbone else None)
            if backbones[name].num_classes == 0:
                raise UserError(f"bench scores against the synthetic labels and needs a semantic backbone; {name} has none")
    plans = [make_plan(backbones[c.backbone or args.backbone], c.method, c.layers, args.seed, c.values) for c in configs]
    first = backbones[args.backbone]
    k = first.num_classes
    cms = [ConfusionMatrix(k) for _ in plans]
    cms_edge = [ConfusionMatrix(k) for _ in plans]
    scene_cms = np.zeros((len(plans), args.n, k, k), np.int64)  # per scene, for the bootstrap
    macs: list[list[int]] = [[] for _ in plans]
    decision: list[list[int]] = [[] for _ in plans]
    alphas: list[list[np.ndarray]] = [[] for _ in plans]
    times: list[list[float]] = [[] for _ in plans]
    size = getattr(getattr(first, "cfg", None), "img_size", 512)
    for i in tqdm(range(args.n), desc=f"bench {args.split}"):
        image, gt = synthetic.split_scene(args.split, i, size)
        edge = boundary_region(gt, 3)
        bases = {}
        for name, bb in backbones.items():
            attn = tuple(sorted({lay for c, p in zip(configs, plans) if (c.backbone or args.backbone) == name for lay in attention_layers(p)}))
            bases[name] = run_baseline(bb, image, attn_layers=attn)
        for j, (cfg, plan) in enumerate(zip(configs, plans)):
            name = cfg.backbone or args.backbone
            bb, base = backbones[name], bases[name]
            dmacs = 0
            if plan.method.name == "none":
                labels, total = base.seg.labels, base.macs
                timed = lambda: run_baseline(bb, image)  # noqa: E731
            else:
                trace = run_pruned(bb, image, plan, baseline=base, count_decisions=True)
                labels, total, dmacs = trace.seg.labels, trace.macs["total"], trace.macs["decision"]
                timed = lambda: run_pruned(bb, image, plan)  # noqa: E731
                alpha = trace.steps[0].diagnostics.get("alpha") if trace.steps else None
                if isinstance(alpha, np.ndarray):
                    alphas[j].append(alpha[np.isfinite(alpha)])
            decision[j].append(dmacs)
            one = ConfusionMatrix(k)
            one.update(labels, gt)
            scene_cms[j, i] = one.mat
            cms[j].update(labels, gt)
            cms_edge[j].update(labels, gt, region=edge)
            macs[j].append(total)
            if i < args.time_scenes:
                times[j].append(median_ms(timed, 1))
    rows = []
    ref_miou, ref_macs = cms[0].miou(), float(np.mean(macs[0]))
    names = getattr(first, "cfg").classes if hasattr(first, "cfg") else [str(c) for c in range(k)]
    counts = resample_counts(args.n, args.boot, seed=0)
    for j, (cfg, cm, cme, m, t) in enumerate(zip(configs, cms, cms_edge, macs, times)):
        mi, mac = cm.miou(), float(np.mean(m))
        lo, hi = percentile_ci(point_and_samples(scene_cms[j][None], counts)[1])
        d_miou = 100.0 * (mi - ref_miou)
        d_macs = 100.0 * (mac - ref_macs) / ref_macs
        row = {
            "backbone": cfg.backbone or args.backbone,
            "method": cfg.method,
            "params": cfg.label(),
            "miou": round(mi, 4),
            "miou_ci_low": round(lo, 4),
            "miou_ci_high": round(hi, 4),
            "macs": int(mac),
            "decision_macs": int(np.mean(decision[j])),
            "delta_miou": round(d_miou, 2),
            "delta_macs_pct": round(d_macs, 2),
            "gamma": None if cfg.method == "none" else _round(gamma(d_macs, d_miou)),
            "latency_ms": round(statistics.median(t), 1) if t else None,
            "boundary_miou": round(cme.miou(), 4),
            "params_m": round(count_params_m(backbones[cfg.backbone or args.backbone]), 2),
        }
        row.update({f"iou_{c}": round(float(v), 4) for c, v in zip(names, cm.iou())})
        row.update(alpha_stats(alphas[j]))
        rows.append(row)
    return rows


def alpha_stats(per_scene: list[np.ndarray]) -> dict[str, float | None]:
    """Eq. 4's alpha over every alive token at the first pruning layer of every scene: mean, 5th and
    95th percentile, and the share at exactly 1 (saturated: the literal form's clamp)."""
    if not per_scene:
        return {"alpha_mean": None, "alpha_p5": None, "alpha_p95": None, "alpha_sat": None}
    a = np.concatenate(per_scene)
    p5, p95 = np.percentile(a, [5, 95])
    return {"alpha_mean": round(float(a.mean()), 4), "alpha_p5": round(float(p5), 4), "alpha_p95": round(float(p95), 4),
            "alpha_sat": round(float(np.mean(a >= 1.0)), 4)}


def matched_budgets(rows: list[dict[str, Any]], budgets: list[float]) -> list[dict[str, Any]]:
    """Per method and budget (e.g. 50 = 50% fewer MACs), the swept row closest to it."""
    out = []
    for budget in budgets:
        for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
            cands = [r for r in rows if r["method"] == method]
            best = min(cands, key=lambda r: abs(r["delta_macs_pct"] + budget))
            out.append({**best, "budget": f"-{budget:g}%"})
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def write_results(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(f"{title}\n\nMACs per image (1 multiply-add = 1 MAC).\n\n" + markdown_table(rows) + "\n")
    plot_tradeoff(rows, out)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = [h for h in ("budget", "method", "backbone", "params", "params_m", "miou", "miou_ci_low", "miou_ci_high", "delta_miou", "macs", "decision_macs", "delta_macs_pct", "gamma", "boundary_miou", "latency_ms", "alpha_mean", "alpha_sat") if h in rows[0]]
    lines = ["| " + " | ".join("GMACs" if h == "macs" else h for h in header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r[h] / 1e9:.3f}" if h == "macs" else f"{r[h] / 1e6:.2f}M" if h == "decision_macs" else ("—" if r[h] is None else str(r[h])) for h in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict[str, Any]], out: Path) -> None:
    """mIoU vs GMACs, one curve per method: PNG (matplotlib) and interactive HTML (plotly)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    pfig = go.Figure()
    for m in methods:
        pts = sorted((r["macs"] / 1e9, r["miou"], r["params"]) for r in rows if r["method"] == m)
        xs, ys, labels = zip(*pts)
        ax.plot(xs, ys, marker="o", label=m)
        pfig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=m, text=labels))
    ax.set_xlabel("GMACs per image (1 MAC = 1 multiply-add)")
    ax.set_ylabel("mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png")
    plt.close(fig)
    pfig.update_layout(xaxis_title="GMACs per image", yaxis_title="mIoU", template="plotly_white")
    pfig.write_html(out / "tradeoff.html", include_plotlyjs=True)


def cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "matp_backbone", "") is None:
        from .bench_suite import default_matp_backbone

        args.matp_backbone = default_matp_backbone(args.backbone)
    if getattr(args, "noise", None) or getattr(args, "merge", None):
        from .bench_noise import cmd_noise

        return cmd_noise(args)
    if args.suite:
        return cmd_suite(args)
    t0 = time.time()
    rows = run_bench(args)
    title = f"Bench: {rows[0]['backbone']}, {args.split} split, {args.n} scenes"
    write_results(rows, args.out, title)
    if args.budgets:
        matched = matched_budgets(rows, [float(b) for b in args.budgets.split(",")])
        (args.out / "results_budget.md").write_text(
            f"{title}: per method, the configuration closest to each MAC budget\n\n" + markdown_table(matched) + "\n"
        )
        print((args.out / "results_budget.md").read_text())
    (args.out / "bench_args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.csv in {time.time() - t0:.0f} s")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    """``bench --suite v2``: measure every curve, then write budgets.csv, curves, plot, tables."""
    import sys

    from .bench_report import by_kind, summarise, write_suite
    from .bench_suite import BUDGETS, load_raw, retime, run_suite, save_raw

    if args.sweep or args.set or args.layers:
        raise UserError("--suite sweeps its own grids (bench_suite.py); --sweep, --set and --layers belong to the plain bench")
    t0 = time.time()
    budgets = tuple(float(b) for b in args.budgets.split(",")) if args.budgets else BUDGETS
    if args.retime and not (args.from_raw and args.time_runs > 0):
        raise UserError("--retime times the configurations of an earlier run: give --from-raw DIR and --time-runs >= 1")
    if args.from_raw:  # rebuild the tables from an earlier run's measurements
        measured, refs, meta = load_raw(args.from_raw)
        meta["boot"] = args.boot
        if args.retime:
            retime(measured, refs, meta, args.time_runs, args.threads, args.checkpoint)
            meta["retime_command"] = "python -m prune_viz " + " ".join(sys.argv[1:])
            args.out.mkdir(parents=True, exist_ok=True)
            save_raw(args.out, measured, refs, meta)
    else:
        measured, refs, meta = run_suite(args)
        meta["wall_s"] = round(time.time() - t0, 1)
        meta["command"] = "python -m prune_viz " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
        args.out.mkdir(parents=True, exist_ok=True)
        save_raw(args.out, measured, refs, meta)
    meta["budgets"] = budgets
    summary = summarise(measured, refs, meta, budgets)
    # Where the methods differ: the spread at the middle budget on each layout kind's scenes.
    summary["by_kind_budget"] = budgets[len(budgets) // 2]
    summary["by_kind"] = by_kind(measured, refs, meta, summary["by_kind_budget"])
    command = meta.get("command") or "python -m prune_viz bench --suite v2 ..."
    if args.from_raw:
        meta["rebuilt_from"] = str(args.from_raw / "raw.npz")
    write_suite(summary, args.out, command)
    (args.out / "bench_args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    print((args.out / "budgets.md").read_text())
    print(f"wrote {args.out}/budgets.csv in {time.time() - t0:.0f} s")
    return 0
