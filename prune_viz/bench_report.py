"""Tables, files and the plot of ``bench --suite v2`` (measurement lives in ``bench_suite.py``).

Files written to DIR:
  budgets.csv    one row per (method, budget): method, budget_pct, reached, miou, ci_low, ci_high,
                 latency_ms (the methods of issue 11; ``reached`` false and the rest empty where
                 no configuration spends that little)
  budgets.md     the same for every curve, with how each value was obtained and the paired
                 difference to random at the same budget (with its CI)
  curves.csv     one row per measured point (all curves, the unpruned references first)
  curves.json    the same, plus per-method AUC and budgets
  summary.md     the run, the references, budgets, AUC, the spread by scene layout kind, the points
  tradeoff.png   mIoU vs GMACs per method with 95 % CI bands
mIoU in [0, 1]; MACs per image, 1 multiply-add = 1 MAC, the method's decisions included; MAC
reductions are against the unpruned original model (``none`` on --backbone).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .bench_suite import Measured
from .stats import CurvePoint, area_under_curve, at_budget, median_iqr, percentile_ci, point_and_samples, resample_counts

BUDGET_COLUMNS = ["method", "budget_pct", "reached", "miou", "ci_low", "ci_high", "latency_ms", "note"]
BUDGET_METHODS = ("random", "evit", "tome", "lvtp", "dtop", "matp", "exit@3", "exit@6", "exit@9", "lowres")


def budget_methods(names: Any) -> list[str]:
    """The methods budgets.csv lists, in issue 11's order: the fixed names, with ``exit@L`` for
    whichever aux-head layers the backbone has (3, 6, 9 on the demo; 2, 4, 6, 8 on demo_swin)."""
    names = list(dict.fromkeys(names))
    exits = sorted((n for n in names if n.startswith("exit@") and n[5:].isdigit()), key=lambda n: int(n[5:]))
    head = [m for m in BUDGET_METHODS[:6] if m in names]
    return head + exits + [m for m in BUDGET_METHODS[9:] if m in names]


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def summarise(measured: list[Measured], refs: dict[str, Measured], meta: dict[str, Any], budgets: tuple[float, ...], level: float = 0.95) -> dict[str, Any]:
    """Point rows, curves (for interpolation) and budget values, all from one table of paired
    bootstrap draws over the scenes."""
    counts = resample_counts(meta["n"], meta["boot"], seed=0)
    ref_macs = float(refs[meta["backbone"]].macs.mean())
    ref_miou, _ = point_and_samples(refs[meta["backbone"]].cms, counts)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[CurvePoint]] = {}
    knobs: dict[str, str] = {}

    def row_of(m: Measured, name: str) -> tuple[dict[str, Any], CurvePoint]:
        miou, samples = point_and_samples(m.cms, counts)
        lo, hi = percentile_ci(samples, level)
        macs = float(m.macs.mean())
        red = 100.0 * (1.0 - macs / ref_macs)
        lat, iqr = median_iqr(m.times_ms)
        edge, _ = point_and_samples(m.cms_edge, counts[:1])
        row = {
            "method": name, "backbone": m.curve.backbone, "params": m.point.label(), "seeds": m.cms.shape[0],
            "miou": _r(miou), "ci_low": _r(lo), "ci_high": _r(hi), "delta_miou": _r(100.0 * (miou - ref_miou), 2),
            "gmacs": _r(macs / 1e9, 3), "delta_macs_pct": _r(-red, 2), "decision_gmacs": _r(float(m.decision_macs.mean()) / 1e9, 4),
            "boundary_miou": _r(edge), "latency_ms": _r(lat, 1), "latency_iqr_ms": _r(iqr, 1),
            "ms_per_scene": _r(1e3 * m.compute_s / max(1, m.cms.shape[1]), 1),
        }
        return row, CurvePoint(red, miou, samples, lat, m.point.label())

    for name, ref in refs.items():
        rows.append(row_of(ref, f"none@{name}" if name != meta["backbone"] else "none")[0])
    for m in measured:
        row, pt = row_of(m, m.curve.name)
        rows.append(row)
        curves.setdefault(m.curve.name, []).append(pt)
        knobs[m.curve.name] = m.curve.knob
    values = {name: [at_budget(pts, b, level) for b in budgets] for name, pts in curves.items()}
    backbone_of = {m.curve.name: m.curve.backbone for m in measured}
    table = []
    for name, bvs in values.items():
        # Random on the same weights: MATP against its own fine-tune pruned at random; that
        # random curve against random on the original model (what the fine-tune alone buys).
        same = f"random@{backbone_of[name]}"
        ref_name = same if same in values and name != same else "random"
        for j, bv in enumerate(bvs):
            rnd = values[ref_name][j] if ref_name in values else None
            diff = diff_lo = diff_hi = None
            if name != "random" and rnd is not None and rnd.reached and bv.reached:
                d = 100.0 * (bv.samples - rnd.samples)
                diff, (diff_lo, diff_hi) = 100.0 * (bv.miou - rnd.miou), percentile_ci(d, level)
            table.append({
                "method": name, "budget_pct": int(bv.budget) if float(bv.budget).is_integer() else bv.budget,
                "reached": bv.reached, "miou": _r(bv.miou), "ci_low": _r(bv.ci_low), "ci_high": _r(bv.ci_high),
                "latency_ms": _r(bv.latency_ms, 1), "how": bv.how, "vs_random_pts": _r(diff, 2),
                "vs_random_ci": None if diff is None else f"[{diff_lo:.2f}, {diff_hi:.2f}]",
                "random_ref": ref_name if name != "random" else None,
            })
    # AUC: a curve (>= 2 points) starts at its backbone's unpruned model (every knob at 0 is
    # that model), so a curve whose first point saves 12 % still covers -10 %.
    anchors = {}
    for name, ref in refs.items():
        miou, samples = point_and_samples(ref.cms, counts)
        anchors[name] = CurvePoint(0.0, miou, samples, label="unpruned")
    aucs = {name: {"knob": knobs[name], "points": len(pts), "covered_pct": [_r(min(p.reduction for p in pts), 1), _r(max(p.reduction for p in pts), 1)],
                   "auc_10_70": _r(area_under_curve(pts + [anchors[backbone_of[name]]]) if len(pts) > 1 else None)}
            for name, pts in curves.items()}
    return {"meta": meta, "ref_gmacs": ref_macs / 1e9, "ref_miou": ref_miou, "rows": rows, "budgets": table, "auc": aucs,
            "findings": findings(table, budgets)}


def budget_extremes(table: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """At one budget, among issue 11's methods (:func:`budget_methods`): the best and worst of
    those that reach it, random's row (or None), the spread in points, whether the best one's CI
    is clear of random's, and who cannot reach it. None where no method reaches the budget."""
    listed = set(budget_methods(r["method"] for r in table))
    rows = [r for r in table if r["budget_pct"] == budget and r["method"] in listed]
    reached = [r for r in rows if r["reached"]]
    if not reached:
        return None
    best, worst = max(reached, key=lambda r: r["miou"]), min(reached, key=lambda r: r["miou"])
    rnd = next((r for r in reached if r["method"] == "random"), None)
    return {"best": best, "worst": worst, "random": rnd, "reached": reached,
            "missing": [r["method"] for r in rows if not r["reached"]],
            "spread_pts": 100 * (best["miou"] - worst["miou"]),
            "clear": rnd is not None and best["ci_low"] > rnd["ci_high"]}


