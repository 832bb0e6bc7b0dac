"""The v2 suite on a hierarchical backbone (demo_swin): per-stage layer grids, methods the
backbone refuses written as "not applicable", MATP without a fine-tune said so, lowres sizes the
windows tile (the resized copy's shrunk windows keep the full window's biases)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from prune_viz.cli import main


@pytest.fixture(scope="module")
def demo_swin():
    from prune_viz.backbones import build_backbone

    return build_backbone("demo_swin")


def test_lowres_sizes_are_the_ones_the_windows_tile(demo_swin) -> None:
    from prune_viz.bench_suite import lowres_sizes, resized_input, stage_starts

    assert demo_swin.stage_grids(512) == [64, 32, 16, 8]
    assert demo_swin.stage_grids(448) is None  # 28 at stage 2 is not a multiple of the 8 x 8 window
    assert demo_swin.stage_grids(256) == [32, 16, 8, 4]  # stage 4: one 4 x 4 window
    assert lowres_sizes(demo_swin, quick=False) == [512, 256]
    assert stage_starts(demo_swin) == (1, 3, 5)  # first block of stages 1-3 (never a stage's last block)
    small = resized_input(demo_swin, 256)
    assert small.input_size == 256 and small.decoder is demo_swin.decoder
    with pytest.raises(Exception, match="window"):
        demo_swin.at_input_size(448)
    # A shrunk window sees the same bias for the same offsets as the full window.
    big, tiny = demo_swin._block(10), small._block(10)
    assert tuple(tiny.window_size) == (4, 4) and tuple(big.window_size) == (8, 8)
    full_bias = big.attn._get_rel_pos_bias()[0]  # heads x 64 x 64
    small_bias = tiny.attn._get_rel_pos_bias()[0]  # heads x 16 x 16
    cells = torch.tensor([r * 8 + c for r in range(4) for c in range(4)])  # the 4 x 4 corner of an 8 x 8 window
    assert torch.allclose(small_bias, full_bias[:, cells][:, :, cells])
    rgb = np.random.default_rng(0).integers(0, 255, (200, 160, 3), dtype=np.uint8)
    from prune_viz.engine import run_baseline

    base, low = run_baseline(demo_swin, rgb), run_baseline(small, rgb)
    assert low.macs < base.macs / 3 and low.seg.labels.shape == base.seg.labels.shape


def test_suite_on_demo_swin_writes_budgets_with_not_applicable_rows(demo_swin, tmp_path, capsys) -> None:
    from prune_viz.bench_report import BUDGET_COLUMNS
    from prune_viz.bench_suite import method_refusal

    out = tmp_path / "swin"
    code = main(["bench", "--suite", "v2", "--backbone", "demo_swin", "--quick", "--split", "val", "--n", "1",
                 "--methods", "random,tome,dtop,exit,matp,lowres", "--time-runs", "0", "--boot", "20", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "budgets.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == BUDGET_COLUMNS
        rows = list(reader)
    names = list(dict.fromkeys(r["method"] for r in rows))
    exits = [n for n in names if n.startswith("exit@")]
    assert exits == [f"exit@{layer}" for layer in demo_swin.aux_layers if layer < demo_swin.num_blocks]  # at the aux heads only
    assert {"random", "tome", "dtop", "matp", "lowres"} <= set(names)
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        assert [r["budget_pct"] for r in mine] == ["30", "50", "70"]
        why = method_refusal(demo_swin, "exit" if name.startswith("exit@") else name) if name != "lowres" else None
        if why:  # asked of the method, never a fixed list
            assert all(r["reached"] == "false" and r["miou"] == "" and r["note"] == f"not applicable: {why}" for r in mine)
        else:
            assert not any(r["note"].startswith("not applicable") for r in mine)
            for r in (r for r in mine if r["reached"] == "true"):
                assert 0 <= float(r["ci_low"]) <= float(r["miou"]) <= float(r["ci_high"]) <= 1
    assert all(r["note"] == "no fine-tune: MATP runs on demo_swin itself" for r in rows if r["method"] == "matp")
    assert any(r["reached"] == "true" for r in rows if r["method"] == "random")
    summary = (out / "summary.md").read_text()
    assert "no fine-tune" in summary and "demo_swin" in summary
    assert "random@" not in summary  # MATP on the backbone itself: no duplicate random curve
    assert (out / "tradeoff.png").exists()
