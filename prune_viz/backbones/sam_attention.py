"""SAM attention: a ``Block`` on a subset of tokens, its MACs, and the full-grid block with statistics.

Attention on a subset of tokens
-------------------------------
* Global blocks: every kept token attends to every kept token.
* Windowed blocks: a kept token attends to the kept tokens of its own 14 x 14 window. SAM pads
  the *normalised* grid with zeros up to a multiple of 14 before partitioning, so in edge windows
  the unmodified model also attends to those pad cells: their key/value is exactly the qkv bias
  (the input is 0). The subset path keeps these pad keys (never as queries: their outputs are
  cropped by SAM too), so at pruning rate 0 it equals the unmodified block.
* Relative positions: SAM adds ``rel_h[q_row, k_row] + rel_w[q_col, k_col]`` with
  ``rel_h = q . R_h[q_row, k_row]`` (decomposed, MViTv2). The subset path computes ``rel_h`` /
  ``rel_w`` for the kept queries only and gathers the columns of the kept (and pad) keys, with
  window-local coordinates in windowed blocks and grid coordinates in global blocks.

The full grid with statistics
-----------------------------
:func:`run_block_full_with_stats` is the unmodified block's arithmetic (as ``Block.forward``)
that also returns the attention each token receives (EViT's score on SAM): the attention runs in
chunks of query rows, each chunk's probabilities are reduced to the statistics and multiplied by V
while in cache, and the chunks are shared among one-thread workers. Its output equals the
library block's (allclose; bitwise on the machines measured) at the same MACs.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor, nn

from ..flops import linear_macs
from ..threads import can_pin_threads, one_thread
from .base import BlockOutput


def _window_pad_cells(grid: tuple[int, int], ws: int) -> list[Tensor]:
    """Per window (row-major over the padded grid): window-local indices (row * ws + col) of the
    zero pad cells SAM appends to reach a multiple of ``ws``. Empty for interior windows."""
    gh, gw = grid
    nwh, nww = math.ceil(gh / ws), math.ceil(gw / ws)
    local = torch.arange(ws * ws)
    lr, lc = local // ws, local % ws
    pads = []
    for wi in range(nwh):
        for wj in range(nww):
            is_pad = (wi * ws + lr >= gh) | (wj * ws + lc >= gw)
            pads.append(local[is_pad])
    return pads


def _window_occupancy(kept_idx: Tensor, grid: tuple[int, int], ws: int) -> Tensor:
    """Kept tokens per window (row-major over windows)."""
    gh, gw = grid
    nww = math.ceil(gw / ws)
    rows, cols = kept_idx // gw, kept_idx % gw
    win = (rows // ws) * nww + cols // ws
    return torch.bincount(win, minlength=math.ceil(gh / ws) * nww)


def run_block_subset(block: nn.Module, x: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_attn: bool) -> BlockOutput:
    """A segment-anything ``Block`` on the kept tokens only. x: 1 x Nk x C -> 1 x Nk x C."""
    if kept_idx.numel() != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens but {kept_idx.numel()} kept positions")
    attn_out, received = subset_attention(block, block.norm1(x[0]), kept_idx, grid, want_attn, True)
    x = x + attn_out[None]
    x = x + block.mlp(block.norm2(x))
    return BlockOutput(x=x, received=received)


# Query rows per chunk of the full-grid attention are chosen so that one chunk's scores
# (heads x rows x keys floats) stay near this size: the probabilities are then reduced to the
# statistics and multiplied by V while they are still in cache, instead of four passes over an
# N x N x heads tensor in memory (805 MB for ViT-B at 1024).
CHUNK_ELEMENTS = 1 << 22


def run_block_full_with_stats(block: nn.Module, x: Tensor, grid: tuple[int, int]) -> BlockOutput:
    """The unmodified block on the full gh x gw grid (segment-anything's ``Block.forward``:
    norm1, window partition with zero pad cells, attention, unpartition, MLP), plus the mean
    attention each token receives, averaged over heads and over the (real) queries of its window
    (global blocks: all queries). x: 1 x N x C -> 1 x N x C; received: N.

    The same arithmetic as the block, in the same order, with the attention computed in chunks
    of query rows (:func:`attention_with_received`), so the statistics come from the very
    probabilities that produce the output and cost one cached pass over them.
    """
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    gh, gw = grid
    c = x.shape[-1]
    shortcut = x.reshape(1, gh, gw, c)
    y = block.norm1(shortcut)
    ws = block.window_size
    heads = block.attn.num_heads
    if ws:
        y, pad_hw = window_partition(y, ws)
        real, _ = window_partition(torch.ones(1, gh, gw, 1), ws)  # 0 at pad cells
        real = real.reshape(y.shape[0], ws * ws)
        out, recv = attention_with_received(block.attn, y, real)
        out = window_unpartition(out, ws, pad_hw, (gh, gw))
        recv = recv / (heads * real.sum(dim=1, keepdim=True))  # per window: its real queries
        received = window_unpartition(recv.reshape(-1, ws, ws, 1), ws, pad_hw, (gh, gw)).reshape(-1)
    else:
        out, recv = attention_with_received(block.attn, y, None)
        received = recv.reshape(-1) / (heads * gh * gw)
    x = shortcut + out
    x = x + block.mlp(block.norm2(x))
    return BlockOutput(x=x.reshape(1, gh * gw, c), received=received)


def attention_with_received(attn: nn.Module, y: Tensor, query_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """segment-anything's ``Attention.forward`` on y (B x h x w x C: windows, or the grid as
    B = 1), chunked over query rows, and the attention probability each key receives summed over
    heads and queries (queries weighted by ``query_weight``, B x h*w, when given: 0 drops a pad
    query). Returns (B x h x w x C, B x h*w).

    The chunks are independent, so they are shared among the intra-op threads as whole chunks,
    each worker on one intra-op thread (:func:`prune_viz.threads.one_thread`): a chunk is a
    handful of mid-sized operations, and with two intra-op threads each of them would wait in a
    barrier (measured on the loaded 2-core machine: 2.4x the CPU time of the stock block). Each
    chunk's statistics go to a row of their own and are summed in chunk order, so the result
    does not depend on the number of workers.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = y.shape
    n, heads = h * w, attn.num_heads
    qkv = attn.qkv(y).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, n, -1).unbind(0)  # (B*heads) x n x hd, as the library
    hd = q.shape[-1]
    r_h = get_rel_pos(h, h, attn.rel_pos_h) if attn.use_rel_pos else None  # h x h x hd
    r_w = get_rel_pos(w, w, attn.rel_pos_w) if attn.use_rel_pos else None
    rows = max(1, CHUNK_ELEMENTS // (heads * n * w))  # query rows per chunk
    images = max(1, CHUNK_ELEMENTS // (heads * n * n)) if rows >= h else 1  # windows per chunk
    rows = min(rows, h)
    chunks = [(b0, min(b, b0 + images), r0, min(h, r0 + rows)) for b0 in range(0, b, images) for r0 in range(0, h, rows)]
    ctx = torch.empty_like(q)
    partial = torch.zeros(len(chunks), b, n, dtype=q.dtype)

    def run(i: int) -> None:
        b0, b1, r0, r1 = chunks[i]
        bs, qs = slice(b0 * heads, b1 * heads), slice(r0 * w, r1 * w)
        qc = q[bs, qs]
        a = (qc * attn.scale) @ k[bs].transpose(-2, -1)  # (chunk images * heads) x (chunk rows * w) x n
        if r_h is not None and r_w is not None:
            r_q = qc.reshape(-1, r1 - r0, w, hd)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h[r0:r1])
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w)
            a = (a.view(-1, r1 - r0, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(a.shape)
        p = a.softmax(dim=-1)
        ctx[bs, qs] = p @ v[bs]
        p = p.view(b1 - b0, heads, (r1 - r0) * w, n)
        if query_weight is not None:
            p = p * query_weight[b0:b1, None, qs, None]
        partial[i, b0:b1] = p.sum(dim=(1, 2))

    _share(run, len(chunks))
    out = ctx.view(b, heads, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out), partial.sum(dim=0)


def _share(run: Callable[[int], None], count: int) -> None:
    """run(0..count-1), spread over as many workers as this thread has intra-op threads (the
    caller is one of them), each on one intra-op thread, taking the next chunk when done with
    one (a worker descheduled by a busy machine then holds up one chunk, not half of them). In
    the calling thread alone where that cannot be arranged, or while a dispatch mode such as
    ``FlopCounterMode`` watches this thread (modes are per thread: work on other threads would
    go uncounted). Which worker runs a chunk does not change its result."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    workers = min(torch.get_num_threads(), count) if can_pin_threads() else 1
    if workers <= 1 or _get_current_dispatch_mode() is not None:
        for i in range(count):
            run(i)
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    next_chunk = itertools.count()  # next() on it is atomic under the GIL

    def worker() -> None:
        with torch.set_grad_enabled(grad), torch.inference_mode(inference), one_thread():
            for i in iter(next_chunk.__next__, None):
                if i >= count:
                    return
                run(i)

    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        helpers = [pool.submit(worker) for _ in range(workers - 1)]
        worker()
        for f in helpers:
            f.result()


def subset_attention(
    block: nn.Module, y: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_stats: bool, with_output: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Attention of block ``block`` among the kept tokens.

    y: Nk x C, tokens after norm1, in ``kept_idx`` order (row-major grid positions).
    Returns (Nk x C after attn.proj, or None when ``with_output`` is False;
             Nk mean attention received per kept token when ``want_stats``, else None).
    qkv and proj run on all kept tokens at once (one big matmul each); only the attention
    itself is per window. In windowed blocks the tokens are first sorted by window (a row
    gather of y), so that every window is a contiguous slice of q, k and v.
    """
    attn = block.attn
    nk, c = y.shape
    heads = attn.num_heads
    gh, gw = grid
    rows, cols = kept_idx // gw, kept_idx % gw
    ws = block.window_size
    order = None
    if ws:
        win = (rows // ws) * math.ceil(gw / ws) + cols // ws
        order = torch.sort(win, stable=True).indices
        counts = torch.bincount(win, minlength=math.ceil(gh / ws) * math.ceil(gw / ws)).tolist()
        y, rows, cols = y.index_select(0, order), rows[order], cols[order]
    qkv = attn.qkv(y).reshape(nk, 3, heads, c // heads).permute(1, 2, 0, 3)  # 3 x H x Nk x hd
    q, k, v = qkv.unbind(0)
    if ws:
        ctx, received = _window_attention(attn, q, k, v, rows % ws, cols % ws, counts, grid, ws, want_stats, with_output)
    else:
        rel = _rel_pos_tables(attn, q, (gh, gw), rows, cols) if attn.use_rel_pos else None
        ctx, received = _attend(q * attn.scale, k, v, rel, rows, cols, nk, want_stats, with_output)
    out = attn.proj(ctx.transpose(0, 1).reshape(nk, c)) if with_output else None
    if order is not None:  # back to kept_idx order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(nk)
        out = out.index_select(0, inverse) if out is not None else None
        received = received[inverse] if received is not None else None
    return out, received


def _rel_pos_tables(attn: nn.Module, q: Tensor, size: tuple[int, int], q_rows: Tensor, q_cols: Tensor) -> tuple[Tensor, Tensor]:
    """SAM's decomposed relative-position terms for the given queries, key-coordinate major:
    rel_h[h, r, i] = q_i . R_h[q_row_i, r], rel_w[h, s, i] = q_i . R_w[q_col_i, s].
    q: H x n x hd (unscaled, as in ``add_decomposed_rel_pos``) -> (H x size_h x n, H x size_w x n).
    Same products as segment-anything's einsums (one hd-dot per query and key coordinate)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    r_h = get_rel_pos(size[0], size[0], attn.rel_pos_h)  # size_h x size_h x hd (q_row, k_row)
    r_w = get_rel_pos(size[1], size[1], attn.rel_pos_w)
    rel_h = torch.einsum("hnc,nkc->hkn", q, r_h[q_rows])
    rel_w = torch.einsum("hnc,nkc->hkn", q, r_w[q_cols])
    return rel_h, rel_w


def _attend(
    q_scaled: Tensor,
    k: Tensor,
    v: Tensor,
    rel: tuple[Tensor, Tensor] | None,
    key_rows: Tensor,
    key_cols: Tensor,
    n_real_keys: int,
    want_stats: bool,
    with_output: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """softmax over keys of (q k^T + rel_h[key_row, q] + rel_w[key_col, q]), times v.

    q_scaled: H x n x hd; k, v: H x m x hd, the first ``n_real_keys`` keys are tokens (the rest
    are window pad cells); rel: (H x size_h x n, H x size_w x n) from :func:`_rel_pos_tables`.
    The scores are held key-major (H x m x n): the bias for a key is then a whole row of the
    table, so adding it is a row gather (memory copies) rather than a per-element gather along
    the last axis, which measured 3-10x slower on CPU. Softmax runs in place over dim 1.
    Returns (H x n x hd or None, n_real_keys attention received, averaged over heads and
    queries, or None).
    """
    scores = torch.bmm(k, q_scaled.transpose(1, 2))  # H x m x n
    if rel is not None:
        scores += rel[0].index_select(1, key_rows)
        scores += rel[1].index_select(1, key_cols)
    scores -= scores.amax(dim=1, keepdim=True)
    scores.exp_()
    scores /= scores.sum(dim=1, keepdim=True)
    received = scores[:, :n_real_keys].mean(dim=(0, 2)) if want_stats else None
    ctx = torch.bmm(v.transpose(1, 2), scores).transpose(1, 2) if with_output else None
    return ctx, received


def _window_attention(
    attn: nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    lc: Tensor,
    counts: list[int],
    grid: tuple[int, int],
    ws: int,
    want_stats: bool,
    with_output: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Windowed attention among kept tokens (plus each edge window's pad keys).

    q, k, v: H x Nk x hd, tokens sorted by window (``counts[w]`` tokens of window w, row-major
    over windows); lr, lc: their window-local row / column. The loop runs over occupied windows
    only (at most ceil(gh/ws) * ceil(gw/ws) of them; a Python step per window, never per token).
    Returns (H x Nk x hd, Nk received) in the same window order, as requested.
    """
    heads, nk, hd = q.shape
    q_scaled = q * attn.scale
    rel_h = rel_w = None
    if attn.use_rel_pos:
        rel_h, rel_w = _rel_pos_tables(attn, q, (ws, ws), lr, lc)  # H x ws x Nk each
    # Pad cells are zeros after norm1, so their key/value is the qkv bias (zero without bias).
    qkv_bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * heads * hd, dtype=q.dtype)
    k_pad, v_pad = qkv_bias.reshape(3, heads, 1, hd)[1:3]
    pads = _window_pad_cells(grid, ws)

    ctx_parts: list[Tensor] = []
    recv_parts: list[Tensor] = []
    start = 0
    for w, n in enumerate(counts):
        if n == 0:
            continue
        sl = slice(start, start + n)
        start += n
        kw, vw = k[:, sl], v[:, sl]
        key_r, key_c = lr[sl], lc[sl]
        p = int(pads[w].numel())
        if p:
            kw = torch.cat([kw, k_pad.expand(heads, p, hd)], dim=1)
            vw = torch.cat([vw, v_pad.expand(heads, p, hd)], dim=1)
            key_r = torch.cat([key_r, pads[w] // ws])
            key_c = torch.cat([key_c, pads[w] % ws])
        rel = (rel_h[:, :, sl], rel_w[:, :, sl]) if rel_h is not None else None
        ctx_w, recv_w = _attend(q_scaled[:, sl], kw, vw, rel, key_r, key_c, n, want_stats, with_output)
        if ctx_w is not None:
            ctx_parts.append(ctx_w)
        if recv_w is not None:
            recv_parts.append(recv_w)
    ctx = torch.cat(ctx_parts, dim=1) if with_output else None
    received = torch.cat(recv_parts) if want_stats else None
    return ctx, received


# --- MAC formulas ------------------------------------------------------------------------------
def full_block_macs(block: nn.Module, grid: tuple[int, int]) -> int:
    """MACs of the unmodified segment-anything Block on the gh x gw grid."""
    gh, gw = grid
    n = gh * gw
    c = block.attn.qkv.in_features
    ws = block.window_size
    if ws == 0:
        tokens, core, rel = n, 2 * n * n * c, n * (gh + gw) * c
    else:
        hp, wp = math.ceil(gh / ws) * ws, math.ceil(gw / ws) * ws
        tokens = hp * wp  # qkv, attention, rel-pos and proj all see the pad cells as tokens
        windows = tokens // (ws * ws)
        core = windows * 2 * (ws * ws) ** 2 * c
        rel = windows * (ws * ws) * 2 * ws * c  # einsum bhwc,hkc / bhwc,wkc per window
    if not block.attn.use_rel_pos:
        rel = 0
    return linear_macs(block.attn, tokens) + core + rel + linear_macs(block.mlp, n)


def subset_attention_macs(block: nn.Module, kept_idx: Tensor, grid: tuple[int, int], with_output: bool) -> int:
    """MACs of :func:`subset_attention`: qkv (+ proj and P.V when ``with_output``), rel-pos
    terms for the kept queries, and QK^T over the keys each query sees."""
    attn = block.attn
    c = attn.qkv.in_features
    nk = int(kept_idx.numel())
    ws = block.window_size
    gh, gw = grid
    if ws == 0:
        pairs = nk * nk
        rel = nk * (gh + gw) * c
    else:
        occ = _window_occupancy(kept_idx, grid, ws).tolist()
        pads = _window_pad_cells(grid, ws)
        pairs = sum(n * (n + int(p.numel())) for n, p in zip(occ, pads) if n)
        rel = nk * 2 * ws * c
    if not attn.use_rel_pos:
        rel = 0
    qkv = nk * attn.qkv.in_features * attn.qkv.out_features
    macs = qkv + rel + pairs * c  # QK^T
    if with_output:
        macs += pairs * c + nk * attn.proj.in_features * attn.proj.out_features  # P.V and proj
    return macs

