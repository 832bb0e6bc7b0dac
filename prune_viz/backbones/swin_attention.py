"""A timm ``SwinTransformerBlock`` on a subset of tokens, and its MACs (pure functions).

The stock block (timm ``swin_transformer.py``) rolls the H x W grid by ``-shift``, cuts it into
ws x ws windows, runs attention inside each window with a relative-position bias
``table[index[q, k]]`` and, in shifted blocks, a region mask (-100 between tokens that came
from different sides of the roll), then rolls back; the MLP is per token.

On a subset (``kept_idx``, row-major positions on the stage's grid) the same arithmetic runs on
the kept tokens only:

* each kept token goes to the window its *shifted* position falls in (no roll of a grid: the
  shift is applied to coordinates);
* inside a window a kept query attends to the kept keys of that window only, with the bias
  gathered for exactly those (query, key) pairs of window-local positions, and the region mask
  of the shifted block recomputed from the two tokens' shifted coordinates (the same -100 the
  stock block adds, so at rate 0 the result is the stock one);
* qkv, proj and the MLP run on the Nk kept tokens in one matmul each.

Windows with the same number of kept tokens are batched together (one fused attention call per
distinct occupancy, no padding), so the arithmetic is exactly sum over windows of n_w^2 pairs and
the loop is over distinct occupancies (at most ws^2), never over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flops import linear_macs
from .base import BlockOutput

MASK_VALUE = -100.0  # what timm's get_attn_mask puts between regions of a shifted window


@dataclass
class WindowLayout:
    """Kept tokens sorted by (occupancy of their window, window, local position), so that the
    windows holding the same number c of kept tokens are one contiguous run of the sorted order.
    order: Nk, position in ``kept_idx`` of the i-th sorted token; local: Nk window-local index
    (row * ws + col) of each sorted token; region: Nk shifted-window region id (None in unshifted
    blocks); buckets: (start, m, c) per distinct occupancy c: sorted tokens start .. start + m*c
    are m windows of c tokens each."""

    order: Tensor
    local: Tensor
    region: Tensor | None
    buckets: list[tuple[int, int, int]]
    counts: Tensor  # kept tokens per window (row-major over the shifted windows)
    full_windows: Tensor  # ids of the windows whose every cell is kept (the last bucket, if any)


def window_layout(kept_idx: Tensor, grid: tuple[int, int], ws: tuple[int, int], shift: tuple[int, int]) -> WindowLayout:
    """Where each kept token sits in the (shifted) window partition of a gh x gw grid."""
    gh, gw = grid
    rows = torch.remainder(kept_idx // gw - shift[0], gh)  # position after timm's roll by -shift
    cols = torch.remainder(kept_idx % gw - shift[1], gw)
    nww = gw // ws[1]
    nw = (gh // ws[0]) * nww
    area = ws[0] * ws[1]
    win = (rows // ws[0]) * nww + cols // ws[1]
    local = (rows % ws[0]) * ws[1] + cols % ws[1]
    counts = torch.bincount(win, minlength=nw)
    order = torch.argsort((counts[win] * nw + win) * area + local)
    local = local[order]
    region = None
    if any(shift):
        # timm labels 3 x 3 regions on the rolled grid: [0, H-ws), [H-ws, H-shift), [H-shift, H)
        r, c = rows[order], cols[order]
        rid = (r >= gh - ws[0]).long() + (r >= gh - shift[0]).long()
        cid = (c >= gw - ws[1]).long() + (c >= gw - shift[1]).long()
        region = rid * 3 + cid
    buckets, start = [], 0
    occupancy, windows = torch.unique(counts, return_counts=True)  # ascending, as the sort
    for c, m in zip(occupancy.tolist(), windows.tolist()):
        if c:
            buckets.append((start, m, c))
            start += m * c
    return WindowLayout(order, local, region, buckets, counts, torch.nonzero(counts == area).flatten())


def subset_window_attention(
    block: nn.Module, y: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_stats: bool, with_output: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Window attention of ``block`` among the kept tokens.

    y: Nk x C, tokens after norm1 in ``kept_idx`` order. Returns (Nk x C after attn.proj, or
    None when ``with_output`` is False; Nk mean attention received per kept token over heads and
    the queries of its window when ``want_stats``, else None).
    """
    attn = block.attn
    nk = y.shape[0]
    heads = attn.num_heads
    lay = window_layout(kept_idx, grid, tuple(block.window_size), tuple(block.shift_size))
    qkv = attn.qkv(y.index_select(0, lay.order)).reshape(nk, 3, heads, -1)
    hd = qkv.shape[-1]
    table = attn.relative_position_bias_table  # (2ws-1)^2 x heads
    index = attn.relative_position_index  # A x A
    area = index.shape[0]
    ctx = torch.empty(nk, heads * hd, dtype=y.dtype) if with_output else None
    received = torch.empty(nk, dtype=y.dtype) if want_stats else None
    for start, m, c in lay.buckets:  # m windows of c kept tokens, contiguous in the sorted order
        sl = slice(start, start + m * c)
        q, k, v = qkv[sl].view(m, c, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # m x heads x c x hd
        if c == area:  # full windows, cells in order: the block's own bias (and shift mask), as timm adds them
            mask = table[index].permute(2, 0, 1)[None]  # 1 x heads x A x A
            if block.attn_mask is not None:
                mask = mask + block.attn_mask[lay.full_windows][:, None]
        else:
            loc = lay.local[sl].view(m, c)
            mask = table[index[loc[:, :, None], loc[:, None, :]]].permute(0, 3, 1, 2)  # m x heads x c x c
        if lay.region is not None and c != area:
            reg = lay.region[sl].view(m, c)
            apart = (reg[:, :, None] != reg[:, None, :])[:, None]  # m x 1 x c x c
            mask = mask + torch.where(apart, MASK_VALUE, 0.0)
        if want_stats:
            probs = ((q * attn.scale) @ k.transpose(-2, -1) + mask).softmax(dim=-1)
            received[sl] = probs.mean(dim=(1, 2)).flatten()
            out = probs @ v if with_output else None
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.contiguous()) if with_output else None
        if out is not None:
            ctx[sl] = out.transpose(1, 2).reshape(m * c, heads * hd)
    inverse = torch.empty_like(lay.order)
    inverse[lay.order] = torch.arange(nk)
    out = attn.proj(ctx).index_select(0, inverse) if with_output else None
    return out, (received[inverse] if received is not None else None)


