"""Registry of backbone families: feeds the CLI choices and the UI dropdowns.

Built models are shared, read-only, between requests (a small LRU keyed by what identifies the
weights); nothing per request is stored here.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .base import Backbone

BACKBONES: dict[str, str] = {
    "demo": "Demo segmenter shipped with prune_viz (ViT-Tiny shape, 7 aerial classes, offline)",
    "demo_matp": "The demo segmenter fine-tuned with MATP's pruning in the loop (for the matp method)",
    "sam_vit_b": "Segment Anything ViT-B image encoder (windowed + global attention)",
    "sam_vit_l": "Segment Anything ViT-L image encoder",
    "sam_vit_h": "Segment Anything ViT-H image encoder",
    "timm:<name>": "Any timm plain VisionTransformer, e.g. timm:vit_base_patch16_224",
}

_CACHE: "OrderedDict[tuple, Backbone]" = OrderedDict()
_LOCK = threading.Lock()
_MAX_MODELS = 3


def check_backbone_name(name: str) -> None:
    """ValueError unless ``name`` is one of ours or ``timm:<a model in timm's registry>``.

    timm also accepts ``hf-hub:<repo>`` and ``local-dir:<path>`` names, which would fetch from
    the network or open a folder typed by whoever wrote the name (a browser user, on a shared
    Space); only plain registry names (with an optional ``.tag``) pass."""
    if name in BACKBONES and name != "timm:<name>":
        return
    if name.startswith("timm:") and len(name) > 5:
        model_name = name[5:]
        if any(c in model_name for c in ":/\\") or model_name.startswith("."):
            raise ValueError(f"'{name}': give a model name from timm's registry (no hf-hub:, local-dir: or paths)")
        from timm.models import is_model

        if not is_model(model_name):
            raise ValueError(f"'{name}': timm has no model called '{model_name}' (timm.list_models('vit_*') lists them)")
        return
    raise ValueError(f"unknown backbone '{name}'; choose demo, demo_matp, sam_vit_b, sam_vit_l, sam_vit_h or timm:<model_name>")


def build_backbone(
    name: str,
    checkpoint: str | None = None,
    input_size: int | None = None,
    download: bool = False,
    random_weights: bool = False,
) -> Backbone:
    """Build (or reuse) a backbone adapter. Raises ValueError / CheckpointError with a reason."""
    check_backbone_name(name)
    # The demo's server-side weights override is part of what identifies the model.
    key = (name, checkpoint, input_size, random_weights, os.environ.get("PRUNE_VIZ_DEMO_WEIGHTS"))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if name in ("demo", "demo_matp"):
        from .demo import DEMO_MATP_WEIGHTS, build_demo

        backbone: Backbone = build_demo(checkpoint or (DEMO_MATP_WEIGHTS if name == "demo_matp" else None))
        backbone.name = name
    elif name.startswith("sam_"):
        from .sam import build_sam

        backbone = build_sam(name, checkpoint=checkpoint, img_size=input_size or 1024, download=download, random_weights=random_weights)
    else:
        from .vit import build_timm

        backbone = build_timm(name[5:], input_size=input_size, checkpoint=checkpoint, pretrained=download and not random_weights)
    with _LOCK:
        _CACHE[key] = backbone
        while len(_CACHE) > _MAX_MODELS:
            _CACHE.popitem(last=False)
    return backbone