def scenes_subset(m: Measured, idx: np.ndarray) -> Measured:
    """The same measurements restricted to scenes ``idx`` (the scene axis is axis 1)."""
    return dataclasses.replace(m, cms=m.cms[:, idx], cms_edge=m.cms_edge[:, idx], macs=m.macs[:, idx],
                               decision_macs=m.decision_macs[:, idx])


def spread_on(measured: list[Measured], refs: dict[str, Measured], meta: dict[str, Any], idx: np.ndarray,
              budget: float) -> dict[str, Any] | None:
    """:func:`budget_extremes` at ``budget`` on scenes ``idx`` only (every curve re-interpolated
    on those scenes), plus the unpruned mIoU there. None where no method reaches the budget."""
    sub = summarise([scenes_subset(m, idx) for m in measured], {k: scenes_subset(v, idx) for k, v in refs.items()},
                    dict(meta, n=len(idx), budgets=(budget,)), (budget,))
    e = budget_extremes(sub["budgets"], budget)
    return None if e is None else {**e, "unpruned": sub["ref_miou"]}


def by_kind(measured: list[Measured], refs: dict[str, Measured], meta: dict[str, Any], budget: float,
            control: int = 30) -> list[dict[str, Any]]:
    """One row per layout kind of the run's scenes (``synthetic.split_kind``: the suite scores
    scenes 0..n-1 of its split), then all scenes: scenes, unpruned, random, best and worst method
    and their spread at ``budget`` on those scenes. ``control``
    random subsets of the same size give the spread's median and 10th / 90th percentile by chance
    alone (a best-minus-worst over few scenes is larger anyway): a kind separates the methods
    more than the split only where its spread clears that."""
    from .data.synthetic import split_kind

    n = int(meta["n"])
    kinds = np.array([split_kind(meta["split"], i) for i in range(n)])
    rng = np.random.default_rng(0)
    out = []
    for name, idx in [(k, np.flatnonzero(kinds == k)) for k in sorted(set(kinds.tolist()))] + [("all", np.arange(n))]:
        e = spread_on(measured, refs, meta, idx, budget)
        if e is None:
            continue
        row = {"kind": name, "scenes": len(idx), "unpruned": f"{e['unpruned']:.3f}",
               "random": f"{e['random']['miou']:.3f}" if e["random"] else None,
               "best": f"{e['best']['method']} {e['best']['miou']:.3f}", "worst": f"{e['worst']['method']} {e['worst']['miou']:.3f}",
               "spread_pts": _r(e["spread_pts"], 1), "random_subsets_pts": "—"}
        if control and len(idx) < n:
            draws = [spread_on(measured, refs, meta, np.sort(rng.choice(n, len(idx), replace=False)), budget) for _ in range(control)]
            sp = [d["spread_pts"] for d in draws if d is not None]
            if sp:
                row["random_subsets_pts"] = f"{np.median(sp):.1f} [{np.percentile(sp, 10):.1f}, {np.percentile(sp, 90):.1f}]"
        out.append(row)
    return out


