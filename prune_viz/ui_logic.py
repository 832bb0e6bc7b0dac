"""What the app computes and draws, without gradio: backbone and method choices, parameter
controls generated from each method's params dataclass, one analysis turned into every view,
the live MAC readout, method comparison at a matched MAC budget, SAM prompts, the export zip.

``app.py`` only lays out components and forwards their values here; everything it shows is a
numpy image, a plotly figure, a markdown / HTML string or a table (list of rows) built in this
module, so it can be tested and benchmarked without a browser. Per-session data live in a
:class:`Session` that the app keeps in ``gr.State``; nothing here stores per-request state in a
module global (the built models are shared read-only through ``build_backbone``'s cache).

Units everywhere: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs; "GMACs" = 1e9 MACs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
import time
import typing
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import viz
from .analysis import Analysis, analyze, save_outputs
from .backbones import BUILDERS, TIMM_PREFIX, build_backbone, check_backbone_name, describe, input_size_for
from .backbones.base import Backbone
from .checkpoints import CheckpointError, cache_dir
from .engine import Baseline, Plan, StepRecord, Trace, attention_surcharge, estimate_macs
from .flops import MACS_NOTE
from .io import LoadedImage, describe_bands, load_image, load_mask
from .methods import METHODS, get_method
from .methods.base import KEPT, PENDING_KEPT, STATUS_LABELS, STATUSES
from .params import default_layers, make_plan, method_availability, param_names, plan_params

# --------------------------------------------------------------------------------- constants

DEFAULT_BACKBONE = "demo"
EXAMPLE_GLOB = "*.png"

BACKBONE_CHOICES: list[tuple[str, str]] = [
    ("demo — shipped demo segmenter (fast, offline)", "demo"),
    ("sam_vit_b — Segment Anything ViT-B (~10 s per forward on 2 cores)", "sam_vit_b"),
    ("sam_vit_l — Segment Anything ViT-L (~30 s per forward)", "sam_vit_l"),
    ("sam_vit_h — Segment Anything ViT-H (~60 s per forward)", "sam_vit_h"),
    ("timm:vit_small_patch16_224 (random weights offline)", "timm:vit_small_patch16_224"),
    ("timm:vit_base_patch16_224 (random weights offline)", "timm:vit_base_patch16_224"),
]

BACKBONE_NOTES: dict[str, str] = {
    "demo": "ViT-Tiny-shaped segmenter trained by this project on synthetic aerial scenes "
    "(7 classes, 512 x 512 input, 32 x 32 = 1024 tokens). About 0.1 s per forward on 2 CPU cores.",
    "sam_vit_b": "SAM ViT-B image encoder, 64 x 64 = 4096 tokens at 1024 px. **About 10 s per forward "
    "on 2 CPU cores** (a run needs two: unpruned and pruned); 512 px input is about 4x faster.",
    "sam_vit_l": "SAM ViT-L image encoder. **Roughly 30 s per forward on 2 CPU cores** at 1024 px (about 3x ViT-B's MACs).",
    "sam_vit_h": "SAM ViT-H image encoder (LVTP's paper setting). **Roughly 60 s per forward on 2 CPU cores** at 1024 px "
    "(about 6x ViT-B's MACs).",
    "timm": "A plain timm ViT. Offline there are no pretrained weights: the weights are **random**, so "
    "the token statistics are meaningful for the mechanics only; segments are k-means clusters of the features.",
}

WHAT_AM_I_LOOKING_AT = (
    "**What am I looking at?**\n"
    "- A Vision Transformer cuts the image into **tokens**, one per 16 x 16 pixel patch (the grid on the token map); "
    "every block of the network computes every token.\n"
    "- **Pruning after layer L**: blocks L+1 onwards skip the tokens the method removed (they keep the features they "
    "had when dropped and are put back for the final segmentation).\n"
    "- The numbers show what that **saves** (MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs) and what it **costs** "
    "(pixels whose class changed; with a ground-truth mask, mIoU).\n"
)

METHOD_TEACHING: dict[str, str] = {
    "none": "Use it as the reference: the token map is all blue and the numbers equal the unpruned model.",
    "random": "If a method does not clearly beat random pruning at the same MAC budget (see the Compare tab), "
    "its scores are not telling it much.",
    "evit": "Attention says which tokens the network looks at, not where the object borders are: watch the "
    "change map along thin structures.",
    "lvtp": "Entropy here measures how spread out a token's feature values are: a flat, uniform region gives "
    "tokens that look alike and carry little information, so whole clusters of them can go. The Sobel step is "
    "the safety net for borders: a token on a strong edge is the last to be pruned. Try raising *rate* and watch "
    "which orange (pending) tokens turn grey.",
    "dtop": "Think of it as a teacher marking easy questions early: a token whose class is already obvious "
    "(open water, a big roof) stops computing, and its early answer is final. Raise the threshold and fewer "
    "tokens dare to leave; mistakes made by an early exit can never be corrected later.",
    "matp": "Every token gets a difficulty score from several clues at once; the cut-off adapts to each image "
    "(alpha x this image's mean score), so an easy image loses more tokens than a busy one. Compare the facet "
    "maps: where do confidence and entropy disagree?",
}

# Diagnostics the app knows by name: (panel title, colour-bar label). Unknown names are shown
# with their raw name, so a new method's diagnostics appear without touching the app.
DIAG_INFO: dict[str, tuple[str, str]] = {
    "entropy_q1": ("Tsallis entropy, q1 term (saliency, q1 > 1)", "normalised entropy"),
    "entropy_q2": ("Tsallis entropy, q2 term (detail, q2 < 1)", "normalised entropy"),
    "entropy": ("Fused entropy: alpha x q1 term + (1 - alpha) x q2 term", "normalised entropy (1 = flat distribution)"),
    "alpha": ("alpha: weight of the q1 term (from the token's norm)", "alpha (q2 term weight = 1 - alpha)"),
    "score": ("Score that ranks tokens", "score"),
    "weight": ("Entropy weight in the k-means (Eq. 5)", "weight"),
    "cluster1": ("1st clustering: cluster rank (0 = most informative)", "cluster rank"),
    "cluster2": ("2nd clustering of pending tokens (0 = pruned first; grey = kept by the 1st pass)", "cluster rank"),
    "edge_energy": ("Sobel edge energy per token", "mean gradient magnitude"),
    "sobel": ("Sobel edge magnitude (pixels)", "gradient magnitude"),
    "confidence": ("Auxiliary head: top-class confidence", "softmax probability"),
    "predicted_class": ("Auxiliary head: predicted class", ""),
    "retained": ("Kept as class context despite qualifying to leave", ""),
    "relation": ("Relation to its class", "relation"),
    "attention_score": ("Attention received", "attention"),
}
# The same name can mean different things in different methods.
DIAG_INFO_BY_METHOD: dict[tuple[str, str], tuple[str, str]] = {
    ("dtop", "entropy"): ("Auxiliary head: prediction entropy", "normalised entropy (1 = uniform over classes)"),
    ("matp", "entropy"): ("Entropy facet: prediction entropy", "normalised entropy (1 = uniform over classes)"),
    ("matp", "confidence"): ("Confidence facet: top-class probability", "softmax probability"),
    ("matp", "relation"): ("Relation facet: similarity to its class's typical token", "cosine, -1..1"),
    ("matp", "score"): ("Multi-faceted score (low = easy, pruned first)", "score"),
    ("matp", "retained"): ("Kept by relation as class context", ""),
    ("lvtp", "score"): ("Score that ranked the 1st-pass clusters", "score"),
}
SCALAR_INFO: dict[str, str] = {
    "n_pending": "tokens pending after LVTP's first pass",
    "threshold": "DToP exit confidence threshold",
    "adaptive_threshold": "MATP adaptive score threshold (alpha x mean score)",
    "n_retained_by_relation": "tokens MATP kept as class context",
}
CATEGORICAL = {"cluster1", "cluster2", "predicted_class", "retained"}
ROBUST = {"sobel", "edge_energy"}  # a few strong edges would flatten the colour scale: clip at the 99th percentile

# Which diagnostics each method-specific tab shows (in this order); anything a method returns
# that no tab lists goes to the generic "signals" tab.
METHOD_TABS: dict[str, dict[str, list[str]]] = {
    "lvtp": {
        "entropy": ["entropy_q1", "entropy_q2", "entropy", "alpha"],
        "edges": ["sobel", "edge_energy"],
        "clusters": ["cluster1", "cluster2", "score", "weight"],
    },
    "dtop": {"exits": ["confidence", "entropy", "predicted_class", "retained"]},
    "matp": {"facets": ["confidence", "entropy", "relation", "score", "predicted_class", "retained"]},
}
VIEW_TABS = ("entropy", "edges", "clusters", "exits", "facets", "signals")
# Distribution plot per method: (diagnostic, scalar drawn as the cut-off line).
HISTOGRAMS: dict[str, tuple[str, str]] = {"dtop": ("confidence", "threshold"), "matp": ("score", "adaptive_threshold")}

STATUS_ORDER = tuple(s.code for s in STATUSES)

# Parameter controls. Generated from each method's params dataclass; these entries refine the
# known ones (range, label, help). kind: slider | int | float | choice | text | bool.
KNOWN_CONTROLS: dict[tuple[str, str], dict[str, Any]] = {
    ("lvtp", "q1"): dict(kind="slider", minimum=1.05, maximum=4.0, step=0.05, label="q1 — saliency index (> 1)",
                         info="Tsallis index that emphasises a token's strongest channels."),
    ("lvtp", "q2"): dict(kind="slider", minimum=0.05, maximum=0.95, step=0.05, label="q2 — detail index (0..1)",
                         info="Tsallis index that emphasises weak channels (fine detail)."),
    ("lvtp", "k"): dict(kind="slider", minimum=2, maximum=16, step=1, label="k — clusters (1st pass)",
                        info="Tokens are grouped into k clusters; high-entropy clusters are kept."),
    ("lvtp", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of pending tokens pruned",
                           info="Of the tokens left undecided, this fraction (weakest edges first) is removed."),
    ("lvtp", "drop"): dict(kind="slider", minimum=0.0, maximum=0.5, step=0.05, label="drop — low-entropy clusters removed outright",
                           info="Fraction of the 1st-pass clusters (lowest entropy) removed without a second chance."),
    ("lvtp", "k2"): dict(kind="slider", minimum=2, maximum=8, step=1, label="k2 — clusters (2nd pass)", advanced=True),
    ("lvtp", "iters"): dict(kind="int", minimum=1, maximum=50, label="k-means iterations", advanced=True),
    ("lvtp", "entropy"): dict(label="entropy (ablation: mtsallis = the paper's)", advanced=True),
    ("lvtp", "second"): dict(label="second pass (ablation: sobel = the paper's)", advanced=True),
    ("random", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of tokens removed"),
    ("evit", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of tokens removed"),
    ("dtop", "threshold"): dict(kind="slider", minimum=0.5, maximum=1.0, step=0.01, label="threshold — exit confidence",
                                info="A token whose top-class probability reaches this leaves with its early prediction."),
    ("dtop", "k"): dict(kind="slider", minimum=0, maximum=20, step=1, label="k — context tokens kept per class"),
    ("matp", "alpha"): dict(kind="slider", minimum=0.1, maximum=2.0, step=0.05, label="alpha — adaptive threshold factor",
                            info="Prune tokens scoring below alpha x this image's mean score."),
    ("matp", "beta"): dict(kind="slider", minimum=0.1, maximum=3.0, step=0.1, label="beta — entropy cap (bits)",
                           info="Never prune a token whose prediction entropy is beta bits or more."),
    ("matp", "k"): dict(kind="slider", minimum=0, maximum=10, step=1, label="k — relation tokens kept per class"),
    ("matp", "criterion"): dict(label="criterion (adaptive = the paper's)"),
    ("matp", "fixed_threshold"): dict(kind="slider", minimum=0.0, maximum=1.0, step=0.01,
                                      label="fixed threshold (criterion = fixed)", advanced=True),
    ("matp", "topk_rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="top-k rate (criterion = topk)", advanced=True),
    ("matp", "weights"): dict(label="facet weights: entropy, 1 - confidence, atypicality", advanced=True),
}


# --------------------------------------------------------------------------------- sessions


@dataclass
class Session:
    """One browser tab's data (kept in ``gr.State``; never in a module global)."""

    image: np.ndarray | None = None  # H x W x 3 uint8, what the models see
    image_name: str = "image.png"
    image_path: str | None = None  # the uploaded file, to re-read with other bands / stretch
    read_as: tuple | None = None  # (bands, stretch) the image was read with
    method: str | None = None  # the method in use (to restore the dropdown after a refused choice)
    runs: int = 0  # analyses started; a run that is no longer the newest does not update the page
    notices: list[str] = field(default_factory=list)
    bands: int = 3
    gt: np.ndarray | None = None
    gt_name: str | None = None
    baseline: Baseline | None = None
    baseline_for: tuple | None = None  # (backbone name, input size): the cache key's other half
    analysis: Analysis | None = None
    backbone_key: tuple | None = None
    points: list[tuple[float, float, int]] = field(default_factory=list)  # SAM prompts (x, y, label)
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None  # first corner of a box being drawn

    def clear_prompts(self) -> None:
        self.points, self.box, self.corner = [], None, None


