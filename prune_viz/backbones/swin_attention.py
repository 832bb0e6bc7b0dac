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

Windows whose tokens are all kept run together as one batch of the stock full-window attention
(the block's own bias ``table[index]`` and shift mask, no per-pair gathers, no padding): a light
pruning that leaves most windows whole costs what the stock block costs on those windows. The
partly-kept windows are batched by their kept-token count rounded up to a multiple of 8
(``PAD_TO``; pad slots masked out as keys, their queries dropped), one fused attention call per
batch: at most 1 + ws^2 / 8 calls per block, never a loop over tokens. The attention costs sum
over windows of p_w^2 pairs (p_w the padded count; ws^2 for a full window), which is what the
MAC formula counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flops import linear_macs
from .base import BlockOutput

MASK_VALUE = -100.0  # what timm's get_attn_mask puts between regions of a shifted window


PAD_TO = 8  # a window's kept tokens are padded up to a multiple of this for batching (see below)


@dataclass
class Bucket:
    """m windows batched as m x p slots: ``start`` .. ``start + n`` are their n kept tokens in the
    sorted order (window after window); ``slot`` (m x p, long) the sorted position of each slot,
    ``n_tokens`` (the dummy row) for pad slots; None when no window of the bucket is padded
    (then the slots are exactly the contiguous run of sorted tokens)."""

    start: int
    n: int
    m: int
    p: int
    slot: Tensor | None
    windows: Tensor  # the m window ids, ascending
    full: bool = False  # every window of the bucket has all ws^2 tokens kept (the stock path)


@dataclass
class WindowLayout:
    """Kept tokens sorted by (padded occupancy of their window, window, local position).
    order: Nk, position in ``kept_idx`` of the i-th sorted token; local: Nk window-local index
    (row * ws + col) of each sorted token; region: Nk shifted-window region id (None in unshifted
    blocks); buckets: one per padded occupancy."""

    order: Tensor
    local: Tensor
    region: Tensor | None
    buckets: list[Bucket]
    counts: Tensor  # kept tokens per window (row-major over the shifted windows)
    padded: Tensor  # slots per window: counts rounded up to a multiple of PAD_TO (at most ws^2)


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
    padded = torch.clamp((counts + PAD_TO - 1) // PAD_TO * PAD_TO, max=area)
    # Bucket key: the padded count, except that fully kept windows get a key of their own
    # (area + 1), so they never share a batch with partly-kept windows padded up to the area.
    key = torch.where(counts == area, area + 1, padded)
    order = torch.argsort((key[win] * nw + win) * area + local)
    local = local[order]
    region = None
    if any(shift):
        # timm labels 3 x 3 regions on the rolled grid: [0, H-ws), [H-ws, H-shift), [H-shift, H)
        r, c = rows[order], cols[order]
        rid = (r >= gh - ws[0]).long() + (r >= gh - shift[0]).long()
        cid = (c >= gw - ws[1]).long() + (c >= gw - shift[1]).long()
        region = rid * 3 + cid
    buckets, start, nk = [], 0, int(kept_idx.numel())
    for kv in torch.unique(key).tolist():
        if not kv:
            continue
        full = kv == area + 1
        p = area if full else kv
        wins = torch.nonzero(key == kv).flatten()
        n_w = counts[wins]
        n = int(n_w.sum())
        slot = None
        if bool((n_w != p).any()):
            j = torch.arange(p)[None]
            first = start + torch.cumsum(n_w, 0) - n_w
            slot = torch.where(j < n_w[:, None], first[:, None] + j, nk)
        buckets.append(Bucket(start, n, len(wins), p, slot, wins, full))
        start += n
    return WindowLayout(order, local, region, buckets, counts, padded)


def subset_window_attention(
    block: nn.Module, y: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_stats: bool, with_output: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Window attention of ``block`` among the kept tokens.

    y: Nk x C, tokens after norm1 in ``kept_idx`` order. Returns (Nk x C after attn.proj, or
    None when ``with_output`` is False; Nk mean attention received per kept token over heads and
    the queries of its window when ``want_stats``, else None).

    Batching: the fully kept windows run as one batch with the block's own bias and shift mask
    (the stock arithmetic); the partly-kept windows whose kept-token count rounds up to the same
    multiple p of PAD_TO run as one m x p batch (one fused attention call). Pad slots are masked out as keys (-inf: they
    get exactly zero weight, so the result is that of the kept tokens alone) and their query rows
    are dropped; they do cost arithmetic, which :func:`swin_block_macs` counts (p^2 pairs per
    window). Without padding every distinct count would be its own call (~25 per block at a
    random 50 %), and the calls' fixed costs ate the saving.
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
    if any(b.slot is not None for b in lay.buckets):  # a zero row for the pad slots to gather
        qkv = torch.cat([qkv, qkv.new_zeros(1, *qkv.shape[1:])])
        local = torch.cat([lay.local, lay.local.new_zeros(1)])
        region = torch.cat([lay.region, lay.region.new_zeros(1)]) if lay.region is not None else None
    else:
        local, region = lay.local, lay.region
    ctx = torch.empty(nk, heads * hd, dtype=y.dtype) if with_output else None
    received = torch.empty(nk, dtype=y.dtype) if want_stats else None
    for b in lay.buckets:
        m, p = b.m, b.p
        sl = slice(b.start, b.start + b.n)
        rows = qkv[sl] if b.slot is None else qkv[b.slot.flatten()]
        q, k, v = rows.view(m, p, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # m x heads x p x hd
        if b.full:  # fully kept windows, cells in order: the stock block's own bias and shift mask
            mask = table[index].permute(2, 0, 1)[None]  # 1 x heads x A x A
            if block.attn_mask is not None:
                mask = mask + block.attn_mask[b.windows][:, None]
        else:
            loc = local[sl].view(m, p) if b.slot is None else local[b.slot]
            mask = table[index[loc[:, :, None], loc[:, None, :]]].permute(0, 3, 1, 2)  # m x heads x p x p
            if region is not None:
                reg = region[sl].view(m, p) if b.slot is None else region[b.slot]
                mask = mask + torch.where((reg[:, :, None] != reg[:, None, :])[:, None], MASK_VALUE, 0.0)
            if b.slot is not None:
                mask = mask.masked_fill((b.slot == nk)[:, None, None, :], float("-inf"))
        real = None if b.slot is None else (b.slot != nk).flatten()
        if want_stats:
            probs = ((q * attn.scale) @ k.transpose(-2, -1) + mask).softmax(dim=-1)  # m x heads x p x p
            if real is None:
                received[sl] = probs.mean(dim=(1, 2)).flatten()
            else:  # mean over the window's real queries only
                q_real = real.view(m, 1, p, 1).to(probs.dtype)
                per_key = (probs * q_real).sum(dim=(1, 2)) / (heads * q_real.sum(dim=(1, 2)))
                received[sl] = per_key.flatten()[real]
            out = probs @ v if with_output else None
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.contiguous()) if with_output else None
        if out is not None:
            out = out.transpose(1, 2).reshape(m * p, heads * hd)
            ctx[sl] = out if real is None else out[real]
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
    p_w^2 pairs of each window, p_w its kept count padded to a multiple of PAD_TO). ``with_output=False``: only what the attention statistics
    need (qkv and QK^T), no P.V, proj or MLP."""
    attn = block.attn
    d = _attn_dim(attn)
    gh, gw = grid
    if kept_idx is None:
        nk = gh * gw
        pairs = nk * attn.window_area
    else:
        nk = int(kept_idx.numel())
        padded = window_layout(kept_idx, grid, tuple(block.window_size), tuple(block.shift_size)).padded
        pairs = int((padded * padded).sum())  # pad slots included: they are computed (then masked / dropped)
    macs = linear_macs(attn.qkv, nk) + pairs * d
    if with_output:
        macs += pairs * d + linear_macs(attn.proj, nk) + linear_macs(block.mlp, nk)
    return macs
