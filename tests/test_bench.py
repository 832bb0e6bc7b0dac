"""bench: rows, deltas against `none`, sweeps, method@backbone, budgets, files written."""

import csv

from prune_viz.cli import main


def test_bench_writes_results_with_deltas(tiny_demo, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main([
        "bench", "--backbone", "demo", "--methods", "none,random,lvtp,dtop", "--split", "val", "--n", "2",
        "--sweep", "rate=0.25,0.75", "--set", "k=4", "--layers", "2", "--time-scenes", "1", "--budgets", "50", "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[0]["method"] == "none" and float(rows[0]["delta_miou"]) == 0.0 and float(rows[0]["delta_macs_pct"]) == 0.0
    assert [r["method"] for r in rows] == ["none", "random", "random", "lvtp", "lvtp", "dtop"]
    assert {"backbone", "method", "params", "miou", "macs", "delta_miou", "delta_macs_pct", "gamma", "latency_ms"} <= set(rows[0])
    rnd = [r for r in rows if r["method"] == "random"]
    assert float(rnd[1]["macs"]) < float(rnd[0]["macs"]) < float(rows[0]["macs"])  # rate 0.75 saves more
    assert all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    assert "rate=0.25" in rnd[0]["params"] and "k=4" in rows[3]["params"]
    assert "rate" not in rows[5]["params"] and "k=4" in rows[5]["params"]  # dtop has k, not rate
    for name in ("results.md", "tradeoff.png", "tradeoff.html", "results_budget.md"):
        assert (out / name).exists()


def test_bench_refuses_unavailable_method(tiny_demo, tmp_path, capsys):
    code = main(["bench", "--backbone", "timm:vit_tiny_patch16_224", "--methods", "none", "--n", "1", "--out", str(tmp_path)])
    assert code == 2 and "semantic" in capsys.readouterr().err
