"""The server owner's model registry ($PRUNE_VIZ_MODELS), the timm_seg family, weights
provenance (pretrained | file <sha12> | random) and timm's pretrained-weights download.

Real architectures with random weights (vit_tiny_patch16_224 at 64 px: 16 tokens, 12 blocks);
the network is never touched: downloads are answered by a mocked ``urlopen``."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from prune_viz.backbones import build_backbone, check_backbone_name, describe
from prune_viz.backbones.registry_folder import model_choices, registry, scan
from prune_viz.backbones.timm_seg import TimmSegModel
from prune_viz.engine import run_baseline, run_pruned
from prune_viz.errors import ParamError
from prune_viz.flops import measure_macs
from prune_viz.params import make_plan

TIMM = "vit_tiny_patch16_224"
CLASSES = ["road", "car", "tree"]
PALETTE = [[128, 64, 128], [0, 0, 142], [107, 142, 35]]
SEG_SIDECAR = {"family": "timm_seg", "checkpoint": "seg.safetensors", "timm_name": TIMM, "input_size": 64,
               "classes": CLASSES, "palette": PALETTE, "aux_layers": [3, 6, 8], "note": "ViT-Ti + linear head (test)"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A timm_seg checkpoint (backbone + head + aux heads) and a plain timm backbone one."""
    folder = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    net = TimmSegModel(TIMM, len(CLASSES), 64, (3, 6, 8))
    seg = folder / "seg.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(seg))
    plain = folder / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in net.backbone.state_dict().items()}, str(plain))
    return {"seg": seg, "plain": plain}


