"""The shipped Swin-UNet-style demo segmenter: a small timm Swin Transformer encoder (4 stages),
a light UNet decoder with skip connections from every stage, and per-token auxiliary heads.

Default config (``SwinDemoConfig``), input 512 x 512:

    stage  layers (1-based, across stages)  grid      width  heads  window
    1      1-2                              64 x 64   48     2      8 x 8
    2      3-4   (stage 2 ends at layer 4)  32 x 32   96     4      8 x 8
    3      5-8                              16 x 16   192    8      8 x 8
    4      9-10                             8 x 8     384    16     8 x 8 (one window: no shift)

Patch 8 (not Swin's usual 4) keeps a dense 512 px forward under 0.3 s on 2 CPU threads; every
stage grid is a multiple of the window, so no padding ever enters a window.

Decoder (``UNetDecoder``): each stage output gets its own channel LayerNorm (timm's final
``encoder.norm`` is replaced by the identity: the decoder normalises all four stages alike);
stage 4 is projected by a 1x1 conv, then for stages 3, 2, 1: bilinear 2x upsampling, concat
with the stage's skip, 1x1 conv + GELU, and one residual depthwise-3x3 + pointwise stage.
A 1x1 conv gives K logits on the stage-1 grid (8 px); ``forward`` upsamples them bilinearly
to the input size.

Auxiliary heads (``aux``): ``nn.Linear(C_stage, K)`` applied to each token of the block's
output (B x h x w x C, NHWC as timm gives them) after layers 2, 4, 6, 8 (ends of stages 1, 2, 3
and the middle of stage 3), trained against each token's majority label.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, load_state_dict
from ..data import synthetic

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_SWIN_WEIGHTS = ASSETS / "demo_swin.safetensors"
DEMO_SWIN_CONFIG = ASSETS / "demo_swin.json"

# The ViT demo's classes and colours (both come from the synthetic scenes they are trained on).
CLASS_NAMES: tuple[str, ...] = tuple(synthetic.CLASSES)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(int(v) for v in c) for c in synthetic.PALETTE.tolist())


@dataclass(frozen=True)
class SwinDemoConfig:
    classes: tuple[str, ...] = CLASS_NAMES
    palette: tuple[tuple[int, int, int], ...] = PALETTE
    img_size: int = 512
    patch_size: int = 8
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 4, 2)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: int = 8
    decoder_dims: tuple[int, ...] = (64, 96, 128)  # decoder width after fusing stage 1, 2, 3
    aux_layers: tuple[int, ...] = (2, 4, 6, 8)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict = field(default_factory=dict)  # training config, metrics: carried, not used

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Last layer (1-based, counted across stages) of each stage: (2, 4, 8, 10) by default."""
        out, total = [], 0
        for d in self.depths:
            total += d
            out.append(total)
        return tuple(out)

    def stage_of(self, layer: int) -> int:
        """1-based stage of 1-based ``layer``."""
        for s, end in enumerate(self.stage_ends, start=1):
            if layer <= end:
                return s
        raise ValueError(f"layer {layer} is beyond the last layer {self.stage_ends[-1]}")

    def stage_grids(self) -> tuple[int, ...]:
        g = self.img_size // self.patch_size
        return tuple(g // 2**i for i in range(len(self.depths)))

    def validate(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.decoder_dims) != 3:
            raise ValueError("the demo Swin-UNet has 4 stages (depths, num_heads) and 3 decoder widths")
        for grid in self.stage_grids():
            if grid % self.window_size:
                raise ValueError(f"stage grid {grid} is not a multiple of window {self.window_size}")
        for layer in self.aux_layers:
            self.stage_of(layer)

    @classmethod
    def from_json(cls, path: Path) -> "SwinDemoConfig":
        data = json.loads(Path(path).read_text())
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("classes", "depths", "num_heads", "decoder_dims", "aux_layers", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        if "palette" in data:
            data["palette"] = tuple(tuple(c) for c in data["palette"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position: B x C x H x W -> B x C x H x W."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FuseBlock(nn.Module):
    """B x C_in x H x W -> B x C_out x H x W: 1x1 conv + GELU, then x + pw(GELU(dw3x3(x)))."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1)
        self.dw = nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out)
        self.pw = nn.Conv2d(c_out, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.reduce(x))
        return x + self.pw(F.gelu(self.dw(x)))


class UNetDecoder(nn.Module):
    """Four stage outputs (B x C_s x H_s x W_s, NCHW, coarsest last) -> B x K x H_1 x W_1 logits."""

    def __init__(self, stage_dims: tuple[int, ...], widths: tuple[int, ...], num_classes: int):
        super().__init__()
        self.norms = nn.ModuleList(ChannelNorm(c) for c in stage_dims)
        self.lateral = nn.Conv2d(stage_dims[3], widths[2], 1)
        # fuse[i] fuses the upsampled path with stage i + 1 (i = 2, 1, 0 in order of use)
        ins = (widths[1], widths[2], widths[2])  # path width arriving at stage 1, 2, 3
        self.fuse = nn.ModuleList(FuseBlock(ins[i] + stage_dims[i], widths[i]) for i in range(3))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, stage_features: list[Tensor]) -> Tensor:
        if len(stage_features) != 4:
            raise ValueError(f"the decoder takes 4 stage outputs, got {len(stage_features)}")
        x = self.lateral(self.norms[3](stage_features[3]))
        for i in (2, 1, 0):
            skip = self.norms[i](stage_features[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[i](torch.cat([x, skip], dim=1))
        return self.head(x)


class SwinUNet(nn.Module):
    """timm SwinTransformer encoder + UNet decoder + per-token auxiliary heads."""

    def __init__(self, cfg: SwinDemoConfig | None = None):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        cfg = cfg or SwinDemoConfig()
        cfg.validate()
        self.cfg = cfg
        self.encoder = SwinTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            num_classes=0,
            global_pool="",
        )
        self.encoder.norm = nn.Identity()  # the decoder normalises every stage itself
        k = len(cfg.classes)
        self.decoder = UNetDecoder(cfg.stage_dims, cfg.decoder_dims, k)
        self.aux = nn.ModuleDict(
            {str(layer): nn.Linear(cfg.stage_dims[cfg.stage_of(layer) - 1], k) for layer in cfg.aux_layers}
        )

    def blocks(self) -> list[tuple[int, int, nn.Module]]:
        """(layer, stage, block) for every block, layers and stages 1-based."""
        out, layer = [], 0
        for s, stage in enumerate(self.encoder.layers, start=1):
            for block in stage.blocks:
                layer += 1
                out.append((layer, s, block))
        return out

    def forward_train(self, pixels: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """B x 3 x H x W -> (B x K x H/p x W/p main logits on the stage-1 grid,
        {layer: B x h x w x K auxiliary logits on that layer's grid})."""
        x = self.encoder.patch_embed(pixels)  # B x H/p x W/p x C (NHWC)
        feats: list[Tensor] = []
        aux: dict[int, Tensor] = {}
        layer = 0
        for stage in self.encoder.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                layer += 1
                x = block(x)
                if str(layer) in self.aux:
                    aux[layer] = self.aux[str(layer)](x)
            feats.append(x.permute(0, 3, 1, 2))
        return self.decoder(feats), aux

    def forward(self, pixels: Tensor) -> Tensor:
        """Dense, unpruned: B x 3 x H x W normalised pixels -> B x K x H x W logits."""
        logits, _ = self.forward_train(pixels)
        return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


def save_demo_swin(model: SwinUNet, weights: Path, extra: dict | None = None, half: bool = True) -> None:
    """Write ``weights`` (safetensors, fp16 by default) and the config beside it (.json)."""
    from dataclasses import replace

    from safetensors.torch import save_file

    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    cfg = replace(model.cfg, extra=extra if extra is not None else model.cfg.extra)
    weights.with_suffix(".json").write_text(cfg.to_json())


def build_demo_swin(checkpoint: str | Path | None = None) -> SwinUNet:
    """The shipped Swin demo from ``assets/demo_swin.safetensors`` (or ``checkpoint``), with its
    config from the .json beside the weights; fp32 on the CPU, in eval mode."""
    weights = Path(checkpoint) if checkpoint else DEMO_SWIN_WEIGHTS
    cfg_path = weights.with_suffix(".json")
    if not cfg_path.is_file():
        raise CheckpointError(
            f"Swin demo config not found at {cfg_path}; train it with `python -m prune_viz.train_swin` "
            "or restore assets/ from the repository"
        )
    model = SwinUNet(SwinDemoConfig.from_json(cfg_path))
    state = {k: v.float() for k, v in load_state_dict(weights).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another model size
        raise CheckpointError(f"{weights.name} does not match its config: {str(exc).splitlines()[1].strip()}") from None
    # relative_position_index and attn_mask are buffers timm rebuilds; only parameters must match
    missing = [k for k in missing if not k.endswith(("relative_position_index", "attn_mask"))]
    if missing or unexpected:
        raise CheckpointError(f"{weights.name} does not match its config (missing {missing[:2]}, unexpected {unexpected[:2]})")
    model.weights = weights.name
    model.weights_file = str(weights)  # reports hash it: ``weights: file <sha256[:12]>``
    return model.eval()
