"""Registry of backbone families (``BUILDERS``, data like segment-anything's ``sam_model_registry``):
it feeds the CLI choices and the UI dropdowns, and :func:`describe` tells the controls what a
backbone offers, also when its weights are not on this machine.

Built models are shared, read-only, between requests (a small LRU keyed by what identifies the
weights); nothing per request is stored here.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

from ..checkpoints import CheckpointError
from ..errors import ParamError, echo
from .base import Backbone
from .provenance import weights_kind
from .registry_folder import MODELS_PREFIX

# (name, checkpoint, input_size, download, random_weights) -> Backbone
BuildFn = Callable[[str, "str | None", "int | None", bool, bool], Backbone]


@dataclass(frozen=True)
class BackboneFacts:
    """What the controls need to know about a backbone, with or without its weights.

    ``missing`` is the reason the weights cannot be loaded ("" when they are here);
    ``input_sizes`` the square input sizes a user may choose (first = default; () = fixed).
    """

    name: str
    input_size: int | None
    num_blocks: int
    global_layers: tuple[int, ...]
    aux_layers: tuple[int, ...]
    default_layers: tuple[int, ...]
    num_classes: int
    supports_prompts: bool
    weights: str
    input_sizes: tuple[int, ...] = ()
    downloadable: bool = False
    missing: str = ""
    weights_kind: str = ""  # pretrained | file | random (see .provenance); "" when not built
    stage_ends: tuple[int, ...] = ()  # hierarchical backbones: layers after which the grid halves

    @property
    def loaded(self) -> bool:
        return not self.missing

    @property
    def key(self) -> tuple[str, int | None]:
        """What identifies the model a session's cached forward belongs to."""
        return (self.name, self.input_size)


@dataclass(frozen=True)
class BackboneEntry:
    """One registered family: how to build it and what can be said about it without weights."""

    description: str
    build: BuildFn
    input_sizes: tuple[int, ...] = ()  # choosable square input sizes, first = default
    facts: Callable[[str, int | None], BackboneFacts] | None = None  # from the known configuration
    download: Callable[[str, Callable[[int, int], None] | None], str] | None = None  # fetch official weights


