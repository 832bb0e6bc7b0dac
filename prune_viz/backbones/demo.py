"""The shipped demo segmenter: a plain timm ViT (patch 16), a small token-mixing decoder and
auxiliary heads after configurable blocks (DToP's stage boundaries, MATP's scorers).

Heads: LayerNorm (the ViT's final norm for the main decoder) + one Linear that predicts K logits
for each of the s x s sub-cells of the token's 16 x 16 patch (s = 4 gives a 4 px logit grid,
pixel-shuffled then bilinearly upsampled).

Main decoder (v2): before its per-token head, ``mix_depth`` residual stages of a depthwise 3 x 3
convolution + GELU + pointwise Linear run on the gh x gw token grid, *after* the engine scattered
pruned tokens back with the features they had when dropped. A pruned token's prediction can so
borrow from its neighbours (which ran to the end), and each token's prediction depends on its
(2 x mix_depth + 1)^2 neighbourhood. Auxiliary heads stay per-token, so a token that exits early
(DToP) has a prediction of its own; it is final (see ``decode_tokens``), and its frozen features
still serve as context for its neighbours in the mixing stages.

``DemoSegmenter.forward_pruned`` is the batched training forward with real token removal after
chosen layers (the engine's semantics: gather kept tokens, freeze the others, scatter back,
decode; exited tokens take their auxiliary logits), used for pruning-aware training.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, load_state_dict
from ..flops import conv_macs, linear_macs
from .base import Prepared, Segmentation, argmax_channels
from .vit import TimmViT, resize_rgb

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_WEIGHTS = ASSETS / "demo_segmenter.safetensors"
DEMO_CONFIG = ASSETS / "demo_segmenter.json"
DEMO_MATP_WEIGHTS = ASSETS / "demo_matp.safetensors"


@dataclass(frozen=True)
class DemoConfig:
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    img_size: int = 512
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    # 3, 6, 9: DToP's stage boundaries; 8 as well so MATP can prune at its paper's layers 3, 6, 8.
    aux_layers: tuple[int, ...] = (3, 6, 8, 9)
    sub: int = 4  # sub-cells per patch side predicted by each head
    mix_depth: int = 0  # token-mixing stages in the main decoder (0 = v1's per-token head)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict = field(default_factory=dict)  # training config, metrics: carried, not used

    @classmethod
    def from_json(cls, path: Path) -> "DemoConfig":
        data = json.loads(Path(path).read_text())
        keys = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in keys}
        for key in ("classes", "aux_layers", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        if "palette" in data:
            data["palette"] = tuple(tuple(c) for c in data["palette"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class TokenHead(nn.Module):
    """Per-token classifier: N x C -> N x K x (sub*sub) logits."""

    def __init__(self, dim: int, num_classes: int, sub: int, norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc = nn.Linear(dim, num_classes * sub * sub)
        self.num_classes, self.sub = num_classes, sub

    def forward(self, tokens: Tensor) -> Tensor:
        out = self.fc(self.norm(tokens))
        return out.view(*tokens.shape[:-1], self.num_classes, self.sub * self.sub)


class GridMixer(nn.Module):
    """Residual token mixing on the token grid: B x N x C (row-major gh x gw) -> B x N x C.

    Each stage: x + Linear(GELU(depthwise 3x3 conv(x))). Zero padding at the border (a border
    token has fewer neighbours, as in any conv decoder)."""

    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.dw = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1, groups=dim) for _ in range(depth))
        self.pw = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        for pw in self.pw:  # start as the identity: a warm start keeps its per-token decoding
            nn.init.zeros_(pw.weight)
            nn.init.zeros_(pw.bias)

    def forward(self, tokens: Tensor, gh: int, gw: int) -> Tensor:
        b, n, c = tokens.shape
        x = tokens
        for dw, pw in zip(self.dw, self.pw):
            grid = x.transpose(1, 2).reshape(b, c, gh, gw)
            x = x + pw(F.gelu(dw(grid).flatten(2).transpose(1, 2)))
        return x

    def macs(self, gh: int, gw: int) -> int:
        """Multiply-adds for one image (the depthwise convs count every output position)."""
        return sum(conv_macs(dw, gh, gw) for dw in self.dw) + linear_macs(self.pw, gh * gw)


# One pruning step of forward_pruned: (keep B x Nk' positions, exit B x Nk bool or None), or a
# callable from the layer's auxiliary logits (B x Nk x K x s², or None) to that pair.
Step = tuple[Tensor, "Tensor | None"] | Callable[["Tensor | None"], tuple[Tensor, "Tensor | None"]]


@dataclass
class PrunedOutput:
    """What :meth:`DemoSegmenter.forward_pruned` produced.

    logits:  B x N x K x s² final per-token logits (decoder on the scattered-back grid, exited
             tokens replaced by their auxiliary logits)
    aux:     layer -> (B x Nk x K x s² auxiliary logits, B x Nk global indices of those tokens)
    alive:   B x Nf global indices of the tokens that ran through every block
    exited:  B x N bool, tokens that exited with an auxiliary prediction
    """

    logits: Tensor
    aux: dict[int, tuple[Tensor, Tensor]]
    alive: Tensor
    exited: Tensor


class DemoSegmenter(nn.Module):
    """timm VisionTransformer + token-mixing main decoder + auxiliary heads."""

    def __init__(self, cfg: DemoConfig):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.cfg = cfg
        self.vit = VisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
        )
        k = len(cfg.classes)
        self.mixer = GridMixer(cfg.embed_dim, cfg.mix_depth) if cfg.mix_depth > 0 else None
        self.head = TokenHead(cfg.embed_dim, k, cfg.sub, norm=False)  # after vit.norm (+ mixer)
        self.aux_heads = nn.ModuleDict({str(layer): TokenHead(cfg.embed_dim, k, cfg.sub) for layer in cfg.aux_layers})

    def embed(self, pixels: Tensor, offset: tuple[int, int] = (0, 0)) -> Tensor:
        """B x 3 x H x W -> B x (1 + N) x C. ``offset`` (in tokens) selects which window of the
        native position grid a smaller training crop takes, so crops see the same position
        embeddings as the full-size image they were cut from."""
        vit = self.vit
        x = vit.patch_embed(pixels)  # B x h x w x C
        b, h, w, c = x.shape
        g = self.cfg.img_size // self.cfg.patch_size
        pos = vit.pos_embed[:, 1:].view(1, g, g, c)
        if (h, w) != (g, g) or offset != (0, 0):
            oy, ox = offset
            if oy + h > g or ox + w > g:
                raise ValueError(f"crop {h}x{w} tokens at {offset} does not fit the {g}x{g} position grid")
            pos = pos[:, oy : oy + h, ox : ox + w]
        patches = (x + pos).reshape(b, h * w, c)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        return vit.norm_pre(torch.cat([cls, patches], dim=1))

    def decode_tokens(self, patch_grid: Tensor, gh: int, gw: int) -> Tensor:
        """Main decoder: B x N x C block features on the full gh x gw grid (pruned tokens
        scattered back) -> B x N x K x s² logits."""
        x = self.vit.norm(patch_grid)
        if self.mixer is not None:
            x = self.mixer(x, gh, gw)
        return self.head(x)

    def decode_macs(self, gh: int, gw: int) -> int:
        mix = self.mixer.macs(gh, gw) if self.mixer is not None else 0
        return mix + linear_macs(self.head, gh * gw)

    def forward(self, pixels: Tensor, offset: tuple[int, int] = (0, 0)) -> tuple[Tensor, dict[int, Tensor]]:
        """Training forward: B x 3 x H x W -> (main logits B x K x H/4 x W/4, {layer: aux logits})."""
        x = self.embed(pixels, offset)
        gh, gw = pixels.shape[-2] // self.cfg.patch_size, pixels.shape[-1] // self.cfg.patch_size
        aux = {}
        for i, block in enumerate(self.vit.blocks, start=1):
            x = block(x)
            if str(i) in self.aux_heads:
                aux[i] = tokens_to_map(self.aux_heads[str(i)](x[:, 1:]), gh, gw)
        main = tokens_to_map(self.decode_tokens(x[:, 1:], gh, gw), gh, gw)
        return main, aux

    def forward_pruned(
        self,
        pixels: Tensor,
        steps: dict[int, Step],
        offset: tuple[int, int] = (0, 0),
    ) -> PrunedOutput:
        """Forward of B x 3 x H x W ``pixels`` with tokens really removed, as the engine does.

        steps: pruning layer (1-based) -> (keep, exit). ``keep`` is B x Nk' long: positions,
        within the Nk tokens alive before this step, of the tokens that go on (the same count
        for every image, so the batch stays one tensor). ``exit`` is None or B x Nk bool: which
        of the leaving tokens exit with the auxiliary head's prediction of this layer (the
        layer must have a head); the others are pruned. A step may instead be a callable that
        gets this layer's auxiliary logits (B x Nk x K x s², detached; None without a head) and
        returns (keep, exit): decisions that depend on the features, as DToP's do. Leaving
        tokens freeze their features; the decoder sees them scattered back beside the tokens
        that ran to the end.
        """
        x = self.embed(pixels, offset)
        b, c = x.shape[0], x.shape[-1]
        gh, gw = pixels.shape[-2] // self.cfg.patch_size, pixels.shape[-1] // self.cfg.patch_size
        n = gh * gw
        idx = torch.arange(n).expand(b, n)  # global index of each alive token
        full = x.new_zeros(b, n, c)
        exit_logits: Tensor | None = None
        exited = torch.zeros(b, n, dtype=torch.bool)
        aux: dict[int, tuple[Tensor, Tensor]] = {}
        for i, block in enumerate(self.vit.blocks, start=1):
            x = block(x)
            head = self.aux_heads[str(i)] if str(i) in self.aux_heads else None
            if head is not None:
                aux[i] = (head(x[:, 1:]), idx)
            if i not in steps:
                continue
            step = steps[i]
            keep, exit_mask = step(None if head is None else aux[i][0].detach()) if callable(step) else step
            patches = x[:, 1:]
            # Write every alive token's current features: the kept ones are overwritten later.
            full = full.scatter(1, idx[..., None].expand(-1, -1, c), patches)
            if exit_mask is not None:
                if head is None:
                    raise ValueError(f"tokens can only exit after a layer with an auxiliary head, not {i}")
                leaving = torch.ones_like(exit_mask)
                leaving.scatter_(1, keep, False)
                ex = exit_mask & leaving
                logits = aux[i][0]
                if exit_logits is None:
                    exit_logits = logits.new_zeros(b, n, *logits.shape[2:])
                sel = ex.view(b, -1, 1, 1)
                current = exit_logits.gather(1, idx.view(b, -1, 1, 1).expand(-1, -1, *logits.shape[2:]))
                exit_logits = exit_logits.scatter(
                    1, idx.view(b, -1, 1, 1).expand(-1, -1, *logits.shape[2:]), torch.where(sel, logits, current)
                )
                exited = exited.scatter(1, idx, exited.gather(1, idx) | ex)
            x = torch.cat([x[:, :1], patches.gather(1, keep[..., None].expand(-1, -1, c))], dim=1)
            idx = idx.gather(1, keep)
        full = full.scatter(1, idx[..., None].expand(-1, -1, c), x[:, 1:])
        logits = self.decode_tokens(full, gh, gw)
        if exit_logits is not None:
            logits = torch.where(exited[..., None, None], exit_logits, logits)
        return PrunedOutput(logits, aux, idx, exited)


def tokens_to_map(logits: Tensor, gh: int, gw: int) -> Tensor:
    """B x N x K x s² per-token sub-cell logits -> B x K x (gh*s) x (gw*s) logit map."""
    b, n, k, ss = logits.shape
    s = int(round(ss**0.5))
    x = logits.view(b, gh, gw, k, s, s).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, k, gh * s, gw * s)


class DemoBackbone(TimmViT):
    """Engine adapter: blocks and MACs as any timm ViT; prepare, embed, aux and decode own."""

    def __init__(self, model: DemoSegmenter, name: str = "demo"):
        super().__init__(model.vit, name, input_size=model.cfg.img_size)
        self.net = model.eval()
        self.cfg = model.cfg
        self.aux_layers = tuple(model.cfg.aux_layers)
        self.num_classes = len(model.cfg.classes)
        self.mean = torch.tensor(model.cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(model.cfg.std).view(1, 3, 1, 1)
        self.palette = np.array(model.cfg.palette, dtype=np.uint8)
        self.class_names = tuple(model.cfg.classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # heads included

    def default_layers(self) -> tuple[int, ...]:
        return (6,)

    def prepare(self, image: np.ndarray) -> Prepared:
        s = self.cfg.img_size
        resized = resize_rgb(image, s, s)
        # Channels first in memory before the float maths: a permuted view made every later op
        # (this division, the normalisation, the patch embedding's conv) walk 3-strided memory;
        # the same values (checked bit for bit through every method), ~1.7 ms less per forward.
        image01 = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).contiguous().float().div_(255.0)
        g = s // self.patch_size
        # In place where a new tensor would only be thrown away: the same values, one 3 MB
        # allocation (and its page faults) less per step, on the timed path.
        return Prepared((image01[None] - self.mean).div_(self.std), image01, (g, g), (s, s), image.shape[:2])

    def embed(self, prep: Prepared) -> Tensor:
        return self.net.embed(prep.pixels)

    def aux_logits(self, layer: int, patch_tokens: Tensor) -> Tensor | None:
        head = self.net.aux_heads[str(layer)] if str(layer) in self.net.aux_heads else None
        return None if head is None else head(patch_tokens)

    def aux_macs(self, layer: int, n_tokens: int) -> int:
        return linear_macs(self.net.aux_heads[str(layer)], n_tokens) if str(layer) in self.net.aux_heads else 0

    def token_logits(self, patch_grid: Tensor, exit_logits: Tensor | None = None, exited: Tensor | None = None) -> Tensor:
        """1 x N x C (the full grid, pruned tokens scattered back) -> N x K x s² main-decoder
        logits, exited tokens replaced by their exit logits. The mixing stages see every token,
        exited ones included (their frozen features are context); an exited token's own
        prediction stays the auxiliary one, as in DToP (docs/methods/dtop.md)."""
        g = math.isqrt(patch_grid.shape[1])  # prepare() always gives a square grid
        logits = self.net.decode_tokens(patch_grid, g, g)[0]
        if exit_logits is not None and exited is not None:
            logits = torch.where(exited[:, None, None], exit_logits.to(logits.dtype), logits)
        return logits

    def decode(self, patch_grid: Tensor, prefix: Tensor, prep: Prepared, exit_logits=None, exited=None) -> Segmentation:
        logits = self.token_logits(patch_grid, exit_logits, exited)
        labels = logits_to_labels(tokens_to_map(logits[None], *prep.grid), prep.orig_hw)
        return Segmentation(
            labels=labels,
            kind="semantic",
            class_names=tuple(self.cfg.classes),
            palette=self.palette,
            token_logits=logits.mean(-1),
        )

    def decode_macs(self, prep: Prepared) -> int:
        return self.net.decode_macs(*prep.grid)


# Up to this many bytes of upsampled logits are made in one call (7 classes: up to ~1500 x 1500 px).
ONE_CALL_BYTES = 64 << 20


def logits_to_labels(logit_map: Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """1 x K x h x w logits -> out_h x out_w int32 labels (bilinear on logits, then argmax).

    Large outputs go one class at a time (bilinear upsampling treats channels independently),
    so only one upsampled map exists at once: 67 MB for a 4096 x 4096 image instead of 470 MB.
    Small ones (the demo's 512 px) take one call: the same values, without a fresh 1 MB map per
    class (allocation and page faults were a third of this function's time)."""
    logits = logit_map.float()
    k, (h, w) = logits.shape[1], out_hw
    if k * h * w * 4 <= ONE_CALL_BYTES:
        return argmax_channels(F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)[0],
                               torch.int32).numpy()
    maps = (F.interpolate(logits[:, c : c + 1], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
            for c in range(k))
    return argmax_channels(maps, torch.int32).numpy()


def build_demo(checkpoint: str | Path | None = None, config: str | Path | None = None) -> DemoBackbone:
    """The shipped demo segmenter from ``assets/`` (or the given files, or the server-side
    ``PRUNE_VIZ_DEMO_WEIGHTS`` path); weights stay on the CPU. The config is the .json beside
    the weights."""
    env = os.environ.get("PRUNE_VIZ_DEMO_WEIGHTS")
    checkpoint = checkpoint or env
    weights = Path(checkpoint) if checkpoint else DEMO_WEIGHTS
    cfg_path = Path(config) if config else (weights.with_suffix(".json") if checkpoint else DEMO_CONFIG)
    if not cfg_path.is_file():
        raise CheckpointError(
            f"demo model config not found at {cfg_path}; train it with `python -m prune_viz.train` "
            "or restore assets/ from the repository"
        )
    cfg = DemoConfig.from_json(cfg_path)
    model = DemoSegmenter(cfg)
    state = {k: v.float() for k, v in load_state_dict(weights).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another model size
        raise CheckpointError(f"{weights.name} does not match the demo model config: {str(exc).splitlines()[1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights.name} does not match the demo model config (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    backbone = DemoBackbone(model.eval())
    backbone.weights = weights.name
    backbone.weights_file = str(weights)
    return backbone
