import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never touch the network: a download attempt must fail loudly, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_timm():
    """A small random timm ViT with a class token (2 blocks of real timm code)."""
    import timm

    from prune_viz.backbones.vit import TimmViT

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=4)
    return TimmViT(model, "timm:vit_tiny_patch16_224", input_size=128)


@pytest.fixture(scope="session")
def rgb_image():
    import numpy as np

    rng = np.random.default_rng(0)
    img = (rng.random((150, 170, 3)) * 255).astype("uint8")
    img[40:90, 30:120] = (200, 40, 40)  # a flat block: something for methods to find
    return img


def write_tiny_demo(folder: Path, depth: int = 4, img_size: int = 128) -> Path:
    """A small random demo segmenter (7 synthetic classes) saved as the app/CLI load it."""
    from safetensors.torch import save_file

    from prune_viz.backbones.demo import DemoConfig, DemoSegmenter
    from prune_viz.data import synthetic

    torch.manual_seed(0)
    cfg = DemoConfig(
        classes=synthetic.CLASSES,
        palette=tuple(map(tuple, synthetic.PALETTE.tolist())),
        img_size=img_size,
        depth=depth,
        aux_layers=(1, 2, 3),
    )
    model = DemoSegmenter(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "demo_segmenter.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    (folder / "demo_segmenter.json").write_text(cfg.to_json())
    return weights


@pytest.fixture()
def tiny_demo(tmp_path, monkeypatch):
    """Point the `demo` backbone at a tiny random model for this test."""
    weights = write_tiny_demo(tmp_path / "tiny_demo")
    monkeypatch.setenv("PRUNE_VIZ_DEMO_WEIGHTS", str(weights))
    return weights


# ----------------------------------------------------------------------------- the app (test_app*.py)

SHIPPED_DEMO = ROOT / "assets" / "demo_segmenter.safetensors"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A synthetic aerial scene (256 px) and its label mask, in a temporary examples folder."""
    import cv2

    from prune_viz.data.synthetic import make_scene

    folder = tmp_path_factory.mktemp("examples")
    image, labels = make_scene(7, 256, "mixed")
    cv2.imwrite(str(folder / "scene.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "scene_mask.png"), labels)
    return folder


@pytest.fixture(scope="module")
def app_module(scene, tmp_path_factory):
    """Import app.py with the demo weights available and examples from a temporary folder."""
    import importlib

    saved = {k: os.environ.get(k) for k in ("PRUNE_VIZ_DEMO_WEIGHTS", "PRUNE_VIZ_EXAMPLES")}
    if not SHIPPED_DEMO.is_file() and not os.environ.get("PRUNE_VIZ_DEMO_WEIGHTS"):
        from prune_viz.train import TrainConfig, run

        out = tmp_path_factory.mktemp("tiny_demo")
        run(TrainConfig(steps=1, finetune_steps=0, val=1, batch=2), out)
        os.environ["PRUNE_VIZ_DEMO_WEIGHTS"] = str(out / "demo_segmenter.safetensors")
    os.environ["PRUNE_VIZ_EXAMPLES"] = str(scene)
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    from prune_viz.webapp import glue

    # In-process handler tests hand over files from pytest's temporary folders as if uploaded.
    roots = glue.UPLOAD_ROOTS
    glue.UPLOAD_ROOTS = (*roots, str(tmp_path_factory.getbasetemp()))
    yield module
    glue.UPLOAD_ROOTS = roots
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def client(app_module):
    """The app served on a free local port for this test module, and a gradio_client on it."""
    from gradio_client import Client

    from bench.bench_load import free_port

    port = free_port()
    app_module.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                           max_file_size="50mb")
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app_module.demo.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    """``python app.py`` (queue 16, 2 workers) for one browser-test module: (url, server log)."""
    from bench import bench_load as load

    log = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "server.log"
    proc, url = load.start_server(queue_size=16, workers=2, log=log)
    yield url, log
    load.stop_server(proc)