class CacheBudget:
    """A server-wide bound on the prefix caches sessions keep (``Baseline.x_after``: every
    block's output, ~10 MB for the demo at 512 px, ~0.7 GB for SAM ViT-H at 1024 px).

    ``keep(session)`` after a session stores a baseline: when the caches of all live sessions
    add up to more than ``max_bytes``, the least recently stored ones are dropped (that session's
    next run recomputes its unpruned forward; what it shows stays valid). Sessions are held by
    weak reference, so a session Gradio has let go of (time-to-live) is forgotten here too.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()  # id -> (session, bytes)
        self._lock = threading.Lock()

    @staticmethod
    def size(baseline: Baseline | None) -> int:
        return sum(t.numel() * t.element_size() for t in baseline.x_after) if baseline is not None else 0

    def keep(self, session: Session) -> None:
        with self._lock:
            self._held.pop(id(session), None)
            for key in [k for k, (ref, _) in self._held.items() if ref() is None]:
                del self._held[key]
            self._held[id(session)] = (weakref.ref(session), self.size(session.baseline))
            total = sum(n for _, n in self._held.values())
            while total > self.max_bytes and len(self._held) > 1:
                _, (ref, n) = self._held.popitem(last=False)
                total -= n
                other = ref()
                if other is not None:
                    evict_cache(other)

    def held_bytes(self) -> int:
        with self._lock:
            return sum(n for ref, n in self._held.values() if ref() is not None)


def evict_cache(session: Session) -> None:
    """Drop a session's prefix cache. A run already using it keeps its own reference; the
    analysis on show keeps everything the views need (not the block outputs)."""
    session.baseline, session.baseline_for = None, None
    if session.analysis is not None and session.analysis.baseline.x_after:
        slim = dataclasses.replace(session.analysis.baseline, x_after=[])
        session.analysis = dataclasses.replace(session.analysis, baseline=slim)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would) unless that is set already.

    Gradio runs handlers on a pool of threads; glibc gives each thread its own arena, and the
    multi-megabyte numpy / torch buffers of a run leave every arena fragmented, and the server's
    RSS grows round after round of ``bench/bench_load.py`` (compare a run with
    ``MALLOC_ARENA_MAX=16``, glibc's default on 2 cores), at no gain in latency.
    Call before worker threads exist. Returns whether the cap was applied (False off glibc)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        return False


CACHE_BUDGET = CacheBudget(int(float(os.environ.get("PRUNE_VIZ_CACHE_MB", "2048")) * 2**20))


def store_baseline(session: Session, baseline: Baseline, info_key: tuple) -> None:
    """Keep ``baseline`` as the session's prefix cache, within :data:`CACHE_BUDGET`."""
    session.baseline, session.baseline_for = baseline, info_key
    CACHE_BUDGET.keep(session)