def findings(table: list[dict[str, Any]], budgets: tuple[float, ...]) -> list[str]:
    """Per budget, in words: best and worst method of issue 11's list, their spread, and
    whether the best one's CI is clear of random's. Computed, never typed in."""
    out = []
    for b in budgets:
        e = budget_extremes(table, b)
        if e is None:
            out.append(f"-{b:g} % MACs: no method reaches it.")
            continue
        best, worst, rnd = e["best"], e["worst"], e["random"]
        text = (f"-{b:g} % MACs: best {best['method']} {best['miou']} [{best['ci_low']}, {best['ci_high']}], "
                f"worst {worst['method']} {worst['miou']}, spread {e['spread_pts']:.1f} points")
        if rnd is not None and best["method"] != "random":
            text += (f"; random {rnd['miou']} [{rnd['ci_low']}, {rnd['ci_high']}]: the best method's CI "
                     + ("does not overlap random's" if e["clear"] else "overlaps random's")
                     + f" (paired difference {best['vs_random_pts']} points, CI {best['vs_random_ci']})")
        beat = [r["method"] for r in e["reached"] if r["method"] != "random" and r["vs_random_ci"] and float(r["vs_random_ci"][1:].split(",")[0]) > 0]
        text += f"; beating random (paired CI above 0): {', '.join(beat) or 'none'}"
        if e["missing"]:
            text += f"; unreachable: {', '.join(e['missing'])}"
        out.append(text + ".")
    return out


