"""A tiny random-weight Swin-UNet with demo_swin's contract, for the Swin tests (fast, offline).

128 px input, patch 4, window 4, depths 2-2-2-2 (stage grids 32, 16, 8, 4; stage ends at layers
2, 4, 6, 8), channels 16-32-64-128, 3 classes; aux heads ``nn.Linear(C_stage, 3)`` at the layers
asked for."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer

from prune_viz.backbones.swin import SwinBackbone, from_swin_unet

STAGE_DIMS = (16, 32, 64, 128)


class TinyDecoder(torch.nn.Module):
    """Stand-in for demo_swin's UNet decoder (the same contract): 4 NCHW stage maps -> logits on
    the stage-1 grid, every stage projected by a 1x1 conv, upsampled and summed."""

    def __init__(self, dims: tuple[int, ...], k: int):
        super().__init__()
        self.proj = torch.nn.ModuleList(torch.nn.Conv2d(d, k, 1) for d in dims)

    def forward(self, stage_features: list[torch.Tensor]) -> torch.Tensor:
        size = stage_features[0].shape[-2:]
        return sum(F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
                   for p, f in zip(self.proj, stage_features))


def tiny_swin_unet(seed: int, aux_layers: tuple[int, ...], name: str, aux_gain: dict[int, float] | None = None) -> SwinBackbone:
    """The tiny Swin-UNet, seeded; aux heads after ``aux_layers`` (layer L of stage s gets
    C_s -> 3), their weights scaled by ``aux_gain[L]`` where given (a sharper head)."""
    torch.manual_seed(seed)
    model = torch.nn.Module()
    model.encoder = SwinTransformer(img_size=128, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                                    window_size=4, num_classes=0)
    model.encoder.norm = torch.nn.Identity()
    model.decoder = TinyDecoder(STAGE_DIMS, 3)
    stage_of = lambda layer: (layer - 1) // 2  # noqa: E731  depths 2-2-2-2
    model.aux = torch.nn.ModuleDict({str(l): torch.nn.Linear(STAGE_DIMS[stage_of(l)], 3) for l in aux_layers}) if aux_layers else None
    with torch.no_grad():
        for layer, gain in (aux_gain or {}).items():
            model.aux[str(layer)].weight.mul_(gain)
    model.cfg = SimpleNamespace(classes=("a", "b", "c"), palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return from_swin_unet(model, name)