# --------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    name: str
    image: Path
    mask: Path | None


def find_examples(folder: str | Path) -> list[Example]:
    """``folder/*.png`` scenes (``*_mask.png`` are their masks); [] when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(EXAMPLE_GLOB)):
        if path.stem.endswith("_mask"):
            continue
        mask = path.with_name(f"{path.stem}_mask.png")
        out.append(Example(path.stem.replace("_", " "), path, mask if mask.is_file() else None))
    return out


# --------------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class BackboneInfo:
    """What the controls need to know about a backbone, also when its weights are missing."""

    name: str
    input_size: int | None
    num_blocks: int
    global_layers: tuple[int, ...]
    aux_layers: tuple[int, ...]
    default_layers: tuple[int, ...]
    num_classes: int
    loaded: bool
    note: str  # markdown: speed, weights
    missing_help: str = ""  # markdown: how to get the weights, when they are missing
    availability: dict[str, str | None] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.name, self.input_size)


def get_backbone(name: str, input_size: int | None = None) -> Backbone:
    """The shared, read-only model (``build_backbone``'s LRU). ValueError / CheckpointError."""
    name = (name or "").strip()
    check_backbone_name(name)
    return build_backbone(name, input_size=input_size)


def backbone_note(name: str) -> str:
    return BACKBONE_NOTES.get(name) or (BACKBONE_NOTES["timm"] if check_backbone_name(name) is BUILDERS[TIMM_PREFIX] else "")


def checkpoint_help(name: str) -> str:
    """Markdown: how to get missing SAM weights (the server never opens a path typed in a browser)."""
    from .backbones.sam_variants import SAM_VARIANTS

    v = SAM_VARIANTS[name]
    return (
        f"**{name} weights are not on this machine.** To use them, either\n"
        f"1. put the official file `{v.filename}` ({v.size_note}, from {v.url}) in `$PRUNE_VIZ_CHECKPOINTS` "
        f"(here: `{cache_dir()}`; the default is `~/.cache/prune_viz/checkpoints`) and choose the backbone again, or\n"
        f"2. press **Download {name}** below (needs internet; the file is sha256-checked).\n\n"
        "The app never opens a file path typed into the browser."
    )


def missing_weights_message(name: str) -> str:
    """Plain-text version of :func:`checkpoint_help` for API callers."""
    from .backbones.sam_variants import SAM_VARIANTS

    v = SAM_VARIANTS[name]
    return (f"{name} weights are not on this server: put the official file {v.filename} ({v.size_note}, {v.url}) "
            f"in $PRUNE_VIZ_CHECKPOINTS (default ~/.cache/prune_viz/checkpoints) on the server, or use the app's "
            f"Download button when the server is online")


def backbone_info(name: str, sam_size: int | None = None) -> tuple[BackboneInfo, Backbone | None]:
    """Build (or reuse) the backbone and describe it; without weights, describe it from its
    known configuration and say how to get the weights. Unknown names raise ValueError."""
    facts = describe(name, sam_size)
    if not facts.loaded:
        unavailable = {m: (f"needs auxiliary heads, which {facts.name} does not have (use the demo backbone)" if s.needs_aux else None)
                       for m, s in METHODS.items()}
        info = BackboneInfo(facts.name, facts.input_size, facts.num_blocks, facts.global_layers, (), facts.default_layers, 0,
                            False, backbone_note(facts.name), checkpoint_help(facts.name) + f"\n\n<small>{facts.missing}</small>",
                            unavailable)
        return info, None
    bb = get_backbone(facts.name, facts.input_size)
    info = BackboneInfo(facts.name, facts.input_size, facts.num_blocks, facts.global_layers, facts.aux_layers,
                        facts.default_layers, facts.num_classes, True, backbone_note(facts.name), "", method_availability(bb))
    return info, bb


def method_choices(info: BackboneInfo) -> list[tuple[str, str]]:
    """(label, value) per registered method; unavailable ones say why in their label (Gradio
    cannot disable a single dropdown choice)."""
    out = []
    for name in METHODS:
        reason = info.availability.get(name)
        label = name if reason is None else f"{name} — {short_reason(reason)}"
        out.append((label, name))
    return out


def short_reason(reason: str) -> str:
    return "needs auxiliary heads (demo only)" if "auxiliary" in reason else reason


def layer_choices(info: BackboneInfo) -> list[tuple[str, int]]:
    """Pruning layers 1..num_blocks-1, marking SAM's global-attention blocks and aux heads."""
    out = []
    for layer in range(1, info.num_blocks):
        tags = []
        if layer in info.global_layers and len(info.global_layers) < info.num_blocks:
            tags.append("global")
        if layer in info.aux_layers:
            tags.append("aux head")
        out.append((f"{layer} ({', '.join(tags)})" if tags else str(layer), layer))
    return out


def default_layers_for(method: str, info: BackboneInfo) -> list[int]:
    return list(default_layers(get_method(method), info))


def method_explanation(method: str) -> str:
    spec = get_method(method)
    needs = []
    if spec.needs_aux:
        needs.append("auxiliary heads (trained extra classifiers after some blocks)")
    if spec.needs_attention:
        needs.append("the attention maps of the block")
    tail = f"\n\n*Needs:* {', '.join(needs)}." if needs else ""
    return f"**{method}** — {spec.description}\n\n{METHOD_TEACHING.get(method, '')}{tail}"


# --------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamControl:
    """One method parameter as a UI control, derived from the params dataclass."""

    method: str
    name: str
    kind: str  # slider | int | float | choice | text | bool
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""
    advanced: bool = False
    is_int: bool = False
    is_tuple: bool = False


def _control_for(method: str, f: dataclasses.Field, hint: Any) -> ParamControl:
    origin = typing.get_origin(hint)
    default = f.default if f.default is not dataclasses.MISSING else None
    base: dict[str, Any] = dict(label=f.name, default=default)
    if origin is typing.Literal:
        base.update(kind="choice", choices=tuple(typing.get_args(hint)))
    elif hint is bool:
        base.update(kind="bool")
    elif hint is int:
        base.update(kind="int", is_int=True)
    elif hint is float:
        base.update(kind="float")
    elif origin in (tuple, list):
        base.update(kind="text", is_tuple=True, default=", ".join(str(v) for v in (default or ())))
    else:
        base.update(kind="text")
    override = dict(KNOWN_CONTROLS.get((method, f.name), {}))
    if override.get("kind") == "slider" and base.get("is_int"):
        override.setdefault("step", 1)
    base.update(override)
    known = (method, f.name) in KNOWN_CONTROLS
    base.setdefault("advanced", not known)
    return ParamControl(method=method, name=f.name, **base)


def param_controls() -> list[ParamControl]:
    """Every parameter of every registered method, in registry and field order."""
    out = []
    for name, spec in METHODS.items():
        try:
            hints = typing.get_type_hints(spec.params_cls)
        except Exception:  # unresolvable annotations: fall back to the default's type
            hints = {}
        for f in dataclasses.fields(spec.params_cls):
            hint = hints.get(f.name, type(f.default) if f.default is not dataclasses.MISSING else str)
            out.append(_control_for(name, f, hint))
    return out


def values_for(method: str, controls: list[ParamControl], values: list[Any]) -> dict[str, Any]:
    """The chosen method's raw control values -> typed parameter values (ValueError)."""
    out: dict[str, Any] = {}
    for c, v in zip(controls, values):
        if c.method != method or v is None:
            continue
        if c.is_tuple:
            try:
                v = tuple(float(x) for x in str(v).replace("(", "").replace(")", "").split(",") if x.strip())
            except ValueError:
                raise ValueError(f"{c.name} must be numbers separated by commas, got '{v}'") from None
        elif c.is_int:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{c.name} must be a whole number, got {v}")
            v = int(v)
        elif c.kind in ("slider", "float"):
            v = float(v)
        out[c.name] = v
    return out


def parse_params_json(text: str | dict | None) -> dict[str, Any]:
    """The API's params argument: a JSON object like {"rate": 0.5} (empty = defaults)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, dict):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'params must be a JSON object like {{"rate": 0.5}}; could not parse it ({exc.msg})') from None
    if not isinstance(obj, dict):
        raise ValueError(f'params must be a JSON object like {{"rate": 0.5}}, got {type(obj).__name__}')
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}


# --------------------------------------------------------------------------------- loading


def load_input(path: str, bands: tuple[int, int, int] | None = None, stretch: tuple[float, float] = (2.0, 98.0)) -> LoadedImage:
    """``io.load_image`` (InputError with a user-facing message for anything wrong)."""
    return load_image(path, bands=bands, stretch=stretch)


def band_count(path: str) -> int:
    try:
        return int(describe_bands(path)[0])
    except Exception:
        return 3  # load_image will say what is wrong with the file


def load_gt(path: str, session: Session, bb: Backbone | None) -> tuple[np.ndarray | None, list[str]]:
    if session.image is None:
        raise ValueError("load an image before its ground-truth mask")
    if bb is not None and bb.num_classes == 0:
        return None, [f"ground-truth masks need a backbone with semantic classes; {bb.name} outputs anonymous segments, "
                      "so the mask is ignored"]
    num_classes = bb.num_classes if bb is not None else 7
    return load_mask(path, session.image.shape[:2], num_classes, bb.palette if bb is not None else None)


# --------------------------------------------------------------------------------- running


def run_analysis(session: Session, bb: Backbone, info_key: tuple, plan: Plan, current: Any = None) -> Analysis:
    """Pruned forward reusing the session's cached unpruned forward (prefix cache) when it is
    for this image and backbone; no FLOP-counter measurement, no timing repeats.

    ``current``: a callable telling whether this run is still the newest one of the session
    (runs can overlap when a user changes settings during a slow run); a superseded run does
    not overwrite the session's analysis or cache."""
    if session.image is None:
        raise ValueError("load an image first (upload one or click an example)")
    baseline = session.baseline if session.baseline_for == info_key else None
    result = analyze(bb, session.image, plan, gt=session.gt, baseline=baseline, measure=False, repeat=0)
    if current is None or current():
        session.analysis, session.backbone_key = result, info_key
        store_baseline(session, result.baseline, info_key)
    return result


def live_estimate(session: Session, bb: Backbone, info_key: tuple, plan: Plan) -> dict[str, Any] | None:
    """Fast MAC readout from the cached unpruned forward; None when there is none yet."""
    baseline = session.baseline if session.baseline_for == info_key else None
    if baseline is None or session.image is None:
        return None
    t0 = time.perf_counter()
    est = estimate_macs(bb, baseline, plan)
    return estimate_summary(est, (time.perf_counter() - t0) * 1e3)


def estimate_from_scratch(session: Session, bb: Backbone, info_key: tuple, plan: Plan) -> dict[str, Any]:
    """The live readout for a session without a cached forward (API calls): run the unpruned
    forward once, then estimate from it."""
    from .analysis import attention_layers
    from .engine import run_baseline

    if session.image is None:
        raise ValueError("load an image first")
    baseline = run_baseline(bb, session.image, attn_layers=attention_layers(plan))
    store_baseline(session, baseline, info_key)
    t0 = time.perf_counter()
    return estimate_summary(estimate_macs(bb, baseline, plan), (time.perf_counter() - t0) * 1e3)


def estimate_summary(est: dict[str, Any], ms: float | None = None) -> dict[str, Any]:
    macs, base = int(est["macs"]), int(est["baseline"])
    n = est["tokens"][0] if est["tokens"] else 0
    return {
        "macs": macs,
        "flops": 2 * macs,
        "baseline_macs": base,
        "baseline_flops": 2 * base,
        "saved_pct": 100.0 * (base - macs) / base if base else 0.0,
        "exact": bool(est["exact"]),
        "tokens_per_block": list(est["tokens"]),
        "tokens_last_block": est["tokens"][-1] if est["tokens"] else 0,
        "tokens_total": n,
        "estimate_ms": ms,
        "convention": MACS_NOTE,
    }


def g(macs: float) -> str:
    return f"{macs / 1e9:.2f}"


def readout_markdown(summary: dict[str, Any] | None, kind: str = "estimate", extra: str = "") -> str:
    """The MAC / FLOP line above the tabs."""
    if summary is None:
        return "**MACs:** load an image to see the cost of a forward pass."
    how = {
        "estimate": "live estimate" + (" (block MACs exact for one pruning layer; the run adds the method's own arithmetic)"
                                       if summary["exact"] else " (later pruning steps extrapolated until the run finishes)"),
        "exact": "measured on this run (counted MACs of the blocks that ran)",
    }[kind]
    saved = summary["saved_pct"]
    word = "fewer" if saved >= 0 else "more"
    return (
        f"**{g(summary['macs'])} GMACs** = {g(summary['flops'])} GFLOPs per image · **{abs(saved):.1f} % {word}** than the "
        f"unpruned {g(summary['baseline_macs'])} GMACs · last block computes {summary['tokens_last_block']} of "
        f"{summary['tokens_total']} tokens · *{how}*{extra}\n\n"
        f"<small>1 multiply-add = 1 MAC; FLOPs = 2 x MACs; 1 GMAC = 10^9 MACs.</small>"
    )


def report_summary(analysis: Analysis) -> dict[str, Any]:
    m = analysis.report["macs"]
    tokens = [r.tokens for r in analysis.trace.layers]
    return {
        "macs": m["pruned"], "flops": 2 * m["pruned"], "baseline_macs": m["baseline"], "baseline_flops": 2 * m["baseline"],
        "saved_pct": -m["delta_pct"], "exact": True, "tokens_per_block": tokens,
        "tokens_last_block": tokens[-1] if tokens else 0, "tokens_total": analysis.trace.grid[0] * analysis.trace.grid[1],
        "convention": MACS_NOTE,
    }


def json_ready(obj: Any) -> Any:
    """Report dicts -> plain JSON types (numpy scalars, tuples, NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    return obj


# --------------------------------------------------------------------------------- views


def legend_html() -> str:
    """Token-status legend with the same colours as the maps (Okabe-Ito, colour-blind safe)."""
    items = []
    for status in STATUSES:
        r, g_, b = viz.STATUS_COLOURS[status.code]
        items.append(
            f"<span style='display:inline-flex;align-items:center;margin-right:14px;white-space:nowrap'>"
            f"<span style='width:14px;height:14px;background:rgb({r},{g_},{b});border:1px solid #333;"
            f"display:inline-block;margin-right:5px'></span><b>{status.label}</b>"
            f"&nbsp;<span style='opacity:.75'>— {status.meaning}</span></span>"
        )
    return "<div style='line-height:1.9'>" + " ".join(items) + "</div>"


def class_legend_html(seg) -> str:
    if seg.kind != "semantic" or seg.palette is None:
        return ("<small>Colours are anonymous segments (SAM masks or feature clusters): the same colour in "
                "the two images need not be the same segment.</small>")
    items = []
    for name, (r, g_, b) in zip(seg.class_names, seg.palette):
        items.append(f"<span style='display:inline-flex;align-items:center;margin-right:12px'>"
                     f"<span style='width:14px;height:14px;background:rgb({r},{g_},{b});border:1px solid #333;"
                     f"display:inline-block;margin-right:4px'></span>{name}</span>")
    return "<div>" + " ".join(items) + "</div>"


def token_map_view(analysis: Analysis, layer: int, num_blocks: int, patch: int) -> tuple[np.ndarray, str]:
    """Token map after block ``layer`` and a caption counting each status."""
    trace = analysis.trace
    img = analysis.model_image
    grid = trace.status_at(layer)
    n = grid.size
    counts = {s: int((grid == s).sum()) for s in STATUS_ORDER}
    going_on = counts[KEPT] + counts[PENDING_KEPT]
    step = next((s for s in trace.steps if s.layer == layer), None)
    if layer >= num_blocks:
        head = f"**After the last block ({layer})**: {going_on} of {n} tokens reach the decoder with fresh features"
    else:
        head = f"**After block {layer}**: {going_on} of {n} tokens ({100 * going_on / n:.0f} %) go on into block {layer + 1}"
    if step is not None:
        parts = [f"{counts[s]} {STATUS_LABELS[s]}" for s in STATUS_ORDER if counts[s]]
        tail = f" — pruning layer: {', '.join(parts)}."
    elif layer < trace.plan_layers[0]:
        tail = f" — no pruning yet (first pruning layer: {trace.plan_layers[0]})."
    else:
        tail = " — no decision at this layer; grey tokens were removed earlier."
    k = max(1, -(-480 // img.shape[1]))  # small model inputs (timm at 224 px) drawn larger, token for token
    if k > 1:
        img = np.repeat(np.repeat(img, k, axis=0), k, axis=1)
    return viz.token_status_map(img, grid, patch * k), head + tail


def depth_view(analysis: Analysis, num_blocks: int, patch: int, width: int = 420) -> np.ndarray:
    """Token depth / exit stages: the last block each token went through."""
    trace = analysis.trace
    img, patch = scaled_model_image(analysis, width, patch)
    layers = sorted({int(v) for v in np.unique(trace.drop_layer)})
    colours = dict(zip(layers, viz.discrete_colours(len(layers), "viridis")))
    cats = []
    for layer in layers:
        if layer >= num_blocks:
            name = f"all {num_blocks} blocks"
        else:
            exited = bool(trace.exited[trace.drop_layer == layer].any())
            name = f"{'exited' if exited else 'left'} after {layer}"
        cats.append((name, colours[layer]))
    body = viz.category_overlay(img, trace.drop_layer.astype(np.int32), patch, colours)
    title = ("Exit stages: where each token left (its prediction was fixed there)" if trace.exited.any()
             else "Token depth: the last block each token went through")
    return viz.titled_panel(body, title, viz.colorbar(width, categories=cats), width=width)


def scaled_model_image(analysis: Analysis, width: int, patch: int) -> tuple[np.ndarray, float]:
    """The model-input image scaled to ``width`` px and the token size at that scale."""
    img = analysis.model_image
    scale = width / img.shape[1]
    return _resize(img, (max(1, round(img.shape[0] * scale)), width)), patch * scale


def diag_info(method: str, name: str) -> tuple[str, str]:
    """(title, colour-bar label) of a diagnostic; its raw name for unknown ones."""
    return DIAG_INFO_BY_METHOD.get((method, name)) or DIAG_INFO.get(name) or (name, name)


def _diag_panel(name: str, value: np.ndarray, img: np.ndarray, patch: float, grid: tuple[int, int], seg_classes, width: int,
                method: str = "") -> np.ndarray:
    title, unit = diag_info(method, name)
    if value.shape == grid:
        if name in CATEGORICAL:
            ids = np.where(np.isfinite(value), value, -1).astype(np.int32)
            present = sorted(int(v) for v in np.unique(ids) if v >= 0)
            if name == "predicted_class" and seg_classes is not None:
                names, palette = seg_classes
                colours = {c: tuple(int(x) for x in palette[c % len(palette)]) for c in present}
                cats = [(names[c] if c < len(names) else str(c), colours[c]) for c in present]
            elif name == "retained":
                colours = {0: (90, 90, 90), 1: (230, 159, 0)}
                cats = [("no", colours[0]), ("yes: kept for context", colours[1])]
            else:
                cols = viz.discrete_colours(len(present), "viridis")
                colours = dict(zip(present, cols))
                cats = [(str(c), colours[c]) for c in present]
            body = viz.category_overlay(img, ids, patch, colours)
            return viz.titled_panel(body, title, viz.colorbar(width, categories=cats, label=unit), width=width)
        hi = float(np.nanpercentile(value, 99)) if name in ROBUST else None
        body, lo, hi = viz.value_overlay(img, value, patch, "viridis", vmax=hi)
        if name in ROBUST:
            unit += " (top 1 % clipped)"
    else:  # pixel-level map (e.g. Sobel) over the model input (padding cropped), scaled like the image
        full_h, full_w = round(grid[0] * patch), round(grid[1] * patch)
        v = _resize(value.astype(np.float32), (full_h, full_w))[: img.shape[0], : img.shape[1]]
        body, lo, hi = viz.value_overlay(img, v, None, "cividis", vmax=float(np.percentile(v, 99)), alpha=0.9)
        unit += " (top 1 % clipped)"
    bar = viz.colorbar(width, "cividis" if value.shape != grid else "viridis", lo, hi, unit)
    return viz.titled_panel(body, title, bar, width=width)


def diagnostics_panels(
    analysis: Analysis, step: StepRecord, names: list[str], patch: int, ncols: int = 2, width: int = 340
) -> np.ndarray | None:
    """One tiled image of the named per-token / per-pixel diagnostics of one pruning step."""
    img, patch = scaled_model_image(analysis, width, patch)
    seg = analysis.baseline.seg
    classes = (seg.class_names, seg.palette) if seg.kind == "semantic" and seg.palette is not None else None
    panels = []
    for name in names:
        value = step.diagnostics.get(name)
        if not isinstance(value, np.ndarray) or value.ndim != 2 or not np.isfinite(value).any():
            continue
        panels.append(_diag_panel(name, value, img, patch, analysis.trace.grid, classes, width, analysis.trace.method))
    if not panels:
        return None
    return viz.tile(panels, ncols)


def tabs_for(method: str, diagnostics: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Tab id -> diagnostics to draw; a method without its own tabs gets "signals" (all maps)."""
    tabs = {k: list(v) for k, v in METHOD_TABS.get(method, {}).items()}
    if diagnostics is not None:
        listed = {n for names in tabs.values() for n in names}
        rest = [n for n, v in diagnostics.items() if isinstance(v, np.ndarray) and v.ndim == 2 and n not in listed]
        if rest:
            tabs["signals"] = rest
    elif method not in METHOD_TABS:
        tabs["signals"] = []
    return tabs


def scalar_rows(trace: Trace) -> list[list[Any]]:
    rows = []
    for s in trace.steps:
        for name, value in s.diagnostics.items():
            if isinstance(value, (int, float, np.floating, np.integer)) or (isinstance(value, np.ndarray) and value.ndim == 0):
                rows.append([s.layer, name, round(float(value), 4), SCALAR_INFO.get(name, "")])
        rows.append([s.layer, "decision time", round(s.decide_ms, 1), "ms spent choosing the tokens"])
    return rows


def histogram_figure(step: StepRecord, method: str) -> dict | None:
    """Plotly figure (as a JSON-ready dict) of the score a method thresholds, with its cut-off line."""
    if method not in HISTOGRAMS:
        return None
    name, line = HISTOGRAMS[method]
    values = step.diagnostics.get(name)
    if not isinstance(values, np.ndarray):
        return None
    v = values[np.isfinite(values)].ravel()
    title, unit = diag_info(method, name)
    fig = {
        "data": [{"type": "histogram", "x": v.round(5).tolist(), "nbinsx": 40, "marker": {"color": BLUE}, "name": name}],
        "layout": {
            "title": {"text": f"{title} — tokens alive at layer {step.layer}"},
            "xaxis": {"title": {"text": unit or name}}, "yaxis": {"title": {"text": "tokens"}},
            "height": 300, "margin": {"l": 50, "r": 20, "t": 50, "b": 40}, "showlegend": False,
        },
    }
    cut = step.diagnostics.get(line)
    if isinstance(cut, (float, int)):
        fig["layout"]["shapes"] = [_vline(float(cut), VERMILLION, "solid", 3)]
        fig["layout"]["annotations"] = [{"x": float(cut), "y": 1, "xref": "x", "yref": "paper", "yanchor": "bottom",
                                         "text": f"{line} = {float(cut):.3g}", "showarrow": False}]
    return fig


def layer_views(analysis: Analysis, layer: int, num_blocks: int, patch: int) -> dict[str, Any]:
    """Everything that follows the layer slider: token map, caption, method tabs, histogram."""
    trace = analysis.trace
    token_img, caption = token_map_view(analysis, int(layer), num_blocks, patch)
    out: dict[str, Any] = {"token_map": token_img, "token_caption": caption}
    step = trace.step_at(int(layer))
    tabs = tabs_for(trace.method, step.diagnostics if step is not None else {})
    for tab in VIEW_TABS:
        names = tabs.get(tab)
        out[tab] = diagnostics_panels(analysis, step, names, patch) if names and step is not None else None
    out["tabs"] = {tab: tab in tabs for tab in VIEW_TABS}
    out["histogram"] = histogram_figure(step, trace.method) if step is not None else None
    if step is not None and step.layer != int(layer):
        out["panel_note"] = f"Method signals shown for pruning layer {step.layer} (the last one at or before layer {layer})."
    else:
        out["panel_note"] = f"Method signals at pruning layer {layer}." if step is not None else "This method has no per-token signals."
    return out


def segmentation_views(analysis: Analysis, image: np.ndarray) -> dict[str, Any]:
    """Before / after colour maps, change map over the image, caption."""
    from .metrics import match_segments

    before, after = analysis.baseline.seg, analysis.trace.seg
    a_labels = after.labels
    if after.kind == "segments":
        a_labels = match_segments(after.labels, before.labels)
    img = image if image.shape[:2] == before.labels.shape else _resize(image, before.labels.shape)
    cb = viz.colorize_labels(before.labels, before.palette)
    ca = viz.colorize_labels(a_labels, after.palette if after.kind == "semantic" else before.palette)
    changed = before.labels != a_labels
    frac = float(changed.mean())
    cap = (f"**{100 * frac:.2f} %** of the pixels changed class after pruning (vermillion on the right-hand map)."
           if after.kind == "semantic" else
           f"**{100 * frac:.2f} %** of the pixels changed segment after pruning (segments matched first).")
    return {
        "pair": (viz.blend(img, cb, 0.6), viz.blend(img, ca, 0.6)),
        "change": viz.change_map(img, before.labels, a_labels),
        "legend": class_legend_html(before),
        "caption": cap,
        "changed_fraction": frac,
    }


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def metrics_rows(analysis: Analysis, changed_fraction: float | None = None) -> list[list[str]]:
    """[quantity, value, meaning] rows; every number states its unit."""
    r = analysis.report
    m, met = r["macs"], r["metrics"]
    parts = m["pruned_parts"]
    trace = analysis.trace
    n = trace.grid[0] * trace.grid[1]
    last = trace.layers[-1].tokens if trace.layers else n

    def num(v, fmt="{:.3f}"):
        return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    rows = [
        ["MACs, unpruned", f"{g(m['baseline'])} GMACs ({g(2 * m['baseline'])} GFLOPs)", "1 multiply-add = 1 MAC; FLOPs = 2 x MACs"],
        ["MACs, pruned", f"{g(m['pruned'])} GMACs ({g(2 * m['pruned'])} GFLOPs)",
         "whole forward: embedding, blocks, aux heads, decision, decoder"],
        ["MAC change", f"{m['delta_pct']:+.1f} %", "negative = saved"],
        ["  of which blocks", f"{g(parts['blocks'])} GMACs", "transformer blocks on the tokens still alive"],
        ["  of which method", f"{parts['decision'] / 1e6:.1f} MMACs",
         "the pruning decision's own arithmetic (entropy, clustering, attention statistics)"],
        ["  of which aux heads", f"{parts['aux_heads'] / 1e6:.1f} MMACs", "auxiliary classifiers (DToP / MATP)"],
        ["Tokens in the last block", f"{last} of {n} ({100 * last / n:.0f} %)", "16 x 16 px patches still computed at the end"],
        ["Agreement with unpruned (mIoU)", num(met.get("agreement_miou")), "1 = same segmentation as without pruning"],
        ["Boundary F vs unpruned", num(met.get("boundary_f1_vs_unpruned")), "1 = same borders (2 px tolerance)"],
    ]
    if changed_fraction is not None:
        rows.append(["Pixels changed", f"{100 * changed_fraction:.2f} %", "pixels whose label differs from the unpruned run"])
    if met.get("miou") is not None:
        d = 100 * (met["miou"] - met["miou_baseline"])
        rows += [
            ["mIoU vs ground truth, pruned", num(met["miou"]), "0..1, higher is better"],
            ["mIoU vs ground truth, unpruned", num(met["miou_baseline"]), "0..1"],
            ["mIoU change", f"{d:+.2f} points", "points = percentage points of mIoU"],
            ["Boundary F vs ground truth", num(met.get("boundary_f1")), "0..1, borders within 2 px"],
            ["gamma (LVTP Eq. 11)", num(met.get("gamma"), "{:.2f}"),
             "% MACs saved per mIoU point lost (higher = better trade; — when mIoU did not drop)"],
        ]
    else:
        rows.append(["mIoU vs ground truth", "—", "give a ground-truth mask to get mIoU and gamma"])
    rows += [
        ["Unpruned forward", f"{analysis.baseline.time_ms:.0f} ms", "wall time on this server (cached per image)"],
        ["Pruned forward", f"{trace.time_ms:.0f} ms",
         "wall time; blocks before the first pruning layer reused from the cache" if trace.from_cache else "wall time"],
    ]
    return rows


# Plotly figures are built as plain JSON-ready dicts: plotly's Figure objects validate every
# property in Python, which costs more than the pruned forward on this app's budget.
BLUE, ORANGE, GREY, VERMILLION = "rgb(0,114,178)", "rgb(230,159,0)", "rgb(150,150,150)", "rgb(213,94,0)"


def _vline(x: float, colour: str, dash: str = "dot", width: int = 2) -> dict:
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": "x", "yref": "paper",
            "line": {"color": colour, "dash": dash, "width": width}}