def _build_demo(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .demo import DEMO_MATP_WEIGHTS, build_demo

    backbone = build_demo(checkpoint or (DEMO_MATP_WEIGHTS if name == "demo_matp" else None))
    backbone.name = name
    return backbone


def _build_sam(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .sam import build_sam

    return build_sam(name, checkpoint=checkpoint, img_size=input_size or SAM_SIZES[0], download=download,
                     random_weights=random_weights)


def _sam_facts(name: str, input_size: int | None) -> BackboneFacts:
    from .sam_variants import SAM_VARIANTS

    v = SAM_VARIANTS[name]
    return BackboneFacts(name, input_size, v.depth, tuple(i + 1 for i in v.global_attn_indexes), (), v.default_layers, 0,
                         True, v.filename, SAM_SIZES, True)


def _download_sam(name: str, progress: Callable[[int, int], None] | None) -> str:
    from ..checkpoints import cache_dir, download
    from .sam_variants import SAM_VARIANTS

    v = SAM_VARIANTS[name]
    download(v.url, cache_dir() / v.filename, v.sha256, progress=progress)
    return f"Downloaded {v.filename} to {cache_dir()}."


def timm_params_limit_m() -> float:
    """``PRUNE_VIZ_TIMM_MAX_PARAMS_M``: the largest timm model (millions of parameters) this
    server builds, default 100 (ViT-B is 86M; ViT-L 304M and ViT-H 632M are refused)."""
    return float(os.environ.get("PRUNE_VIZ_TIMM_MAX_PARAMS_M", "100"))


@functools.lru_cache(maxsize=256)
def timm_num_params(model_name: str) -> int:
    """Parameters of a timm model, counted on the meta device (no memory, no weights, ~0.3 s)."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def check_timm_allowed(model_name: str) -> None:
    """ParamError unless the server owner lets this timm model be built: named in
    ``PRUNE_VIZ_TIMM_ALLOW`` (comma-separated) when that is set, else at most
    :func:`timm_params_limit_m` million parameters. A browser could otherwise fill the server's
    memory with a few giant models (vit_huge: 19.7 s and 2.4 GB each)."""
    allow = [n.strip() for n in os.environ.get("PRUNE_VIZ_TIMM_ALLOW", "").split(",") if n.strip()]
    if allow:
        if model_name not in allow:
            raise ParamError(f"this server builds only these timm models: {', '.join(allow)} (PRUNE_VIZ_TIMM_ALLOW)")
        return
    millions = timm_num_params(model_name) / 1e6
    limit = timm_params_limit_m()
    if millions > limit:
        raise ParamError(
            f"timm:{model_name} has {millions:,.0f}M parameters; this server builds timm models of up to "
            f"{limit:g}M (its owner can raise PRUNE_VIZ_TIMM_MAX_PARAMS_M)"
        )


def _build_timm(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .vit import build_timm

    check_timm_allowed(name[len(TIMM_PREFIX):])

    return build_timm(name[len(TIMM_PREFIX):], input_size=input_size, checkpoint=checkpoint,
                      pretrained=download and not random_weights, random_weights=random_weights)


def _download_timm(name: str, progress: Callable[[int, int], None] | None) -> str:
    from .timm_weights import download_pretrained

    check_timm_allowed(name[len(TIMM_PREFIX):])
    path = download_pretrained(name[len(TIMM_PREFIX):], progress)
    return f"Downloaded timm's pretrained weights for {name} to {path}."


def _build_registered(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .registry_folder import build_registered

    return build_registered(name, checkpoint, input_size)


def _build_swin(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .swin import build_swin

    check_timm_allowed(name[len(TIMM_PREFIX):])
    return build_swin(name[len(TIMM_PREFIX):], input_size=input_size, checkpoint=checkpoint,
                      pretrained=download and not random_weights)


def _build_demo_swin(name: str, checkpoint: str | None, input_size: int | None, download: bool, random_weights: bool) -> Backbone:
    from .demo_swin_model import SwinUNet, build_demo_swin
    from .swin import from_swin_unet

    model = SwinUNet() if random_weights else build_demo_swin(checkpoint)
    if input_size and input_size != model.cfg.img_size:
        raise ParamError(f"{name} takes {model.cfg.img_size} px inputs only (got --input-size {input_size})")
    return from_swin_unet(model, name)


def _demo_swin_facts(name: str, input_size: int | None) -> BackboneFacts:
    from .demo_swin_model import DEMO_SWIN_WEIGHTS, SwinDemoConfig

    cfg = SwinDemoConfig()
    ends = cfg.stage_ends[:-1]
    return BackboneFacts(name, None, cfg.stage_ends[-1], (), cfg.aux_layers, (ends[0] + 1,), len(cfg.classes), False,
                         DEMO_SWIN_WEIGHTS.name, stage_ends=ends)


SAM_SIZES = (1024, 768, 512)  # 1024 = the official input size
SWIN_SIZES = (512, 256, 768, 1024)  # the Swin adapter's choices (each stage grid a multiple of its 8 x 8 window)
TIMM_PREFIX = "timm:"
BUILDERS: dict[str, BackboneEntry] = {
    "demo": BackboneEntry("Demo segmenter shipped with prune_viz (ViT-Tiny shape, 7 aerial classes, offline)", _build_demo),
    "demo_matp": BackboneEntry("The demo segmenter fine-tuned with MATP's pruning in the loop (for the matp method)",
                               _build_demo),
    "demo_swin": BackboneEntry("Swin-UNet demo segmenter shipped with prune_viz (hierarchical Swin encoder, UNet decoder "
                               "with skips, aux heads; 7 aerial classes, offline)", _build_demo_swin, facts=_demo_swin_facts),
    "sam_vit_b": BackboneEntry("Segment Anything ViT-B image encoder (windowed + global attention)", _build_sam,
                               SAM_SIZES, _sam_facts, _download_sam),
    "sam_vit_l": BackboneEntry("Segment Anything ViT-L image encoder", _build_sam, SAM_SIZES, _sam_facts, _download_sam),
    "sam_vit_h": BackboneEntry("Segment Anything ViT-H image encoder", _build_sam, SAM_SIZES, _sam_facts, _download_sam),
    TIMM_PREFIX: BackboneEntry("Any timm plain VisionTransformer, e.g. timm:vit_base_patch16_224", _build_timm,
                               download=_download_timm),
}
REGISTERED = BackboneEntry("A model registered in $PRUNE_VIZ_MODELS (a checkpoint and its sidecar)", _build_registered)

# timm's hierarchical Swin Transformers (``timm:swin_*``) go to their own adapter (prune_viz.backbones.swin).
TIMM_SWIN = BackboneEntry("timm Swin Transformer (hierarchical, shifted windows), e.g. timm:swin_tiny_patch4_window7_224",
                          _build_swin, SWIN_SIZES)

_CACHE: "OrderedDict[tuple, Backbone]" = OrderedDict()
_LOCK = threading.Lock()
_MAX_MODELS = 3


def check_backbone_name(name: str) -> BackboneEntry:
    """The registry entry for ``name``; ParamError unless it is one of ours or
    ``timm:<a model in timm's registry>``.

    timm also accepts ``hf-hub:<repo>`` and ``local-dir:<path>`` names, which would fetch from
    the network or open a folder typed by whoever wrote the name (a browser user, on a shared
    Space); only plain registry names (with an optional ``.tag``) pass."""
    if name in BUILDERS and name != TIMM_PREFIX:
        return BUILDERS[name]
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        model_name = name[len(TIMM_PREFIX):]
        if any(c in model_name for c in ":/\\") or model_name.startswith("."):
            raise ParamError(f"{echo(name)}: give a model name from timm's registry (no hf-hub:, local-dir: or paths)")
        from timm.models import is_model

        if not is_model(model_name):
            raise ParamError(f"{echo(name)}: timm has no model called {echo(model_name)} (timm.list_models('vit_*') lists them)")
        from .swin import is_swin_name

        return TIMM_SWIN if is_swin_name(model_name) else BUILDERS[TIMM_PREFIX]
    if name.startswith(MODELS_PREFIX):
        from .registry_folder import registered_spec

        registered_spec(name)  # ParamError: the sidecar's own message, or the registered names
        return REGISTERED
    names = ", ".join(n if n != TIMM_PREFIX else "timm:<model_name>" for n in BUILDERS) + ", models:<NAME>"
    raise ParamError(f"unknown backbone {echo(name)}; choose {names}")


def input_size_for(name: str, size: int | float | None) -> int | None:
    """The input size a run uses: ``size`` (or the default) where the family lets users choose."""
    sizes = check_backbone_name(name).input_sizes
    return int(size or sizes[0]) if sizes else None


def build_backbone(
    name: str,
    checkpoint: str | None = None,
    input_size: int | None = None,
    download: bool = False,
    random_weights: bool = False,
) -> Backbone:
    """Build (or reuse) a backbone adapter. Raises ParamError / CheckpointError with a reason."""
    entry = check_backbone_name(name)
    # The demo's server-side weights override is part of what identifies the model.
    # So are the folders it may come from (SAM and timm's pretrained weights; registered models).
    key = (name, checkpoint, input_size, random_weights, os.environ.get("PRUNE_VIZ_DEMO_WEIGHTS"),
           os.environ.get("PRUNE_VIZ_CHECKPOINTS"), os.environ.get("PRUNE_VIZ_MODELS") if name.startswith(MODELS_PREFIX) else None)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    backbone = entry.build(name, checkpoint, input_size, download, random_weights)
    with _LOCK:
        _CACHE[key] = backbone
        while len(_CACHE) > _MAX_MODELS:
            _CACHE.popitem(last=False)
    return backbone


def facts_of(backbone: Backbone) -> BackboneFacts:
    """The facts of a built backbone."""
    entry = check_backbone_name(backbone.name)
    return BackboneFacts(
        backbone.name, backbone.input_size if entry.input_sizes else None, backbone.num_blocks,
        tuple(backbone.global_layers), tuple(backbone.aux_layers), tuple(backbone.default_layers()),
        int(backbone.num_classes), bool(backbone.supports_prompts), backbone.weights, entry.input_sizes,
        entry.download is not None, weights_kind=weights_kind(backbone), stage_ends=tuple(backbone.stage_ends),
    )


def describe(name: str, input_size: int | float | None = None) -> BackboneFacts:
    """What backbone ``name`` at ``input_size`` offers. Built (from the shared cache) when its
    weights are here; otherwise, for families with a known configuration (SAM), described from
    it with ``missing`` saying how to get the weights. ParamError for unknown names."""
    name = (name or "").strip()
    entry = check_backbone_name(name)
    size = input_size_for(name, input_size)
    try:
        return facts_of(build_backbone(name, input_size=size))
    except CheckpointError as exc:
        if entry.facts is None:
            raise
        return replace(entry.facts(name, size), missing=str(exc))


def download_weights(name: str, progress: Callable[[int, int], None] | None = None) -> str:
    """Fetch the official weights of ``name`` into the checkpoint folder (needs the network)."""
    entry = check_backbone_name(name)
    if entry.download is None:
        raise ParamError(f"{name} has no official weights to download")
    message = entry.download(name, progress)
    with _LOCK:  # built models of this name hold the old (e.g. random) weights
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]
    return message
