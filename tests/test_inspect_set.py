"""inspect: a set of images ranked worst first (CSV + HTML), zips read under caps, and the
attribution of changed pixels to pruned tokens (the claim re-measured independently)."""

import csv
import dataclasses
import zipfile

import cv2
import numpy as np
import pytest

from prune_viz.cli import main
from prune_viz.data.synthetic import make_scene
from prune_viz.io import archive
from prune_viz.io.guards import InputError

FLAGS = ["--method", "random", "--rate", "0.5", "--layers", "2", "--top-k", "3"]


def _scene(folder, name, seed, mask=True, ext=".png"):
    image, labels = make_scene(seed, 96, "mixed")
    cv2.imwrite(str(folder / f"{name}{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if mask:
        cv2.imwrite(str(folder / f"{name}_mask.png"), labels)
    return labels


def _rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


@pytest.fixture()
def image_set(tmp_path):
    """A folder (2 images with masks beside them, 1 with a mask in --masks, 1 without, a text
    file, a '.png' that is not one) and a zip (2 images, 1 mask, a text member)."""
    folder, masks = tmp_path / "set", tmp_path / "masks"
    folder.mkdir(), masks.mkdir()
    _scene(folder, "a", 1), _scene(folder, "b", 2)
    labels = _scene(folder, "c", 3, mask=False, ext=".jpg")
    cv2.imwrite(str(masks / "c_mask.png"), labels)
    _scene(folder, "d", 4, mask=False)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"this is no png")
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("a.png", "a_mask.png", "d.png", "notes.txt"):
            z.write(folder / name, f"inner/{name}")
    return folder, masks, zpath


def _check_report(out, expect_gt: dict[str, bool]):
    cols, rows = _rows(out / "inspect.csv")
    for c in ("image", "saved_pct", "agreement_miou", "boundary_f", "miou", "ood_score"):
        assert c in cols
    ranked = [r for r in rows if r["rank"]]
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(ranked) + 1))
    agree = [float(r["agreement_miou"]) for r in ranked]
    assert agree == sorted(agree), "worst (lowest agreement mIoU) first"
    by_name = {r["image"]: r for r in rows}
    for name, has_gt in expect_gt.items():
        assert (by_name[name]["miou"] != "") == has_gt, (name, by_name[name])
    page = (out / "index.html").read_text()
    assert "agreement mIoU" in page and "<script" not in page
    worst = ranked[0]["image"]
    assert worst in page
    pngs = sorted((out / "cases").glob("0001_*"))
    assert {p.name.rsplit("_", 1)[1] for p in pngs} >= {"tokens.png", "change.png"}
    return by_name


def test_inspect_folder_ranks_and_reports(image_set, tiny_demo, tmp_path, capsys):
    folder, masks, _ = image_set
    out = tmp_path / "out"
    assert main(["inspect", str(folder), "--masks", str(masks), "--out", str(out), *FLAGS]) == 0
    by_name = _check_report(out, {"a.png": True, "b.png": True, "c.jpg": True, "d.png": False})
    assert by_name["notes.txt"]["rank"] == "" and "not an image" in by_name["notes.txt"]["note"]
    assert by_name["broken.png"]["rank"] == "" and "skipped" in by_name["broken.png"]["note"]
    assert "wrote" in capsys.readouterr().out


def test_inspect_zip_with_masks_inside(image_set, tiny_demo, tmp_path):
    _, _, zpath = image_set
    out = tmp_path / "zout"
    assert main(["inspect", str(zpath), "--out", str(out), *FLAGS]) == 0
    by_name = _check_report(out, {"inner/a.png": True, "inner/d.png": False})
    assert "not an image" in by_name["inner/notes.txt"]["note"]
    assert len(by_name) == 3  # the mask is no image of its own