def _figure(traces: list[dict], title: str, ytitle: str, xtitle: str = "block (layer, 1-based)", height: int = 340) -> dict:
    return {
        "data": traces,
        "layout": {
            "title": {"text": title}, "xaxis": {"title": {"text": xtitle}}, "yaxis": {"title": {"text": ytitle}},
            "height": height, "margin": {"l": 60, "r": 20, "t": 50, "b": 80}, "barmode": "group", "hovermode": "x unified",
            "legend": {"orientation": "h", "x": 1, "y": -0.22, "xanchor": "right", "yanchor": "top"},
        },
    }


def charts(analysis: Analysis) -> tuple[dict, dict, dict]:
    """Plotly figures (JSON-ready dicts): tokens per block, MACs per block (unpruned vs pruned),
    cumulative MACs through the forward."""
    trace = analysis.trace
    layers = [r.layer for r in trace.layers]
    n = trace.grid[0] * trace.grid[1]
    f1 = _figure(
        [{"type": "bar", "x": layers, "y": [r.tokens for r in trace.layers], "name": "pruned run", "marker": {"color": BLUE}},
         {"type": "scatter", "x": layers, "y": [n] * len(layers), "name": "unpruned", "mode": "lines",
          "line": {"color": GREY, "dash": "dash"}}],
        "Patch tokens entering each block (dotted: pruning after that layer)", "tokens")
    f1["layout"]["shapes"] = [_vline(layer + 0.5, ORANGE) for layer in trace.plan_layers]

    base = [round(r.macs_baseline / 1e9, 5) for r in trace.layers]
    pruned = [round(r.macs / 1e9, 5) for r in trace.layers]
    f2 = _figure(
        [{"type": "bar", "x": layers, "y": base, "name": "unpruned", "marker": {"color": GREY}},
         {"type": "bar", "x": layers, "y": pruned, "name": "pruned", "marker": {"color": BLUE}}],
        "MACs per block", "GMACs (1 multiply-add = 1 MAC)")

    parts = analysis.report["macs"]["pruned_parts"]
    embed, decode = parts["embed"] / 1e9, parts["decode"] / 1e9
    xs = ["embed"] + [str(layer) for layer in layers] + ["decode"]
    cb = np.cumsum([embed] + base + [decode]).round(4).tolist()
    cp = np.cumsum([embed] + pruned + [decode + (parts["aux_heads"] + parts["decision"]) / 1e9]).round(4).tolist()
    f3 = _figure(
        [{"type": "scatter", "x": xs, "y": cb, "name": f"unpruned: {analysis.baseline.macs / 1e9:.2f} GMACs",
          "mode": "lines+markers", "line": {"color": GREY}},
         {"type": "scatter", "x": xs, "y": cp, "name": f"pruned: {parts['total'] / 1e9:.2f} GMACs",
          "mode": "lines+markers", "line": {"color": BLUE}}],
        "Cumulative MACs through the forward (pruned total includes aux heads and the decision)", "GMACs, cumulative",
        xtitle="stage")
    return f1, f2, f3