@pytest.fixture()
def models(tmp_path, monkeypatch, checkpoints) -> Path:
    """$PRUNE_VIZ_MODELS with a timm_seg model (JSON sidecar) and a timm one (TOML sidecar)."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(checkpoints["seg"], folder / "seg.safetensors")
    shutil.copy(checkpoints["plain"], folder / "plain.safetensors")
    (folder / "streets.json").write_text(json.dumps(SEG_SIDECAR))
    (folder / "features.toml").write_text(f'family = "timm"\ncheckpoint = "plain.safetensors"\ntimm_name = "{TIMM}"\n'
                                          'input_size = 64\nnote = "ViT-Ti features, k-means segments"\n'
                                          'mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n')
    monkeypatch.setenv("PRUNE_VIZ_MODELS", str(folder))
    monkeypatch.setenv("PRUNE_VIZ_CHECKPOINTS", str(tmp_path / "ckpt_cache"))
    return folder


def _image(h: int = 72, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img[10:40, 20:60] = (200, 40, 40)
    return img


# --------------------------------------------------------------------------- scanning


def test_good_json_and_toml_sidecars_are_listed_with_their_notes(models):
    reg = registry()
    assert set(reg.models) == {"streets", "features"} and reg.problems == {}
    spec = reg.models["streets"]
    assert spec.family == "timm_seg" and spec.classes == tuple(CLASSES) and spec.aux_layers == (3, 6, 8)
    assert spec.checkpoint == (models / "seg.safetensors").resolve()
    assert ("models:streets — ViT-Ti + linear head (test)", "models:streets") in model_choices()
    assert ("models:features — ViT-Ti features, k-means segments", "models:features") in model_choices()
    from prune_viz.ui.choices import backbone_choices

    values = [v for _, v in backbone_choices()]
    assert "demo" in values and "models:streets" in values and "models:features" in values


def test_a_registered_timm_backbone_reads_its_checkpoint_and_normalisation(models, checkpoints):
    from safetensors.torch import load_file

    backbone = build_backbone("models:features")
    assert backbone.name == "models:features" and backbone.input_size == 64 and backbone.num_classes == 0
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, load_file(str(checkpoints["plain"]))["blocks.0.attn.qkv.weight"])
    assert backbone.mean.flatten().tolist() == [0.5] * 3 and backbone.std.flatten().tolist() == [0.25] * 3
    plan = make_plan(backbone, "lvtp", [4])
    assert run_pruned(backbone, _image(), plan).seg.kind == "segments"


def test_a_model_dropped_in_later_appears_without_a_restart(models, checkpoints):
    assert "later" not in registry().models
    with pytest.raises(ParamError, match="no such registered model; registered: models:features, models:streets"):
        check_backbone_name("models:later")
    shutil.copy(checkpoints["seg"], models / "later.safetensors")
    (models / "later.json").write_text(json.dumps({**SEG_SIDECAR, "checkpoint": "later.safetensors"}))
    assert "later" in registry().models


def test_no_folder_means_no_registered_models(monkeypatch):
    monkeypatch.delenv("PRUNE_VIZ_MODELS", raising=False)
    assert model_choices() == []
    with pytest.raises(ParamError, match="no models are registered on this server"):
        check_backbone_name("models:anything")
    monkeypatch.setenv("PRUNE_VIZ_MODELS", "/nonexistent/models")
    assert model_choices() == []
    with pytest.raises(ParamError, match="is not a folder"):
        check_backbone_name("models:anything")


BAD = {
    "badjson": ('{"family": "timm_seg",', "not valid JSON (line 1"),
    "badtoml": ('family = "timm"\ncheckpoint = ', "not valid TOML"),
    "notobject": ("[1, 2]", "must hold one object of fields"),
    "family": ({**SEG_SIDECAR, "family": "unet"}, "family must be one of sam_vit_b, sam_vit_l, sam_vit_h, timm, demo, timm_seg; got 'unet'"),
    "nofile": ({**SEG_SIDECAR, "checkpoint": "gone.safetensors"}, "checkpoint 'gone.safetensors' not found next to the sidecar"),
    "nockpt": ({k: v for k, v in SEG_SIDECAR.items() if k != "checkpoint"}, "checkpoint is missing"),
    "types": ({**SEG_SIDECAR, "input_size": "big"}, "input_size must be a whole number, got 'big'"),
    "colour": ({**SEG_SIDECAR, "palette": [[1, 2, 300]] * 3}, "palette must be a list of [r, g, b] of 0..255 each"),
    "lengths": ({**SEG_SIDECAR, "palette": PALETTE[:2]}, "classes has 3 names but palette 2 colours"),
    "escape": ({**SEG_SIDECAR, "checkpoint": "../outside.safetensors"}, "is outside the models folder"),
    "absolute": ({**SEG_SIDECAR, "checkpoint": "/etc/passwd"}, "is outside the models folder"),
    "typo": ({**SEG_SIDECAR, "clases": CLASSES}, "unknown field(s) 'clases'"),
    "notimm": ({k: v for k, v in SEG_SIDECAR.items() if k != "timm_name"}, "timm_name is missing"),
    "unknowntimm": ({**SEG_SIDECAR, "timm_name": "vit_nonexistent_42"}, "timm has no model called 'vit_nonexistent_42'"),
    "hubname": ({**SEG_SIDECAR, "timm_name": "hf-hub:someone/model"}, "must be a name from timm's registry"),
    "misplaced": ({**SEG_SIDECAR, "family": "timm", "classes": CLASSES, "palette": PALETTE, "aux_layers": []},
                  "classes is not used by family timm"),
}


def test_each_malformed_sidecar_gets_one_clear_message_and_the_good_one_still_loads(models, caplog):
    (models.parent / "outside.safetensors").write_bytes((models / "seg.safetensors").read_bytes())
    for name, (content, _) in BAD.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (models / f"{name}.{'toml' if name == 'badtoml' else 'json'}").write_text(text)
    with caplog.at_level(logging.WARNING, logger="prune_viz"):
        reg = scan(models)
    assert set(reg.models) == {"streets", "features"}
    assert set(reg.problems) == set(BAD)
    for name, (_, expected) in BAD.items():
        message = reg.problems[name]
        assert expected in message, (name, message)
        assert message.startswith(f"{name}.") and "\n" not in message and "Traceback" not in message
        assert sum(message in r.getMessage() for r in caplog.records) == 1  # logged once, at the scan
    # Shown when chosen: the same one message, as the user error every boundary shows.
    with pytest.raises(ParamError) as err:
        describe("models:lengths")
    assert str(err.value) == f"models:lengths cannot be used: {reg.problems['lengths']}"
    labels = dict((v, k) for k, v in model_choices())
    assert "cannot be used" in labels["models:escape"] and "ViT-Ti" in labels["models:streets"]


def test_a_link_out_of_the_folder_is_refused(models, tmp_path):
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes((models / "seg.safetensors").read_bytes())
    (models / "link.safetensors").symlink_to(secret)
    (models / "linked.json").write_text(json.dumps({**SEG_SIDECAR, "checkpoint": "link.safetensors"}))
    assert "is outside the models folder" in registry().problems["linked"]


def test_hidden_files_are_not_sidecars(models):
    (models / "._streets.json").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    assert set(registry().models) == {"streets", "features"} and registry().problems == {}


def test_both_json_and_toml_for_one_name_is_refused(models):
    (models / "streets.toml").write_text('family = "timm"\n')
    reg = registry()
    assert "streets" not in reg.models and "keep one" in reg.problems["streets"]


def test_a_registered_demo_with_its_config_beside_it(models, tmp_path):
    from tests.conftest import write_tiny_demo

    write_tiny_demo(models, depth=2, img_size=64)  # demo_segmenter.safetensors + its DemoConfig demo_segmenter.json
    (models / "mydemo.toml").write_text('family = "demo"\ncheckpoint = "demo_segmenter.safetensors"\nnote = "my demo"\n')
    reg = registry()
    assert "mydemo" in reg.models and "demo_segmenter" not in reg.problems  # the config is not a sidecar
    backbone = build_backbone("models:mydemo")
    from prune_viz.backbones.provenance import provenance

    assert backbone.name == "models:mydemo" and backbone.num_classes == 7
    assert provenance(backbone).label.startswith("file ") and "demo_segmenter.safetensors" in provenance(backbone).sentence


# --------------------------------------------------------------------------- running


@pytest.mark.parametrize("method,layers", [("random", (3, 6)), ("dtop", (3, 6)), ("matp", (3, 6, 8))])
def test_timm_seg_runs_end_to_end_and_its_macs_match_the_counter(models, method, layers):
    backbone = build_backbone("models:streets")
    assert backbone.num_classes == 3 and backbone.aux_layers == (3, 6, 8) and backbone.input_size == 64
    image = _image()
    plan = make_plan(backbone, method, list(layers))
    base = run_baseline(backbone, image)
    measured_base, _ = measure_macs(lambda: run_baseline(backbone, image))
    assert measured_base == base.macs
    trace = run_pruned(backbone, image, plan, baseline=base)
    measured, _ = measure_macs(lambda: run_pruned(backbone, image, plan))
    assert abs(measured - trace.macs["total"]) <= 0.01 * measured
    assert trace.seg.kind == "semantic" and trace.seg.labels.shape == image.shape[:2]
    assert set(np.unique(trace.seg.labels)) <= {0, 1, 2}
    if method == "random":
        assert trace.layers[-1].tokens < trace.layers[0].tokens  # blocks really ran on fewer tokens


def test_another_input_size_resamples_the_position_embedding(models):
    backbone = build_backbone("models:streets", input_size=96)
    assert backbone.input_size == 96 and backbone.net.backbone.pos_embed.shape[1] == 1 + 6 * 6
    assert run_pruned(backbone, _image(), make_plan(backbone, "random", [3])).grid == (6, 6)


def test_a_1x1_conv_head_loads_as_the_linear_head(models):
    from safetensors.torch import load_file

    state = load_file(str(models / "seg.safetensors"))
    state["head.weight"] = state["head.weight"][:, :, None, None].contiguous()
    save_file(state, str(models / "conv.safetensors"))
    (models / "conv.json").write_text(json.dumps({**SEG_SIDECAR, "checkpoint": "conv.safetensors"}))
    a, b = build_backbone("models:conv"), build_backbone("models:streets")
    assert torch.equal(a.net.head.weight, b.net.head.weight)


def test_a_checkpoint_of_another_shape_says_so(models):
    (models / "wrong.json").write_text(json.dumps({**SEG_SIDECAR, "classes": ["a", "b"], "palette": PALETTE[:2]}))
    from prune_viz.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="does not match timm_seg 'vit_tiny_patch16_224'"):
        build_backbone("models:wrong")


def test_cli_analyze_a_registered_model(models, tmp_path, capsys):
    from prune_viz.cli import main

    image = tmp_path / "street.png"
    cv2.imwrite(str(image), _image())
    out = tmp_path / "out"
    assert main(["analyze", str(image), "--out", str(out), "--backbone", "models:streets", "--method", "dtop",
                 "--repeat", "0", "--no-measure"]) == 0
    report = json.loads((out / "report.json").read_text())
    sha = hashlib.sha256((models / "seg.safetensors").read_bytes()).hexdigest()
    assert report["backbone"] == "models:streets" and report["weights"] == f"file {sha[:12]}"
    assert "seg.safetensors" in report["weights_note"] and "RANDOM" not in report["weights_note"]
    assert report["method"] == "dtop" and report["macs"]["pruned_parts"]["aux_heads"] > 0  # its aux heads ran
    assert f"weights: file {sha[:12]}" in capsys.readouterr().out
    assert main(["analyze", str(image), "--out", str(out), "--backbone", "models:streets", "--checkpoint", "x.pth"]) == 2
    assert "brings its own checkpoint" in capsys.readouterr().err


def test_cli_names_a_malformed_model_in_one_line(models, tmp_path, capsys):
    from prune_viz.cli import main

    (models / "broken.json").write_text('{"family": "timm_seg", "checkpoint": 3}')
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), _image())
    assert main(["analyze", str(image), "--out", str(tmp_path / "o"), "--backbone", "models:broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: models:broken cannot be used: broken.json: checkpoint must be a text, got 3"


def _params():
    from prune_viz.webapp import handlers

    return [c.default for c in handlers.CONTROLS]


def test_app_handlers_and_api_run_a_registered_model(models, tmp_path, monkeypatch):
    import gradio as gr

    from prune_viz.ui.session import Session
    from prune_viz.webapp import api, glue, handlers

    monkeypatch.setattr(glue, "UPLOAD_ROOTS", (*glue.UPLOAD_ROOTS, str(tmp_path)))  # as if uploaded

    image = tmp_path / "street.png"
    cv2.imwrite(str(image), _image())
    session = Session()
    session.set_image(str(image), "street.png")
    setup = dict(zip(handlers.SETUP_OUT, handlers.on_backbone(session, "models:streets", 1024, "lvtp")))
    assert "ViT-Ti + linear head (test)" in setup["backbone_note"] and "RANDOM" not in setup["backbone_note"]
    assert "dtop" in [v for label, v in setup["method"].choices if "needs" not in label]  # it has aux heads
    out = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, "models:streets", 1024, "dtop", [3, 6], 0, 3, *_params())))
    assert "GMACs" in out["readout"] and "RANDOM" not in out["readout"]
    assert session.analysis.report["weights"].startswith("file ")
    rows = {r[0]: r for r in out["metrics"]}
    assert rows["Weights"][1].startswith("file ") and "seg.safetensors" in rows["Weights"][2]
    report = api.api_analyze(str(image), "models:streets", "matp", "3,6", "{}", 0)
    assert report["backbone"] == "models:streets" and report["weights"].startswith("file ")
    (models / "broken.json").write_text('{"family": "timm_seg"')
    with pytest.raises(gr.Error, match=r"models:broken cannot be used: broken.json: not valid JSON"):
        handlers.on_backbone(session, "models:broken", 1024, "lvtp")
    with pytest.raises(gr.Error, match=r"models:broken cannot be used"):
        api.api_analyze(str(image), "models:broken", "random", "3", "{}", 0)


# --------------------------------------------------------------------------- weights provenance


def test_random_weights_are_labelled_in_report_readout_metrics_and_note(models, tmp_path, monkeypatch):
    from prune_viz.ui.session import Session
    from prune_viz.webapp import api, glue, handlers

    monkeypatch.setattr(glue, "UPLOAD_ROOTS", (*glue.UPLOAD_ROOTS, str(tmp_path)))  # as if uploaded

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), _image())
    name = f"timm:{TIMM}"
    session = Session()
    session.set_image(str(image), "photo.png")
    setup = dict(zip(handlers.SETUP_OUT, handlers.on_backbone(session, name, 1024, "lvtp")))
    assert f"{name} runs on RANDOM weights: segmentations mean nothing" in setup["backbone_note"]
    assert setup["download_btn"].visible and "needs network" in setup["download_btn"].value
    out = dict(zip(handlers.VIEW_OUT, handlers.on_analyze(session, name, 1024, "random", [3], 0, 3, *_params())))
    assert "RANDOM weights" in out["readout"].split("\n")[0]
    assert session.analysis.report["weights"] == "random"
    assert {r[0]: r[1] for r in out["metrics"]}["Weights"] == "random"
    live = handlers.on_estimate(session, name, 1024, "random", [3], 0, 3, *_params())
    assert "RANDOM weights" in live
    report = api.api_analyze(str(image), name, "random", "3", "{}", 0)
    assert report["weights"] == "random" and "token decisions only show the mechanics" in report["weights_note"]
    assert api.api_estimate(str(image), name, "random", "3", "{}", 0)["weights"] == "random"


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_timm_download_offline_is_a_clear_error(models, tmp_path, monkeypatch, capsys):
    import gradio as gr

    from prune_viz.cli import main
    from prune_viz.webapp import handlers

    asked = []

    def offline(url, timeout=None):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(gr.Error, match=r"could not download https://huggingface.co/timm/vit_tiny_patch16_224\..*Offline\?"):
        handlers.on_download(f"timm:{TIMM}", 1024, progress=lambda *a, **k: None)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), _image())
    code = main(["analyze", str(image), "--out", str(tmp_path / "o"), "--backbone", f"timm:{TIMM}", "--input-size", "64",
                 "--download", "--repeat", "0", "--no-measure"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: could not download") and "Traceback" not in err
    assert len(asked) == 2 and all(u.endswith("/model.safetensors") for u in asked)
    # Never at start-up: building the page does not fetch anything.
    from prune_viz.ui.choices import backbone_choices

    backbone_choices()
    assert len(asked) == 2


def test_timm_download_then_the_app_runs_pretrained(models, tmp_path, monkeypatch, checkpoints):
    from prune_viz.backbones import download_weights
    from prune_viz.backbones.timm_weights import pretrained_path

    name = f"timm:{TIMM}"
    assert build_backbone(name, input_size=64).weights_kind == "random"
    payload = checkpoints["plain"].read_bytes()  # stands in for timm's hub file (same keys, no network)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _Response(payload))
    seen = []
    message = download_weights(name, lambda done, total: seen.append((done, total)))
    assert pretrained_path(TIMM).is_file() and "Downloaded timm's pretrained weights" in message
    assert seen and seen[-1] == (len(payload), len(payload))
    backbone = build_backbone(name, input_size=64)  # the cached random model was dropped
    assert backbone.weights_kind == "pretrained"
    facts = describe(name)
    assert facts.weights_kind == "pretrained"
    from prune_viz.ui import texts

    assert texts.download_button(facts)[1] is False and "RANDOM" not in texts.backbone_note(name, facts)
    report_plan = make_plan(backbone, "random", [3])
    from prune_viz.analysis import analyze

    report = analyze(backbone, _image(), report_plan, repeat=0, measure=False).report
    assert report["weights"] == "pretrained" and "pretrained weights" in report["weights_note"]
    # The CLI's --download finds them there and does not fetch again.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched again"))
    assert build_backbone(name, input_size=64, download=True).weights_kind == "pretrained"


# --------------------------------------------------------------------------- the example model


SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "models"


def test_training_writes_a_model_the_registry_lists(tmp_path, monkeypatch):
    from prune_viz.train_timm_seg import SegTrainConfig, train

    card = train(SegTrainConfig(steps=2, n_train=4, batch=2, val=1, size=64), tmp_path, "tiny")
    monkeypatch.setenv("PRUNE_VIZ_MODELS", str(tmp_path))
    reg = registry()
    assert set(reg.models) == {"tiny"} and reg.problems == {}  # the card is not read as a sidecar
    assert (tmp_path / "MODEL_CARD_tiny.md").is_file() and 0.0 <= card["metrics"]["val"]["miou_pooled"] <= 1.0
    assert build_backbone("models:tiny").aux_layers == (3, 6)


@pytest.mark.skipif(not (SHIPPED / "synthetic_vit3.safetensors").is_file(), reason="example model not shipped")
def test_the_shipped_example_model_loads_and_segments_val_scenes(monkeypatch):
    from prune_viz.data import synthetic
    from prune_viz.metrics import miou

    monkeypatch.setenv("PRUNE_VIZ_MODELS", str(SHIPPED))
    reg = registry()
    assert set(reg.models) == {"synthetic_vit3"} and reg.problems == {}
    assert (SHIPPED / "synthetic_vit3.safetensors").stat().st_size <= 15e6
    backbone = build_backbone("models:synthetic_vit3")
    scores = []
    for i in range(3):
        image, gt = synthetic.split_scene("val", i, 256)
        scores.append(miou(run_baseline(backbone, image).seg.labels, gt, backbone.num_classes))
    # Well above what a random model gets (~0.05): it is trained (the card has the full numbers).
    assert np.mean(scores) > 0.25, scores
