"""CLI: report.json shape, written files, and one `error:` line + exit 2 for every user error."""

import json
import pickle

import cv2
import numpy as np
import pytest
import torch

from prune_viz.cli import main
from tests import zoo

TINY = ["--backbone", "timm:vit_tiny_patch16_224", "--input-size", "64"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), (rng.random((70, 90, 3)) * 255).astype(np.uint8))
    return path


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code, err):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def test_analyze_writes_report_and_pictures(image_path, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(["analyze", str(image_path), "--out", str(out), *TINY, "--method", "random", "--layers", "3,6", "--rate", "0.5", "--repeat", "2"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["backbone"] == "timm:vit_tiny_patch16_224" and report["method"] == "random"
    assert report["params"] == {"rate": 0.5} and report["grid"] == [4, 4]
    assert [lay["layer"] for lay in report["layers"]] == list(range(1, 13))
    assert all(lay["kind"] == "plain" for lay in report["layers"])
    tokens = [lay["tokens"] for lay in report["layers"]]
    assert tokens[:3] == [16] * 3 and tokens[3:6] == [8] * 3 and tokens[6:] == [4] * 6  # entering each block
    macs = report["macs"]
    for key in ("baseline", "pruned", "measured_baseline", "measured_pruned"):
        assert isinstance(macs[key], int) and macs[key] > 0
    assert macs["pruned"] < macs["baseline"]
    assert abs(macs["measured_baseline"] - macs["baseline"]) <= 0.01 * macs["baseline"]
    assert abs(macs["measured_pruned"] - macs["pruned"]) <= 0.01 * macs["pruned"]
    assert set(report["latency_ms"]) >= {"baseline", "pruned"}
    assert 0.0 <= report["metrics"]["agreement_miou"] <= 1.0
    assert report["metrics"]["miou"] is None and report["metrics"]["gamma"] is None
    for name in ("token_map_L3.png", "token_map_L6.png", "seg_before.png", "seg_after.png"):
        assert cv2.imread(str(out / name)) is not None


def test_lvtp_through_cli(image_path, tmp_path, capsys):
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), *TINY, "--method", "lvtp", "--layers", "4", "--q1", "2.0", "--k", "4", "--repeat", "0", "--no-measure"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["params"]["q1"] == 2.0 and report["params"]["k"] == 4


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--rate", "1.0"], "rate"),
        (["--rate", "nan"], "rate"),
        (["--method", "lvtp", "--q1", "0.5"], "q1"),
        (["--method", "lvtp", "--q2", "1.5"], "q2"),
        (["--method", "lvtp", "--k", "1"], "k"),
        (["--layers", "0"], "out of range"),
        (["--layers", "12"], "out of range"),
        (["--layers", "a,b"], "integers"),
        (["--method", "nope"], "invalid choice"),
    ],
)
def test_bad_parameters_give_one_error_line(image_path, tmp_path, capsys, extra, needle):
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), *TINY, "--method", "random", "--repeat", "0", "--no-measure", *extra], capsys)
    assert_one_error_line(code, err)
    assert needle in err


def test_unknown_backbone_and_missing_file(image_path, tmp_path, capsys):
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), "--backbone", "resnet"], capsys)
    assert_one_error_line(code, err)
    code, _, err = run(["analyze", str(tmp_path / "nope.png"), "--out", str(tmp_path), *TINY], capsys)
    assert_one_error_line(code, err)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("timm:local-dir:/tmp", "no hf-hub:, local-dir: or paths"),
        ("timm:hf-hub:timm/vit_tiny_patch16_224", "no hf-hub:, local-dir: or paths"),
        ("timm:../models/vit", "no hf-hub:, local-dir: or paths"),
        ("timm:vit_not_a_model", "timm has no model called"),
    ],
)
def test_timm_names_never_reach_the_network_or_a_path(name, expected, monkeypatch):
    """timm would read hf-hub:/local-dir: names from the network or a folder; a name typed in a
    browser must be refused before timm sees it (the socket guard fails the test otherwise)."""
    import socket

    import timm

    from prune_viz.ui.choices import backbone_info

    def no_network(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(ValueError, match=expected):
        backbone_info(name)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/prune_viz_pwned_cli",))


def test_checkpoint_with_pickled_code_is_refused_without_running(image_path, tmp_path, capsys):
    import os

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"weights": Exploit()}, f)
    if os.path.exists("/tmp/prune_viz_pwned_cli"):
        os.remove("/tmp/prune_viz_pwned_cli")
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), *TINY, "--checkpoint", str(bad)], capsys)
    assert_one_error_line(code, err)
    assert "refused" in err and not os.path.exists("/tmp/prune_viz_pwned_cli")


def test_corrupt_and_wrong_model_checkpoints(image_path, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not really a checkpoint")
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), *TINY, "--checkpoint", str(corrupt)], capsys)
    assert_one_error_line(code, err)
    wrong = tmp_path / "wrong.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, wrong)
    code, _, err = run(["analyze", str(image_path), "--out", str(tmp_path), *TINY, "--checkpoint", str(wrong)], capsys)
    assert_one_error_line(code, err)
    assert "does not match" in err


@pytest.mark.parametrize("case", sorted(name for name in zoo.ZOO if not name.startswith("mask")))
def test_input_zoo_through_cli(case, tmp_path, capsys):
    path = zoo.ZOO[case](tmp_path)
    code, _, err = run(["analyze", str(path), "--out", str(tmp_path / "out"), *TINY, "--method", "random", "--repeat", "0", "--no-measure"], capsys)
    if zoo.EXPECT[case] == "ok":
        assert code == 0, err
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert all(f"note: {n}" in err for n in report["input_notices"])  # said and kept
        assert zoo.KEYWORD[case] in " ".join(report["input_notices"])
    else:
        assert_one_error_line(code, err)