def full_views(analysis: Analysis, image: np.ndarray, layer: int, num_blocks: int, patch: int) -> dict[str, Any]:
    """Every view of one analysis (what the first run and each re-run draw)."""
    out = layer_views(analysis, layer, num_blocks, patch)
    seg = segmentation_views(analysis, image)
    out["seg"] = seg
    out["depth"] = depth_view(analysis, num_blocks, patch)
    out["metrics"] = metrics_rows(analysis, seg["changed_fraction"])
    out["scalars"] = scalar_rows(analysis.trace)
    out["charts"] = charts(analysis)
    out["readout"] = readout_markdown(report_summary(analysis), "exact")
    return out


# --------------------------------------------------------------------------------- compare


def rate_field(method: str) -> str | None:
    return "rate" if "rate" in param_names(get_method(method)) else None


def match_budget(
    bb: Backbone, baseline: Baseline, method: str, layers: Any, seed: int, target_pct: float, values: dict[str, Any],
    iters: int = 12, max_rate: float = 0.95,
) -> tuple[Plan, str]:
    """Bisect the method's ``rate`` so the estimated MAC reduction hits ``target_pct``.
    Methods without a rate run at their settings (the note says so)."""
    field_name = rate_field(method)
    plan = make_plan(bb, method, layers, seed, values)
    if field_name is None:
        return plan, "no rate parameter: shown at its settings, not at the budget"

    def reduction(rate: float) -> tuple[float, Plan]:
        p = make_plan(bb, method, layers, seed, {**values, field_name: rate})
        est = estimate_macs(bb, baseline, p)
        macs = est["macs"]
        if p.method.needs_attention:  # the run also pays for the attention statistics (not in the estimate)
            macs += attention_surcharge(bb, p.layers[0], baseline.prep.grid)
        return 100.0 * (est["baseline"] - macs) / est["baseline"], p

    lo, hi = 0.0, max_rate
    r_hi, p_hi = reduction(hi)
    if r_hi < target_pct:
        return p_hi, f"reaches at most {r_hi:.1f} % (rate {hi:.2f})"
    r_lo, p_lo = reduction(lo)
    if r_lo >= target_pct:
        return p_lo, f"already saves {r_lo:.1f} % at rate 0"
    best = p_hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        r, p = reduction(mid)
        if r >= target_pct:
            hi, best = mid, p
        else:
            lo = mid
    return best, f"rate {getattr(best.params, field_name):.3f} chosen for the budget"


