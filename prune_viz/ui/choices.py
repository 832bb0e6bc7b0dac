"""What the controls offer: backbones (described also without weights), methods (unavailable
ones say why), pruning layers, the example scenes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones import BackboneFacts, build_backbone, describe
from ..backbones.base import Backbone
from ..backbones.registry_folder import model_choices
from ..methods import METHODS
from ..params import method_availability


DEFAULT_BACKBONE = "demo"


EXAMPLE_GLOB = "*.png"


BACKBONE_CHOICES: list[tuple[str, str]] = [
    ("demo — shipped demo segmenter (fast, offline)", "demo"),
    ("demo_matp — the demo fine-tuned with MATP's pruning (for matp)", "demo_matp"),
    ("demo_swin — Swin-UNet demo segmenter (hierarchical: token maps per stage)", "demo_swin"),
    ("sam_vit_b — Segment Anything ViT-B (~10 s per forward on 2 cores)", "sam_vit_b"),
    ("sam_vit_l — Segment Anything ViT-L (~30 s per forward)", "sam_vit_l"),
    ("sam_vit_h — Segment Anything ViT-H (~60 s per forward)", "sam_vit_h"),
    ("timm:vit_small_patch16_224 (random weights until downloaded)", "timm:vit_small_patch16_224"),
    ("timm:vit_base_patch16_224 (random weights until downloaded)", "timm:vit_base_patch16_224"),
    ("timm:swin_tiny_patch4_window7_224 — hierarchical Swin-T at 512 px (random weights offline)",
     "timm:swin_tiny_patch4_window7_224"),
]


def backbone_choices() -> list[tuple[str, str]]:
    """The dropdown: the built-in backbones, then the models registered in ``$PRUNE_VIZ_MODELS``
    (read from their sidecars; an unusable one says so, and choosing it shows why)."""
    return BACKBONE_CHOICES + model_choices()


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


def backbone_info(name: str, input_size: int | float | None = None) -> tuple[BackboneFacts, Backbone | None]:
    """Describe the backbone and build (or reuse) it when its weights are here; without them
    the backbone is None and ``facts.missing`` says why. Unknown names raise ValueError."""
    facts = describe(name, input_size)
    backbone = build_backbone(facts.name, input_size=facts.input_size) if facts.loaded else None
    return facts, backbone


def method_choices(facts: BackboneFacts) -> list[tuple[str, str]]:
    """(label, value) per registered method; unavailable ones say why in their label (Gradio
    cannot disable a single dropdown choice)."""
    availability = method_availability(facts)
    out = []
    for name in METHODS:
        reason = availability[name]
        label = name if reason is None else f"{name} — {short_reason(reason)}"
        out.append((label, name))
    return out


def short_reason(reason: str) -> str:
    return "needs auxiliary heads (demo only)" if "auxiliary" in reason else reason


SLIDER_INFO = "Move through the network: pruning layers show the decision, the others who is still computed."


def stage_block(layer: int, stage_ends: tuple[int, ...]) -> str:
    """"stage 2, block 1" for 1-based ``layer`` of a hierarchical backbone."""
    s = sum(1 for end in stage_ends if end < layer)
    return f"stage {s + 1}, block {layer - (stage_ends[s - 1] if s else 0)}"


def layer_slider_info(facts: BackboneFacts) -> str:
    """The layer slider's help; on a hierarchical backbone it also maps blocks to stages."""
    if not facts.stage_ends:
        return SLIDER_INFO
    bounds = [0, *facts.stage_ends, facts.num_blocks]
    stages = " · ".join(f"stage {s + 1}: {bounds[s] + 1}-{bounds[s + 1]}" for s in range(len(bounds) - 1))
    return f"{SLIDER_INFO} Blocks by stage ({stages}); the token grid halves at each stage."


def layer_choices(facts: BackboneFacts) -> list[tuple[str, int]]:
    """Pruning layers 1..num_blocks-1, marking global-attention blocks (among windowed ones)
    and auxiliary heads."""
    out = []
    for layer in range(1, facts.num_blocks):
        tags = []
        if layer in facts.global_layers and len(facts.global_layers) < facts.num_blocks:
            tags.append("global")
        if layer in facts.aux_layers:
            tags.append("aux head")
        if facts.stage_ends:
            tags.insert(0, stage_block(layer, facts.stage_ends))
        out.append((f"{layer} ({', '.join(tags)})" if tags else str(layer), layer))
    return out


# Methods that need parts trained with them: (method, backbone) -> the backbone that has them.
TRAINED_FOR: dict[tuple[str, str], str] = {("matp", "demo"): "demo_matp"}


def backbone_for(method: str, backbone: str) -> tuple[str, str | None]:
    """The backbone a method should run on when chosen in the app, and the notice saying why
    it was switched (None: no switch)."""
    better = TRAINED_FOR.get((method, backbone))
    if better is None:
        return backbone, None
    return better, (f"Switched the backbone to **{better}**: {method} was fine-tuned with its pruning in place, "
                    f"and on the plain {backbone} weights it loses several mIoU points more. Choose {backbone} "
                    f"again to see that.")