def run_swin_block_subset(block: nn.Module, x: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_attn: bool) -> BlockOutput:
    """A timm ``SwinTransformerBlock`` on the kept tokens only. x: 1 x Nk x C -> 1 x Nk x C."""
    if kept_idx.numel() != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens but {kept_idx.numel()} kept positions")
    attn_out, received = subset_window_attention(block, block.norm1(x[0]), kept_idx, grid, want_attn, True)
    x = x + attn_out[None]
    x = x + block.mlp(block.norm2(x))
    return BlockOutput(x=x, received=received)


# --- MAC formulas ------------------------------------------------------------------------------
def _attn_dim(attn: nn.Module) -> int:
    return attn.proj.in_features


def swin_block_macs(block: nn.Module, kept_idx: Tensor | None, grid: tuple[int, int], with_output: bool = True) -> int:
    """MACs of a Swin block: on the full grid (``kept_idx`` None, the stock block: every window
    holds ws^2 tokens) or on the kept subset (qkv/proj/MLP on Nk tokens, QK^T and P.V over the
    n_w^2 kept pairs of each window). ``with_output=False``: only what the attention statistics
    need (qkv and QK^T), no P.V, proj or MLP."""
    attn = block.attn
    d = _attn_dim(attn)
    gh, gw = grid
    if kept_idx is None:
        nk = gh * gw
        pairs = nk * attn.window_area
    else:
        nk = int(kept_idx.numel())
        counts = window_layout(kept_idx, grid, tuple(block.window_size), tuple(block.shift_size)).counts
        pairs = int((counts * counts).sum())
    macs = linear_macs(attn.qkv, nk) + pairs * d
    if with_output:
        macs += pairs * d + linear_macs(attn.proj, nk) + linear_macs(block.mlp, nk)
    return macs
