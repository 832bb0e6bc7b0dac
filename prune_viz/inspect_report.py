"""What ``inspect`` writes: ``inspect.csv`` (one row per image, ranked worst first, skipped
files last with the reason) and ``index.html`` (self-contained: inline styles, no scripts, no
network; the gallery's PNGs in ``cases/`` next to it)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from .inspect_set import SetReport

GALLERY = (("tokens", "token map (last pruning layer)"), ("change", "changed pixels (vermillion)"),
           ("error", "vs ground truth: vermillion worse, green better, blue wrong in both"),
           ("attribution", "attribution: changed pixels vermillion, tested token groups yellow (stronger = larger share), "
                           "the statement's tokens outlined"))
TABLE_COLUMNS = ["rank", "image", "saved_pct", "agreement_miou", "boundary_f", "miou", "miou_unpruned",
                 "changed_pct", "ood_score", "worst_class", "worst_class_loss", "note"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td.l,th.l{text-align:left}tr:nth-child(even){background:#f6f6f6}
.case{display:inline-block;vertical-align:top;margin:0 12px 18px 0;border:1px solid #ddd;padding:6px}
.case img{width:200px;image-rendering:pixelated;margin-right:4px}.case figure{display:inline-block;vertical-align:top;margin:0}
figcaption{font-size:11px;max-width:200px}.meta{font-size:14px}code{background:#eee;padding:0 3px}"""


def case_file(rank: int, name: str, kind: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).stem)[:60]
    return f"cases/{rank:04d}_{safe}_{kind}.png"


def write_csv(report: SetReport, path: Path) -> Path:
    cols = report.columns
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for row in report.rows:
            w.writerow({c: row.get(c, "") for c in cols})
    return path


def write_cases(report: SetReport, out: Path) -> dict[tuple[int, str], str]:
    """The worst cases' PNGs under ``out/cases``; (rank, kind) -> relative path."""
    (out / "cases").mkdir(parents=True, exist_ok=True)
    written = {}
    for case in report.cases:
        rank = int(case.row["rank"])
        for kind, data in case.pngs.items():
            rel = case_file(rank, case.row["image"], kind)
            (out / rel).write_bytes(data)
            written[(rank, kind)] = rel
    return written


def _cell(col: str, value: Any) -> str:
    cls = ' class="l"' if col in ("image", "note", "worst_class") else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


def write_html(report: SetReport, out: Path, command: str | None = None, extra_html: str = "") -> Path:
    """``out/index.html`` (and the gallery PNGs); returns its path."""
    files = write_cases(report, out)
    m = report.meta
    head = (f"<h1>prune_viz inspect: {m['images']} images, {html.escape(m['method'])} on "
            f"{html.escape(m['backbone'])}</h1>")
    weights = "" if m.get("weights") in (None, "", "pretrained") else f" · weights: <b>{html.escape(str(m['weights']))}</b>"
    meta = (f"<p class='meta'>Layers {m['layers']}, parameters <code>{html.escape(json.dumps(m['params']))}</code>, "
            f"seed {m['seed']}{weights}.<br>{m['images']} images scored ({m['with_mask']} with a ground-truth mask), "
            f"{m['skipped']} skipped. Mean MAC saving {m['mean_saved_pct']} %, mean agreement mIoU "
            f"{m['mean_agreement_miou']}.<br><b>Ranking:</b> {html.escape(m['ranking'])}. "
            "<code>miou</code> is against ground truth and empty without a mask; <code>ood_score</code> "
            + f"is the unpruned model's mean normalised token entropy (<code>prune_viz.ood</code>; above "
            f"{m['ood_threshold']} the demo model is likely out of its domain: damage there may be model failure, not "
            "pruning's); empty where the backbone has no class scores.</p>")
    if m.get("stopped"):
        meta += f"<p class='meta'><b>Incomplete:</b> {html.escape(m['stopped'])}.</p>"
    if command:
        meta += f"<p class='meta'>Command: <code>{html.escape(command)}</code></p>"
    gallery = ["<h2>Worst cases</h2>"]
    for case in report.cases:
        r = case.row
        figs = "".join(
            f"<figure><img src='{files[(int(r['rank']), kind)]}' alt='{kind}'><figcaption>{html.escape(cap)}</figcaption></figure>"
            for kind, cap in GALLERY if (int(r["rank"]), kind) in files)
        gallery.append(f"<div class='case'><b>#{r['rank']} {html.escape(r['image'])}</b>: agreement mIoU "
                       f"{r['agreement_miou']}, boundary F {r['boundary_f']}, saved {r['saved_pct']} %"
                       f"{', mIoU ' + str(r['miou']) if r['miou'] != '' else ''}<br>{figs}"
                       + (f"<p style='max-width:840px;font-size:13px'>{html.escape(case.attribution)}</p>" if case.attribution else "")
                       + "</div>")
    cols = TABLE_COLUMNS
    rows = ["<tr>" + "".join(_cell(c, row.get(c, "")) for c in cols) + "</tr>" for row in report.rows]
    table = ("<h2>All images (inspect.csv has the per-class columns)</h2><table><tr>"
             + "".join(f"<th{' class=l' if c in ('image', 'note') else ''}>{c}</th>" for c in cols) + "</tr>"
             + "".join(rows) + "</table>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>prune_viz inspect</title><style>{_STYLE}</style>"
            f"</head><body>{head}{meta}{''.join(gallery)}{extra_html}{table}</body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path