def write_suite(summary: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, budgets = summary["rows"], summary["budgets"]
    meta = summary["meta"]
    na = meta.get("not_applicable") or {}
    notes = {"matp": meta.get("matp_note") or ""}
    with open(out / "budgets.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BUDGET_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for name in budget_methods([*(b["method"] for b in budgets), *na]):
            if name in na:  # refused by the method/backbone: one row per budget, saying why
                for pct in meta.get("budgets", ()):
                    w.writerow({"method": name, "budget_pct": int(pct) if float(pct).is_integer() else pct, "reached": "false",
                                "note": f"not applicable: {na[name]}"})
                continue
            for b in (b for b in budgets if b["method"] == name):
                row = {**b, "reached": str(b["reached"]).lower(), "note": notes.get(name, "")}
                w.writerow(row | ({} if b["reached"] else {k: "" for k in BUDGET_COLUMNS[3:-1]}))
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    keys = ("meta", "ref_gmacs", "ref_miou", "rows", "budgets", "auc", "findings", "by_kind", "by_kind_budget")
    (out / "curves.json").write_text(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1, default=str))
    head = (f"Suite v2, {meta['split']} split, {meta['n']} scenes, backbone {meta['backbone']} (MATP on {meta['matp_backbone']}); "
            f"{meta['seeds']} seed(s) for stochastic methods; 95 % bootstrap CI over scenes ({meta['boot']} draws); latency: median "
            f"(IQR) of {meta['time_runs']} interleaved runs, {meta['threads']} threads; measured in {meta.get('wall_s', '?')} s.\n\n`{command}`"
            + (f" (tables rebuilt from `{meta['rebuilt_from']}`)" if meta.get("rebuilt_from") else "")
            + (f"; latency timed afterwards by `{meta['retime_command']}` in {meta.get('retime_s', '?')} s at load "
               f"{meta.get('retime_load_avg', ['?'])[0]}" if meta.get("retime_command") else "") + "\n\n"
            "MACs per image (1 multiply-add = 1 MAC), decisions included; reductions against the unpruned original model.\n"
            + (f"\nMATP: {meta['matp_note']}.\n" if meta.get("matp_note") else "")
            + "".join(f"\n- {name}: not applicable: {why}" for name, why in na.items()) + ("\n" if na else ""))
    budget_md = md_table(budgets, ["method", "budget_pct", "reached", "miou", "ci_low", "ci_high", "vs_random_pts", "vs_random_ci", "random_ref", "latency_ms", "how"])
    (out / "budgets.md").write_text(head + "\n" + budget_md + "\n")
    auc_rows = [{"method": k, **v, "covered_pct": f"{-v['covered_pct'][0]:+.1f} .. {-v['covered_pct'][1]:+.1f}"} for k, v in summary["auc"].items()]
    cols = ["method", "backbone", "params", "seeds", "miou", "ci_low", "ci_high", "delta_miou", "gmacs", "delta_macs_pct",
            "decision_gmacs", "boundary_miou", "latency_ms", "latency_iqr_ms", "ms_per_scene"]
    (out / "summary.md").write_text(
        head + "\n## Findings (computed)\n\n" + "\n".join(f"- {t}" for t in summary["findings"])
        + f"\n\n## mIoU at MAC budgets\n\n{budget_md}\n\n## Area under the curve (mean mIoU over -10 .. -70 % MACs)\n\n"
        + md_table(auc_rows, ["method", "knob", "points", "covered_pct", "auc_10_70"])
        + by_kind_section(summary)
        + "\n\n## Every point\n\n" + md_table(rows, cols) + "\n"
    )
    plot_curves(rows, summary, out / "tradeoff.png")


def by_kind_section(summary: dict[str, Any]) -> str:
    """summary.md's section on :func:`by_kind` ("" when the run has none)."""
    rows = summary.get("by_kind")
    if not rows:
        return ""
    return (f"\n\n## By scene layout kind, at -{summary['by_kind_budget']:g} % MACs (exploratory)\n\n"
            "Each kind's scenes alone, every curve re-interpolated on them; the last column is the spread on "
            "random subsets of the same size, median [10th, 90th percentile], for what chance alone gives. "
            "Few scenes per kind: a guide to where methods differ, not the benchmark's bar.\n\n"
            + md_table(rows, ["kind", "scenes", "unpruned", "random", "best", "worst", "spread_pts", "random_subsets_pts"]))


def md_table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("—" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """mIoU vs GMACs, one line per method with its 95 % CI as a band (error bars for a single
    point), the unpruned model as a star, the budgets as dotted verticals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=130)
    names = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab20")
    for j, name in enumerate(names):
        pts = sorted((r for r in rows if r["method"] == name), key=lambda r: r["gmacs"])
        x = np.array([r["gmacs"] for r in pts])
        y, lo, hi = (np.array([r[c] for r in pts], dtype=float) for c in ("miou", "ci_low", "ci_high"))
        colour = cmap((2 * j) % 20 + (2 * j) // 20 % 2)  # the dark shades first: neighbours differ
        if name.startswith("none"):
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="*", ms=12, color=colour, label=name)
        elif len(pts) == 1:
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="s", ms=6, capsize=3, color=colour, label=name)
        else:
            ax.plot(x, y, marker="o", ms=3, lw=1.3, color=colour, label=name, ls="--" if "@" in name else "-")
            ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0)
    ref = summary["ref_gmacs"]
    for b in summary["meta"].get("budgets", ()):
        ax.axvline(ref * (1 - b / 100.0), color="grey", ls=":", lw=0.8)
    ax.set_xlabel("GMACs per image (1 MAC = 1 multiply-add; decisions included)")
    ax.set_ylabel("mIoU (95 % bootstrap CI over scenes)")
    ax.set_title(f"{summary['meta']['split']} split, {summary['meta']['n']} scenes; dotted: -30/-50/-70 % MACs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
