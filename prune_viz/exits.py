"""Early exits (DToP, ``exit``) in the engine: which input-grid cells have a final prediction.

A token that EXITS after block L keeps the auxiliary head's logits at L as its final prediction
(DToP: "finalize the prediction of easy tokens in advance"). The engine records every exit on
the **input grid** (the patch grid of the first block), whatever grid the exiting token lives
on:

- plain ViTs: one token is one input-grid cell (``f = 1``), and its S sub-cell logits are kept
  as they are (the demo's heads predict 4 x 4 sub-cells per token);
- hierarchical backbones (Swin): a stage-s token covers ``f x f`` input-grid cells
  (``f = 2**(s - 1)``); each of them takes the token's logits (S must be 1). So an exited
  token's region keeps its prediction down to pixels, however its merged parent fares later.
- **The earliest exit wins**: after a 2 x 2 patch merge, a merged token whose children partly
  exited stays alive ("any child alive", docs/methods/swin.md); if it exits later, the cells of
  the children that exited before keep their earlier prediction.

The decoder then replaces its output by ``logits`` where ``mask`` is set (``Backbone.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Exits:
    """Exit bookkeeping of one run on an input grid of N = gh x gw cells.

    mask:   N bool, the cell's prediction is final (its lineage exited).
    logits: N x K x S float, the final logits of exited cells (zeros elsewhere); None until the
            first exit.
    layer:  N int16, the layer each exited cell's prediction was fixed at (0 where none).
    """

    grid: tuple[int, int]
    mask: Tensor
    layer: np.ndarray
    logits: Tensor | None = None

    @classmethod
    def none(cls, grid: tuple[int, int]) -> "Exits":
        n = grid[0] * grid[1]
        return cls(grid, torch.zeros(n, dtype=torch.bool), np.zeros(n, dtype=np.int16))

    def add(self, layer: int, idx: Tensor, logits: Tensor, token_grid: tuple[int, int]) -> None:
        """Tokens ``idx`` (row-major on ``token_grid``, a coarsening of ``self.grid`` by an
        integer factor) exit after ``layer`` with ``logits`` (len(idx) x K x S). Cells that
        already exited keep their earlier prediction."""
        f = self.grid[0] // token_grid[0]
        if f * token_grid[0] != self.grid[0] or f * token_grid[1] != self.grid[1]:
            raise ValueError(f"token grid {token_grid} does not tile the input grid {self.grid}")
        if f > 1 and logits.shape[-1] != 1:
            raise ValueError("sub-cell exit logits (S > 1) only on the input grid")
        cells = cells_of(idx, token_grid, f)  # len(idx) x f*f input-grid cells
        logits = logits.float()[:, None].expand(-1, f * f, *logits.shape[1:]).reshape(-1, *logits.shape[1:])
        cells = cells.flatten()
        new = ~self.mask[cells]
        if self.logits is None:
            self.logits = torch.zeros(self.mask.numel(), *logits.shape[1:])
        self.logits[cells[new]] = logits[new]
        self.mask[cells[new]] = True
        self.layer[cells[new].numpy()] = layer

    @property
    def any(self) -> bool:
        return self.logits is not None

    def decode_args(self) -> tuple[Tensor | None, Tensor | None]:
        """(exit_logits, exited) as ``Backbone.decode`` takes them (both None without exits)."""
        return (self.logits, self.mask) if self.logits is not None else (None, None)


def cells_of(idx: Tensor, token_grid: tuple[int, int], f: int) -> Tensor:
    """Row-major tokens on ``token_grid`` -> len(idx) x f*f row-major cells of the grid f times
    finer that each covers (row-major within the token)."""
    w = token_grid[1]
    r, c = idx // w, idx % w
    dr, dc = torch.meshgrid(torch.arange(f), torch.arange(f), indexing="ij")
    rows = r[:, None] * f + dr.flatten()[None]
    cols = c[:, None] * f + dc.flatten()[None]
    return rows * (w * f) + cols


def exit_pixels(exited: Tensor, exit_logits: Tensor, logits_px: Tensor, grid: tuple[int, int]) -> Tensor:
    """Pixel-level logits with exited regions replaced by their exit logits.

    exited: N bool and exit_logits N x K (x 1) on ``grid`` (gh x gw); logits_px: K x H x W, the
    decoder's logits already upsampled to the output size. An exited cell covers exactly the
    pixels that nearest-neighbour upsampling gives it; they take its logits unblended (its
    prediction is final), every other pixel keeps the decoder's.
    """
    k, h, w = logits_px.shape
    gh, gw = grid
    per_cell = exit_logits.float().mean(-1) if exit_logits.ndim == 3 else exit_logits.float()  # N x K (S = 1)
    cell = per_cell.T.reshape(1, k, gh, gw)
    up = torch.nn.functional.interpolate(cell, size=(h, w), mode="nearest")[0]
    mask = torch.nn.functional.interpolate(exited.reshape(1, 1, gh, gw).float(), size=(h, w), mode="nearest")[0, 0] > 0.5
    return torch.where(mask[None], up.to(logits_px.dtype), logits_px)
