"""Hierarchical backbones (Swin) in the engine: crossing a stage boundary.

After the last block of a stage the grid halves (``Backbone.downsample``, 2 x 2 patch merging on
the full grid, pruned tokens frozen); the engine keeps each finished stage's full grid for a
UNet decoder's skips (``decode(..., stage_outputs=...)``) and maps the drop-layer bookkeeping onto
the coarser grid. Plain backbones (``stage_ends == ()``) never reach these functions, except the
two that then return nothing (``grid_field``, ``stage_kwargs``), so their runs are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .backbones.base import Backbone
from .exits import Exits
from .records import Baseline


def grid_field(backbone: Backbone, grid: tuple[int, int]) -> tuple:
    """LayerRecord's optional grid: filled on hierarchical backbones only."""
    return (grid,) if backbone.stage_ends else ()


def stage_kwargs(backbone: Backbone, outputs: list[Tensor]) -> dict[str, Any]:
    """decode()'s extra argument on hierarchical backbones (none on plain ones)."""
    return {"stage_outputs": outputs} if backbone.stage_ends else {}


def downsample_full(backbone: Backbone, layer: int, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Unpruned patch merging after block ``layer``: 1 x (P + N) x C -> 1 x (P + N') x C'."""
    prefix, patches = backbone.split_prefix(x)
    alive = torch.ones(patches.shape[1], dtype=torch.bool)
    merged, _, grid = backbone.downsample(layer, patches, alive, grid)
    return join_tokens(prefix, merged), grid


def join_tokens(prefix: Tensor, patches: Tensor) -> Tensor:
    """Prefix and patch tokens in one sequence. Hierarchical backbones have no prefix tokens
    (the merge changes the width, which a class token would not follow)."""
    if prefix.shape[1] == 0:
        return patches
    if prefix.shape[-1] != patches.shape[-1]:
        raise ValueError("prefix tokens cannot cross a patch merging")
    return torch.cat([prefix, patches], dim=1)


def stage_outputs(backbone: Backbone, x_after: list[Tensor], before: int | None = None) -> list[Tensor]:
    """The patch tokens 1 x N_s x C_s after each stage's last block (stages ending before
    layer ``before``, all when None), from an unpruned forward's ``x_after``."""
    return [backbone.split_prefix(x_after[e])[1] for e in backbone.stage_ends if before is None or e < before]


def next_stage(
    backbone: Backbone, layer: int, x: Tensor, kept_idx: Tensor, full: Tensor, grid: tuple[int, int],
    skips: list[Tensor], stage_drops: list[np.ndarray], drop_layer: np.ndarray, down_macs: int,
    rep: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int], np.ndarray, int, Tensor]:
    """Cross a stage boundary after block ``layer``: scatter the alive tokens into the full grid
    (pruned ones hold their frozen features), keep it as the stage's skip and its drop map, merge
    it (``backbone.downsample``) and gather the alive tokens of the next stage.
    rep: after a merging method (ToMe), N long, the alive token each grid token is represented
    by. The groups are **unmerged first** (every member takes its group's feature and is alive
    again), so no group crosses the patch merging.
    Returns (x 1 x (P + Nk') x C', kept_idx', the next stage's full grid, its grid, its drop map
    (N' drop layers), ``down_macs`` plus this merge's MACs, the next grid's identity ``rep``)."""
    prefix, patches = backbone.split_prefix(x)
    full[:, kept_idx] = patches
    if rep is not None:
        full = full[:, rep]
        kept_idx = torch.nonzero(torch.isin(rep, kept_idx)).flatten()
    skips.append(full)
    stage_drops.append(drop_layer.reshape(grid).copy())
    alive = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
    alive[kept_idx] = True
    merged, alive, new_grid = backbone.downsample(layer, full, alive, grid)
    kept_idx = torch.nonzero(alive).flatten()
    down_macs += backbone.downsample_macs(layer, grid)
    drop = pool_drop(drop_layer, grid)
    drop[alive.numpy()] = backbone.num_blocks  # alive again after an unmerge (a no-op otherwise)
    return (join_tokens(prefix, merged[:, kept_idx]), kept_idx, merged, new_grid, drop, down_macs,
            torch.arange(new_grid[0] * new_grid[1]))


def stages_before(backbone: Backbone, first: int, grid: tuple[int, int]) -> tuple[list[np.ndarray], int]:
    """For a run whose first pruning layer is ``first`` on input grid ``grid``: the drop maps of
    the stages that end before it (all alive) and the MACs of their merges."""
    ends = [e for e in backbone.stage_ends if e < first]
    drops = [np.full(backbone.grid_at(e, grid), backbone.num_blocks, dtype=np.int16) for e in ends]
    return drops, sum(backbone.downsample_macs(e, backbone.grid_at(e, grid)) for e in ends)


def finish_stages(
    drop_layer: np.ndarray, grid: tuple[int, int], input_grid: tuple[int, int], stage_drops: list[np.ndarray],
    exits: Exits | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """End of a hierarchical run: keep the last stage's drop map, and return the input-grid map
    and the input grid. Each position shows when its last-stage ancestor left, except positions
    whose prediction was fixed by an early exit: they show their exit layer (an exited stage-1
    token whose merged parent went on, because a sibling was alive, still exited where it did)."""
    stage_drops.append(drop_layer.reshape(grid).copy())
    f = input_grid[0] // grid[0]
    up = np.repeat(np.repeat(drop_layer.reshape(grid), f, axis=0), f, axis=1)
    if exits is not None and exits.any:
        up = np.where(exits.mask.numpy().reshape(input_grid), exits.layer.reshape(input_grid), up).astype(np.int16)
    return up, input_grid


def pool_drop(drop_layer: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """N drop layers on ``grid`` -> N/4 after a 2 x 2 merge: the latest of the four children
    (``num_blocks`` when any child is still alive, which is what makes the merged token alive)."""
    gh, gw = grid
    return drop_layer.reshape(gh // 2, 2, gw // 2, 2).max(axis=(1, 3)).ravel()


def block_input(backbone: Backbone, baseline: Baseline, layer: int) -> Tensor:
    """The unpruned input of block ``layer`` from the prefix cache (merged when ``layer`` opens a stage)."""
    x = baseline.x_after[layer - 1]
    if layer - 1 in backbone.stage_ends:
        x, _ = downsample_full(backbone, layer - 1, x, backbone.grid_at(layer - 1, baseline.prep.grid))
    return x


def merged_kept(
    backbone: Backbone, layer: int, kept_idx: Tensor, grid: tuple[int, int], unmerge: bool = False
) -> tuple[Tensor, tuple[int, int]]:
    """The alive tokens of the next stage after the patch merging that follows block ``layer``
    (``unmerge``: a merging method's groups are undone first, so every token is alive again)."""
    alive = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
    alive[torch.arange(grid[0] * grid[1]) if unmerge else kept_idx] = True
    alive, grid = backbone.downsample_alive(layer, alive, grid)
    return torch.nonzero(alive).flatten(), grid
