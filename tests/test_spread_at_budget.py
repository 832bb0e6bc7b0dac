"""bench/spread_at_budget.py: best, worst, spread and the CI check read from a suite's curves.json,
among issue 11's methods only (as the suite's own findings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.spread_at_budget import at_budget

SCRIPT = Path(__file__).parents[1] / "bench" / "spread_at_budget.py"


def _budget(method: str, pct: int, miou: float | None, lo: float = 0.0, hi: float = 0.0) -> dict:
    return {"method": method, "budget_pct": pct, "reached": miou is not None, "miou": miou, "ci_low": lo,
            "ci_high": hi, "vs_random_pts": None if method == "random" else 100 * (miou or 0) - 70.0,
            "vs_random_ci": "[0.1, 0.2]"}


def _curves(best_lo: float) -> dict:
    return {"ref_miou": 0.75, "budgets": [
        _budget("random", 50, 0.70, 0.68, 0.72),
        _budget("dtop", 50, 0.74, best_lo, 0.76),
        _budget("tome", 50, 0.60, 0.58, 0.62),
        _budget("exit@6", 50, None),       # unreachable: never the worst
        _budget("random@demo_matp", 50, 0.50),  # a reference row, not one of issue 11's methods
        _budget("tome", 30, 0.10, 0.0, 0.2),  # another budget: ignored
    ]}


def test_best_worst_spread_and_ci_check():
    r = at_budget(_curves(best_lo=0.73), 50)
    assert (r["best"]["method"], r["worst"]["method"]) == ("dtop", "tome")
    assert r["spread_pts"] == pytest.approx(14.0)
    assert r["clear"]  # 0.73 > random's 0.72
    assert not at_budget(_curves(best_lo=0.715), 50)["clear"]


def test_cli_prints_a_row_and_refuses_bad_arguments(tmp_path):
    (tmp_path / "curves.json").write_text(json.dumps(_curves(best_lo=0.73)))
    out = subprocess.run([sys.executable, str(SCRIPT), f"m={tmp_path}", "--budget", "50"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| m | 0.750 | 0.700 [0.680, 0.720] | dtop 0.740 [0.730, 0.760] | tome 0.600 | 14.0 |" in out.stdout
    assert out.stdout.rstrip().endswith("| yes | 15.0 |")  # ceiling: unpruned 0.75 - worst 0.60
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "error: " in bad.stderr and "Traceback" not in bad.stderr
    none = subprocess.run([sys.executable, str(SCRIPT), f"m={tmp_path}", "--budget", "70"], capture_output=True, text=True)
    assert none.returncode == 2 and "no method reaches -70 %" in none.stderr