@dataclass
class CompareRow:
    method: str
    analysis: Analysis | None
    note: str


def compare_methods(
    session: Session, bb: Backbone, info_key: tuple, methods: list[str], layers: Any, seed: int,
    target_pct: float | None, values_by_method: dict[str, dict[str, Any]] | None = None,
) -> list[CompareRow]:
    """Each method on the session's image (its own defaults, or a matched MAC budget), all
    sharing one cached unpruned forward."""
    if session.image is None:
        raise ValueError("load an image first (upload one or click an example)")
    if len(methods) < 2:
        raise ValueError("choose at least two methods to compare")
    values_by_method = values_by_method or {}
    avail = method_availability(bb)
    rows: list[CompareRow] = []
    for method in methods:
        get_method(method)
        if avail.get(method):
            rows.append(CompareRow(method, None, f"not available on {bb.name}: {avail[method]}"))
            continue
        values = dict(values_by_method.get(method, {}))
        note = ""
        try:
            make_plan(bb, method, layers, seed, values)
            use_layers = layers
        except ValueError as exc:
            use_layers, note = None, f"layers {layers} not usable ({exc}); its default layers used. "
        baseline = session.baseline if session.baseline_for == info_key else None
        if baseline is None:
            from .engine import run_baseline

            baseline = run_baseline(bb, session.image)
            store_baseline(session, baseline, info_key)
        if target_pct is not None:
            plan, budget_note = match_budget(bb, baseline, method, use_layers, seed, float(target_pct), values)
            note += budget_note
        else:
            plan = make_plan(bb, method, use_layers, seed, values)
            note += "defaults"
        result = analyze(bb, session.image, plan, gt=session.gt, baseline=baseline, measure=False, repeat=0)
        rows.append(CompareRow(method, result, note))
    return rows


