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
