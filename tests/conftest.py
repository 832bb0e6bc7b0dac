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