def compare_views(rows: list[CompareRow], image: np.ndarray, num_blocks: int, patch: int) -> tuple[np.ndarray | None, list[list[Any]]]:
    """One image (row 1: token depth per method; row 2: segmentation after pruning) and a table."""
    done = [r for r in rows if r.analysis is not None]
    table = []
    for r in rows:
        if r.analysis is None:
            table.append([r.method, "—", "—", "—", "—", "—", "—", r.note])
            continue
        rep = r.analysis.report
        met = rep["metrics"]
        table.append([
            r.method, ",".join(map(str, rep["layers_pruned"])), f"{rep['macs']['pruned'] / 1e9:.2f}",
            f"{-rep['macs']['delta_pct']:.1f}", f"{met['agreement_miou']:.3f}",
            "—" if met.get("miou") is None else f"{met['miou']:.3f}",
            "—" if met.get("gamma") is None else f"{met['gamma']:.2f}", r.note,
        ])
    if not done:
        return None, table
    width = 300 if len(done) <= 3 else 240
    depth = [viz.titled_panel(depth_view(r.analysis, num_blocks, patch, width=width), r.method, width=width) for r in done]
    segs = []
    for r in done:
        seg = segmentation_views(r.analysis, image)
        macs = r.analysis.report["macs"]
        segs.append(viz.titled_panel(seg["pair"][1], f"{r.method}: {macs['pruned'] / 1e9:.2f} GMACs "
                                     f"({-macs['delta_pct']:.1f} % saved), {100 * seg['changed_fraction']:.1f} % px changed",
                                     width=width))
    return viz.tile(depth + segs, ncols=len(done)), table


COMPARE_HEADERS = ["method", "layers", "GMACs", "% MACs saved", "agreement mIoU", "mIoU vs GT", "gamma", "note"]


# --------------------------------------------------------------------------------- SAM prompts


def display_scale(image: np.ndarray, max_side: int = 1024) -> float:
    return min(1.0, max_side / max(image.shape[:2]))


def prompt_image(session: Session, max_side: int = 1024) -> np.ndarray | None:
    """The image (at most ``max_side`` px) with the session's prompts drawn on it."""
    if session.image is None:
        return None
    s = display_scale(session.image, max_side)
    img = session.image if s == 1.0 else _resize(session.image, (round(session.image.shape[0] * s), round(session.image.shape[1] * s)))
    pts = [(x * s, y * s, lab) for x, y, lab in session.points]
    box = tuple(v * s for v in session.box) if session.box else None
    corner = (session.corner[0] * s, session.corner[1] * s) if session.corner else None
    return viz.draw_prompts(img, pts, box, corner)