def test_inspect_synthetic_limit_and_errors(tiny_demo, tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["inspect", "--synthetic", "shift", "--n", "4", "--size", "64", "--out", str(out), "--attribution", "1",
                 *FLAGS]) == 0
    assert len(list((out / "cases").glob("0001_*_attribution.png"))) == 1
    assert "Pruning changed" in (out / "index.html").read_text()
    _, rows = _rows(out / "inspect.csv")
    assert len(rows) == 4 and all(r["miou"] != "" for r in rows)
    assert all(0 <= float(r["ood_score"]) <= 1 for r in rows)  # prune_viz.ood on the unpruned run
    from prune_viz.ood import OOD_THRESHOLD

    assert all(("out of domain?" in r["note"]) == (float(r["ood_score"]) > OOD_THRESHOLD) for r in rows)
    capsys.readouterr()
    assert main(["inspect", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: give either")
    assert main(["inspect", "--synthetic", "nope", "--out", str(out)]) == 2


def test_zip_caps(tmp_path, monkeypatch):
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(5):
            z.writestr(f"{i}.png", b"x")
        z.writestr("flat.bmp", b"\0" * (4 * 2**20))  # deflates about 1000:1
    monkeypatch.setattr(archive, "MAX_SET_MEMBERS", 4)
    with pytest.raises(InputError, match="holds 6 files"):
        archive.SafeZip(zpath)
    monkeypatch.setattr(archive, "MAX_SET_MEMBERS", 100)
    monkeypatch.setattr(archive, "MAX_SET_BYTES", 2**20)
    with pytest.raises(InputError, match="once unpacked"):
        archive.SafeZip(zpath)
    monkeypatch.setattr(archive, "MAX_SET_BYTES", 2**30)
    with archive.SafeZip(zpath) as zf:
        with pytest.raises(InputError, match="zip bomb"):
            zf.read("flat.bmp")
        assert zf.read("0.png") == b"x"


# ----------------------------------------------------------------------------- attribution


@pytest.fixture(scope="module")
def demo_run():
    from prune_viz.analysis import analyze
    from prune_viz.backbones import build_backbone
    from prune_viz.io import load_image
    from prune_viz.params import make_plan
    from tests.conftest import ROOT

    backbone = build_backbone("demo")
    image = load_image(ROOT / "examples" / "parking.png").rgb
    plan = make_plan(backbone, "lvtp", None, 0, {})
    return backbone, image, plan, analyze(backbone, image, plan)


def test_attribution_claim_holds_when_remeasured(demo_run):
    from prune_viz.attribution import attribute, ranked_rows
    from prune_viz.engine import run_pruned

    backbone, image, plan, a = demo_run
    att = attribute(backbone, image, plan, a.baseline, a.trace, max_runs=8)
    assert att.changed > 0 and att.chosen and att.claimed_share > 0
    assert f"These {len(att.chosen)} of the" in att.statement and f"{100 * att.claimed_share:.0f} %" in att.statement
    assert att.runs <= 8
    # Re-measure the claim from scratch (no prefix cache), with the overrides written out here.
    forced = dataclasses.replace(plan, overrides=tuple((at, att.chosen, ()) for at in plan.layers))
    trace = run_pruned(backbone, image, forced)
    left = int((trace.seg.labels != a.baseline.seg.labels).sum())
    assert (att.changed - left) / att.changed >= att.claimed_share - 1e-6
    # The tested groups are ranked by the share they restore; every token of the statement was pruned.
    shares = [g.share for g in att.groups if g.share is not None]
    assert shares == sorted(shares, reverse=True)
    gw = a.trace.grid[1]
    assert all(a.trace.drop_layer[t // gw, t % gw] < a.trace.num_blocks for t in att.chosen)
    assert ranked_rows(att)[0][0] == 1


def test_restoring_every_pruned_token_undoes_the_change(demo_run):
    from prune_viz.attribution import changed_after_restoring

    backbone, image, plan, a = demo_run
    pruned = np.flatnonzero(a.trace.drop_layer < a.trace.num_blocks)
    left, _ = changed_after_restoring(backbone, image, plan, a.baseline, tuple(int(t) for t in pruned))
    assert left == 0


def test_attribution_refuses_merging_methods(demo_run):
    from prune_viz.analysis import analyze
    from prune_viz.attribution import attribute
    from prune_viz.errors import ParamError
    from prune_viz.params import make_plan

    backbone, image, _, _ = demo_run
    plan = make_plan(backbone, "tome", None, 0, {})
    a = analyze(backbone, image, plan)
    with pytest.raises(ParamError, match="merges"):
        attribute(backbone, image, plan, a.baseline, a.trace)


def test_analyze_attribution_flag_writes_map_and_json(image_set, tiny_demo, tmp_path, capsys):
    import json

    folder, _, _ = image_set
    out = tmp_path / "att"
    assert main(["analyze", str(folder / "a.png"), "--out", str(out), "--attribution", "--repeat", "0", "--no-measure",
                 "--method", "random", "--rate", "0.5", "--layers", "2"]) == 0
    data = json.loads((out / "attribution.json").read_text())
    assert data["statement"] in capsys.readouterr().out
    assert 0 <= data["claimed_share"] <= 1 and data["runs"] <= 32
    assert cv2.imread(str(out / "attribution.png")).shape[:2] == (96, 96)
