"""bench/matp_gate_gradstop.py: the paired table of MATP fine-tunes from suite raw files."""

import csv

import numpy as np
import pytest

from bench.matp_gate_gradstop import load_run, main, table
from prune_viz.bench_suite import Curve, Measured, Point, save_raw

N = 12


def _cms(errors: np.ndarray) -> np.ndarray:
    """1 x N x 2 x 2: each scene 100 pixels of each class, ``errors[i]`` of each misclassified."""
    cm = np.zeros((1, len(errors), 2, 2), np.int64)
    cm[0, :, 0, 0] = cm[0, :, 1, 1] = 100 - errors
    cm[0, :, 0, 1] = cm[0, :, 1, 0] = errors
    return cm


def _measured(name: str, method: str, backbone: str, point: Point, errors: np.ndarray, macs: float) -> Measured:
    cms = _cms(errors)
    return Measured(Curve(name, method, backbone, [point]), point, cms, cms.copy(), np.full((1, N), macs), np.zeros((1, N)))


def _write_run(path, ft: str, matp_errors: np.ndarray, n: int = N, boot: int = 400) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(1, 10, size=N)
    refs = {"demo": _measured("none", "none", "demo", Point(), base, 100.0),
            ft: _measured("none", "none", ft, Point(), base, 100.0)}
    measured = [
        _measured("matp", "matp", ft, Point((8,), (("alpha", 1.2),)), matp_errors, 80.0),  # -20 %
        _measured("matp", "matp", ft, Point((3, 6, 8), (("alpha", 1.2),)), matp_errors + 4, 40.0),  # -60 %, the default
        _measured("matp", "matp", ft, Point((3, 6, 8), (("alpha", 2.0),)), matp_errors + 8, 30.0),  # -70 %
        _measured(f"random@{ft}", "random", ft, Point((3,), (("rate", 0.3),)), base + 6, 75.0),
        _measured(f"random@{ft}", "random", ft, Point((3,), (("rate", 0.7),)), base + 20, 35.0),
    ]
    path.mkdir()
    save_raw(path, measured, refs, {"split": "val", "n": n, "boot": boot, "backbone": "demo", "matp_backbone": ft})


def test_the_same_run_twice_differs_by_exactly_zero(tmp_path):
    errors = np.arange(N) % 5 + 2
    _write_run(tmp_path / "a", "demo_matp", errors)
    _write_run(tmp_path / "b", "models:x", errors)
    runs = [load_run("a", tmp_path / "a", 1.2), load_run("b", tmp_path / "b", 1.2)]
    assert runs[0].default.label == "alpha=1.2;L=3,6,8" and runs[0].default.reduction == pytest.approx(60.0)
    rows = table([("a", runs[:1]), ("b", runs[1:])], [50.0, 60.0])
    second = [r for r in rows if r["finetune"] == "b" and r.get("miou") is not None]
    assert {r["row"] for r in second} == {"unpruned", "matp default", "matp", "random@models:x"}
    for r in second:
        assert r["vs_first_pts"] == 0 and r["vs_first_ci_low"] == 0 and r["vs_first_ci_high"] == 0
    # MATP at -50 % interpolates between its -20 % and -60 % points (2/3 of the way) and beats
    # the same fine-tune pruned at random there (fewer errors on every scene).
    at50 = next(r for r in second if r["row"] == "matp" and r["budget_pct"] == 50.0)
    assert "interpolated" in at50["how"] and at50["vs_random_pts"] > 0 and at50["vs_random_ci_low"] > 0
    assert [r for r in rows if r["row"] == "matp" and r["budget_pct"] == 60.0][0]["miou"] == pytest.approx(runs[0].default.miou, abs=1e-4)


def test_a_better_finetune_shows_a_positive_paired_difference_and_files_are_written(tmp_path):
    errors = np.arange(N) % 5 + 3
    _write_run(tmp_path / "ship", "demo_matp", errors)
    _write_run(tmp_path / "better", "models:b", errors - 2)
    out = tmp_path / "out" / "t"
    assert main(["--run", f"shipped={tmp_path / 'ship'}", "--run", f"better={tmp_path / 'better'}", "--budgets", "30,50,80",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    better = [r for r in rows if r["finetune"] == "better" and r["row"] == "matp default"][0]
    assert float(better["vs_first_pts"]) > 0 and float(better["vs_first_ci_low"]) > 0
    # 80 % is past every MATP point: unreachable, never filed as a value
    assert [r for r in rows if r["row"] == "matp" and r["budget_pct"] == "80.0"][0]["how"] == "unreachable"
    md = out.with_suffix(".md").read_text()
    assert "| better | matp default (alpha=1.2;L=3,6,8) | 60.0 |" in md and "unreachable" in md


def test_runs_that_cannot_be_paired_are_refused(tmp_path):
    errors = np.arange(N) % 5 + 2
    _write_run(tmp_path / "a", "demo_matp", errors)
    _write_run(tmp_path / "b", "models:x", errors, boot=300)
    with pytest.raises(SystemExit, match="cannot be paired"):
        main(["--run", f"a={tmp_path / 'a'}", "--run", f"b={tmp_path / 'b'}", "--out", str(tmp_path / "o")])


def test_an_arm_of_several_seeds_is_their_mean(tmp_path):
    errors = np.arange(N) % 5 + 3
    _write_run(tmp_path / "s0", "demo_matp", errors)
    _write_run(tmp_path / "s1", "models:s1", errors + 2)
    _write_run(tmp_path / "x", "models:x", errors + 1)
    runs = {k: load_run(k, tmp_path / k, 1.2) for k in ("s0", "s1", "x")}
    rows = table([("pair", [runs["s0"], runs["s1"]]), ("x", [runs["x"]]), ("s0", [runs["s0"]]), ("s1", [runs["s1"]])], [50.0])
    get = {(r["finetune"], r["row"]): r for r in rows if r["budget_pct"] in (None, 50.0) and r.get("miou") is not None}
    for kind in ("unpruned", "matp default", "matp"):
        mean = (get[("s0", kind)]["miou"] + get[("s1", kind)]["miou"]) / 2
        assert get[("pair", kind)]["miou"] == pytest.approx(mean, abs=1e-4)
    # the seed pair is the reference: s0 above it, s1 below it by the same amount
    assert get[("s0", "matp")]["vs_first_pts"] == pytest.approx(-get[("s1", "matp")]["vs_first_pts"], abs=0.02)
    assert get[("s0", "matp")]["vs_first_pts"] > 0
