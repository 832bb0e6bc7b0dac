"""A dense, masked stand-in for token pruning on the Swin demo, used only for pruning-aware
training (``prune_viz.train_swin``); the engine's real removal lives in the Swin adapter.

``forward_frozen(model, pixels, stops)``: after layer L, the tokens in ``stops[L]`` stop. From
then on

- their features are held (every later block still computes them, then the result is thrown
  away: so this is *not* a saving, only the same numbers as real removal, at full cost);
- they are masked out as keys of every later window attention (an additive -100 on their
  logits, the same device timm uses for the shifted windows' region mask; exp(-100) ~ 4e-44), so
  the tokens that go on see only each other within their window, as if the stopped ones had
  been removed;
- at a patch merging, the merged token is alive if any of its 2x2 children is (frozen children
  enter the merge with their held features); a merged token whose four children all stopped
  stops too.

The decoder and the auxiliary heads see the held features of stopped tokens, which is what the
engine's scatter-back gives them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .demo_swin_model import SwinUNet

MASK_VALUE = -100.0


def _windows(x: Tensor, ws: tuple[int, int]) -> Tensor:
    """B x H x W x C -> (B * nW) x (ws0 * ws1) x C, timm's window order (batch-major)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws[0], ws[0], w // ws[1], ws[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws[0] * ws[1], c)


def _unwindows(x: Tensor, ws: tuple[int, int], b: int, h: int, w: int) -> Tensor:
    c = x.shape[-1]
    x = x.view(b, h // ws[0], w // ws[1], ws[0], ws[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def masked_block(block: nn.Module, x: Tensor, frozen: Tensor) -> Tensor:
    """One timm ``SwinTransformerBlock`` on B x H x W x C ``x`` with the B x H x W bool
    ``frozen`` tokens held and hidden as keys. Grids must be multiples of the window (the demo's
    are), so no padding is involved."""
    b, h, w, c = x.shape
    ws, shift = tuple(block.window_size), tuple(block.shift_size)
    if h % ws[0] or w % ws[1]:
        raise ValueError(f"grid {h}x{w} is not a multiple of window {ws}")
    y = block.norm1(x)
    f = frozen
    if any(shift):
        y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        f = torch.roll(f, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    yw = _windows(y, ws)
    fw = _windows(f[..., None].to(y.dtype), ws)[..., 0]  # (B * nW) x area
    area = yw.shape[1]
    mask = (fw * MASK_VALUE)[:, None, :].expand(-1, area, -1)
    if block.attn_mask is not None:  # nW x area x area, the same for every image
        mask = mask + block.attn_mask.to(y.dtype).repeat(b, 1, 1)
    attn = _unwindows(block.attn(yw, mask=mask), ws, b, h, w)
    if any(shift):
        attn = torch.roll(attn, shifts=shift, dims=(1, 2))
    out = x + block.drop_path1(attn)
    out = out + block.drop_path2(block.mlp(block.norm2(out)))
    return torch.where(frozen[..., None], x, out)


def merge_frozen(frozen: Tensor) -> Tensor:
    """B x H x W bool -> B x H/2 x W/2: a merged token is frozen only if all four children are."""
    return -F.max_pool2d(-frozen[:, None].float(), 2)[:, 0] > 0.5


def forward_frozen(
    model: SwinUNet, pixels: Tensor, stops: dict[int, Tensor]
) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """B x 3 x H x W -> (B x K x H/p x W/p main logits, {layer: (B x h x w x K aux logits,
    B x h x w bool alive when the head scored them)}).

    stops: layer (1-based) -> B x h x w bool on that layer's grid, tokens that stop after it.
    ``stops = {}`` gives exactly ``model.forward_train`` (tests/test_demo_swin_train.py)."""
    x = model.encoder.patch_embed(pixels)
    frozen = torch.zeros(x.shape[:3], dtype=torch.bool, device=x.device)
    feats: list[Tensor] = []
    aux: dict[int, tuple[Tensor, Tensor]] = {}
    layer = 0
    for s, stage in enumerate(model.encoder.layers):
        if s > 0:
            x = stage.downsample(x)
            frozen = merge_frozen(frozen)
        for block in stage.blocks:
            layer += 1
            x = masked_block(block, x, frozen) if frozen.any() else block(x)
            if str(layer) in model.aux:
                aux[layer] = (model.aux[str(layer)](x), ~frozen)
            if layer in stops:
                if stops[layer].shape != frozen.shape:
                    raise ValueError(f"stops[{layer}] is {tuple(stops[layer].shape)}, the grid is {tuple(frozen.shape)}")
                frozen = frozen | stops[layer]
        feats.append(x.permute(0, 3, 1, 2))
    return model.decoder(feats), aux