def add_click(session: Session, xy: tuple[float, float], mode: str, max_side: int = 1024) -> str:
    """A click on the displayed image (display pixels) -> a prompt in original pixels."""
    if session.image is None:
        raise ValueError("load an image first")
    s = display_scale(session.image, max_side)
    x, y = float(xy[0]) / s, float(xy[1]) / s
    if mode.startswith("box"):
        if session.corner is None:
            session.corner = (x, y)
            return "First box corner set: click the opposite corner."
        (x0, y0), session.corner = session.corner, None
        session.box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
        return f"Box set: ({session.box[0]:.0f}, {session.box[1]:.0f}) – ({session.box[2]:.0f}, {session.box[3]:.0f})."
    label = 0 if mode.startswith("background") else 1
    session.points.append((x, y, label))
    return f"{len(session.points)} point(s) set."


def set_box(session: Session, x0: float, y0: float, x1: float, y1: float) -> None:
    if session.image is None:
        raise ValueError("load an image first")
    h, w = session.image.shape[:2]
    vals = [float(v) for v in (x0, y0, x1, y1)]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError("box corners must be numbers")
    x0, y0, x1, y1 = vals
    box = (max(0.0, min(x0, x1)), max(0.0, min(y0, y1)), min(float(w), max(x0, x1)), min(float(h), max(y0, y1)))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ValueError(f"the box is empty inside the {w} x {h} image")
    session.box, session.corner = box, None


def sam_predict(session: Session, bb: Backbone, info_key: tuple) -> tuple[np.ndarray, np.ndarray, str]:
    """Prompted masks from the unpruned and the pruned image embeddings of the last analysis,
    which must come from this backbone at this input size (``info_key``)."""
    if not bb.supports_prompts:
        raise ValueError("prompts need a SAM backbone: choose sam_vit_b, sam_vit_l or sam_vit_h")
    a = session.analysis
    if a is None or session.image is None or session.backbone_key != info_key:
        raise ValueError(f"run the analysis with {info_key[0]} at {info_key[1]} px first (or wait until it has finished)")
    if not session.points and session.box is None:
        raise ValueError("click on the image to add a point (or draw a box) first")
    pts = np.array([(x, y) for x, y, _ in session.points], dtype=np.float64) if session.points else None
    labels = np.array([lab for _, _, lab in session.points]) if session.points else None
    box = np.array(session.box) if session.box is not None else None
    m0, s0 = bb.predict_masks(a.baseline.seg, a.baseline.prep, pts, labels, box)
    m1, s1 = bb.predict_masks(a.trace.seg, a.baseline.prep, pts, labels, box)
    inter, union = np.logical_and(m0, m1).sum(), np.logical_or(m0, m1).sum()
    iou = float(inter / union) if union else 1.0
    base = viz.draw_prompts(session.image, session.points, session.box)
    before = viz.mask_overlay(base, m0, (0, 114, 178))
    after = viz.mask_overlay(base, m1, (230, 159, 0))
    text = (f"Unpruned mask: {int(m0.sum())} px (SAM's predicted IoU {s0:.2f}); pruned: {int(m1.sum())} px (predicted IoU "
            f"{s1:.2f}). **IoU between the two masks: {iou:.3f}** (1 = pruning did not change the answer).")
    return before, after, text


# --------------------------------------------------------------------------------- PNG transport

PNG_DIR = Path(tempfile.gettempdir()) / "prune_viz_png"
_PNG_MAX_AGE_S = 600.0


def write_png(rgb: np.ndarray | None, folder: Path = PNG_DIR) -> str | None:
    """H x W x 3 uint8 -> a PNG file (fast zlib level 1), its path returned.

    Gradio encodes returned arrays as PNG at zlib level 6, which costs several times the whole
    pruned forward for the page's ~10 maps; a file written here is only hashed and copied into
    Gradio's cache. Files older than ten minutes are removed as new ones are written (Gradio
    has copied them by then)."""
    import uuid

    if rgb is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = viz.write_png(folder / f"{uuid.uuid4().hex}.png", rgb, fast=True)
    if uuid.uuid4().int % 50 == 0:  # now and then, not on every call
        now = time.time()
        for old in folder.glob("*.png"):
            try:
                if now - old.stat().st_mtime > _PNG_MAX_AGE_S:
                    os.unlink(old)
            except OSError:
                pass
    return str(path)


_ENCODER = None  # a small thread pool shared by all sessions (OpenCV releases the GIL while encoding)


def write_pngs(images: list[np.ndarray | None]) -> list[str | None]:
    """:func:`write_png` for several images, two at a time."""
    global _ENCODER
    if len(images) < 2:
        return [write_png(im) for im in images]
    if _ENCODER is None:
        from concurrent.futures import ThreadPoolExecutor

        _ENCODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="png")
    return list(_ENCODER.map(write_png, images))


# --------------------------------------------------------------------------------- export


def cli_command(backbone: str, input_size: int | None, plan: Plan, image_name: str = "input.png", mask_name: str | None = None) -> str:
    """The CLI line that reproduces a run (scalar parameters; tuples cannot be given there)."""
    parts = ["python -m prune_viz analyze", image_name, "--out out", f"--backbone {backbone}"]
    if input_size and input_size != input_size_for(backbone, None):
        parts.append(f"--input-size {input_size}")
    parts += [f"--method {plan.method.name}", f"--layers {','.join(map(str, plan.layers))}"]
    notes = []
    for f in dataclasses.fields(plan.params):
        v = getattr(plan.params, f.name)
        if isinstance(v, (tuple, list)):
            if v != f.default:
                notes.append(f"# {f.name}={list(v)} is not settable from the command line (default {list(f.default)})")
            continue
        parts.append(f"--{f.name.replace('_', '-')} {v}")
    parts.append(f"--seed {plan.seed}")
    if mask_name:
        parts.append(f"--mask {mask_name}")
    return " ".join(parts) + "\n" + "".join(n + "\n" for n in notes)


def export_zip(
    session: Session, bb: Backbone, info: BackboneInfo, root: str | Path | None = None,
    extra_pngs: dict[str, np.ndarray] | None = None,
) -> Path:
    """report.json, the PNGs of ``save_outputs``, the token-depth and change maps and the method's
    signal panels per pruning layer, the input (and mask) the run saw, and command.txt with the
    CLI line that reproduces it, zipped."""
    a = session.analysis
    if a is None or session.image is None:
        raise ValueError("run an analysis first")
    root = Path(root or Path(tempfile.gettempdir()) / "prune_viz_exports")
    root.mkdir(parents=True, exist_ok=True)
    _clean_old(root, max_age_s=3600)
    work = Path(tempfile.mkdtemp(prefix="run_", dir=root))
    out = work / "prune_viz_run"
    save_outputs(a, out, session.image, bb.patch_size)
    viz.write_png(out / "input.png", session.image)
    mask_name = None
    if session.gt is not None:
        mask_name = "mask.png"
        viz.write_png(out / mask_name, session.gt.astype(np.uint8))
    extra = dict(extra_pngs or {})
    extra["token_depth"] = depth_view(a, bb.num_blocks, bb.patch_size)
    extra["change_map"] = segmentation_views(a, session.image)["change"]
    for step in a.trace.steps:
        for tab, names in tabs_for(a.trace.method, step.diagnostics).items():
            extra[f"{tab}_L{step.layer}"] = diagnostics_panels(a, step, names, bb.patch_size)
    for name, rgb in extra.items():
        if rgb is not None:
            viz.write_png(out / f"{name}.png", rgb)
    plan = Plan(get_method(a.report["method"]), plan_params(a.report["method"], a.report["params"]),
                tuple(a.report["layers_pruned"]), int(a.report["seed"]))
    (out / "command.txt").write_text(
        "# Reproduce this run from inside this folder:\n" + cli_command(info.name, info.input_size, plan, "input.png", mask_name)
    )
    zpath = work / f"prune_viz_{info.name.replace(':', '_')}_{plan.method.name}.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(out.iterdir()):
            z.write(p, f"prune_viz_run/{p.name}")
    shutil.rmtree(out)
    return zpath


def _clean_old(root: Path, max_age_s: float) -> None:
    now = time.time()
    for p in root.iterdir():
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass
