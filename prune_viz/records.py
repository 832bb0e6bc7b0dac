"""What a run of the engine produces, and how to read it: the plan it ran, the unpruned prefix
cache (:class:`Baseline`), and the :class:`Trace` of a pruned run (per layer: tokens, MACs,
decisions, diagnostics). Data only; ``engine.py`` fills them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from .backbones.base import BlockOutput, Prepared, Segmentation
from .methods.base import EXITED, GONE, KEPT, MethodSpec

@dataclass(frozen=True)
class Plan:
    """A pruning schedule: which method, with which parameters, after which layers (1-based)."""

    method: MethodSpec
    params: Any
    layers: tuple[int, ...]
    seed: int = 0
    # Teaching hook ("what if this token had stayed?"): (layer, global token indices forced to
    # stay, indices forced out) triples, applied after the method's decision at that layer.
    overrides: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = ()


@dataclass
class LayerRecord:
    """Per block: tokens entering (patch tokens, prefix excluded), MACs, wall time."""

    layer: int
    kind: str
    tokens: int
    macs: int
    macs_baseline: int
    time_ms: float
    grid: tuple[int, int] | None = None  # the block's token grid on hierarchical backbones (None: the input grid)


@dataclass
class StepRecord:
    """Per pruning layer: the decision as it can be drawn.

    status_grid: gh x gw int8: KEPT / PENDING_KEPT / PRUNED / EXITED for tokens alive at this
                 step, GONE for tokens removed earlier.
    diagnostics: name -> gh x gw float32 map (NaN where not alive), scalar, or H x W pixel map.
    """

    layer: int
    tokens_in: int
    tokens_kept: int
    status_grid: np.ndarray
    diagnostics: dict[str, Any]
    decide_ms: float
    decision_macs: int = 0


@dataclass
class Baseline:
    """The unpruned forward of one image on one backbone (the prefix cache)."""

    key: str
    prep: Prepared
    x_after: list[Tensor]  # x_after[l] = 1 x (P+N) x C after block l; x_after[0] = embed output
    attn_stats: dict[int, BlockOutput]  # layer -> received / cls_attn, for layers asked for
    seg: Segmentation
    macs: int
    layers: list[LayerRecord]
    time_ms: float


@dataclass
class Trace:
    """Everything one pruned run did, for the views, the report and the tests."""

    backbone: str
    method: str
    params: dict[str, Any]
    plan_layers: tuple[int, ...]
    grid: tuple[int, int]
    layers: list[LayerRecord]
    steps: list[StepRecord]
    drop_layer: np.ndarray  # gh x gw int16: layer after which the token left; num_blocks = never
    exited: np.ndarray  # gh x gw bool: token left with a final (aux) prediction
    kept_per_step: list[Tensor]  # kept_idx after each step (for replay and MAC measurement)
    seg: Segmentation
    macs: dict[str, int]
    time_ms: float
    from_cache: bool = False
    num_blocks: int = 0  # of the backbone; drop_layer == num_blocks means "never left"
    # gh x gw int64: grid position whose final feature each token is decoded with (itself unless a
    # merging method folded it into a group); None when no merge happened.
    merged_into: np.ndarray | None = None
    # Hierarchical backbones (Swin): layers after which the grid halves, and per stage its
    # gh_s x gw_s drop_layer map as the stage ended (a token that entered the stage dead shows
    # the latest layer any of its children left at). ``drop_layer`` above is then the last
    # stage's map repeated onto the input grid: the layer after which a position's lineage
    # stopped being computed.
    stage_ends: tuple[int, ...] = ()
    stage_drop_layer: list[np.ndarray] | None = None

    def stage_of(self, layer: int) -> int:
        """0-based stage of block ``layer`` (0 on plain backbones)."""
        return sum(1 for end in self.stage_ends if end < layer)

    def layer_label(self, layer: int) -> str:
        """"block 5", or where stages exist "block 5 (stage 3, block 1)": the numbering views use."""
        if not self.stage_ends:
            return f"block {layer}"
        s = self.stage_of(layer)
        start = self.stage_ends[s - 1] if s else 0
        return f"block {layer} (stage {s + 1}, block {layer - start})"

    def stage_macs(self) -> list[dict[str, Any]]:
        """Per stage (hierarchical backbones; [] otherwise): its blocks, grid, tokens entering its
        last block, block MACs pruned vs unpruned (patch merging, always on the full grid, is
        ``macs["downsample"]``) and ``frozen_share``: the share of the stage's output grid (what a
        UNet decoder's skip from this stage receives) that holds frozen features."""
        out: list[dict[str, Any]] = []
        if not self.stage_ends:
            return out
        bounds = [0, *self.stage_ends, self.num_blocks]
        for s in range(len(bounds) - 1):
            recs = [r for r in self.layers if bounds[s] < r.layer <= bounds[s + 1]]
            if not recs:
                continue
            out.append({"stage": s + 1, "blocks": [bounds[s] + 1, bounds[s + 1]], "grid": list(self.grid_at(recs[0].layer)),
                        "tokens_last_block": recs[-1].tokens, "macs": sum(r.macs for r in recs),
                        "macs_baseline": sum(r.macs_baseline for r in recs),
                        "frozen_share": float((self.stage_drop_layer[s] < self.num_blocks).mean())
                        if self.stage_drop_layer is not None else 0.0})
        return out

    def grid_at(self, layer: int) -> tuple[int, int]:
        """The token grid of block ``layer`` (the input grid on plain backbones)."""
        s = self.stage_of(layer)
        return (self.grid[0] >> s, self.grid[1] >> s)

    @property
    def final_tokens(self) -> int:
        return self.layers[-1].tokens if self.layers else 0

    def step_at(self, layer: int) -> StepRecord | None:
        """The pruning step that explains the tokens after block ``layer``: the last step at or
        before it (the first one when ``layer`` comes before every step); None without steps."""
        if not self.steps:
            return None
        return next((s for s in reversed(self.steps) if s.layer <= layer), self.steps[0])

    def status_at(self, layer: int) -> np.ndarray:
        """gh x gw int8 statuses as the tokens leave block ``layer``: a pruning layer shows its
        decision; other layers show alive tokens as KEPT. Tokens removed earlier show as GONE,
        or as EXITED when they left with a final prediction."""
        step = next((s for s in self.steps if s.layer == layer), None)
        drop, exited = self.drop_layer, self.exited
        if self.stage_drop_layer is not None:  # the map of this layer's stage, at its resolution
            drop = self.stage_drop_layer[self.stage_of(layer)]
            f = exited.shape[0] // drop.shape[0]  # a stage token shows EXITED when part of its region exited
            exited = exited.reshape(drop.shape[0], f, drop.shape[1], f).any(axis=(1, 3))
        grid = step.status_grid.copy() if step is not None else np.full(drop.shape, KEPT, dtype=np.int8)
        earlier = (drop < layer) if step is not None else (drop <= layer)
        earlier &= drop < self.num_blocks
        grid[earlier] = np.where(exited[earlier], EXITED, GONE)
        return grid


def grid_map(values: Tensor, kept_idx: Tensor, n: int, grid: tuple[int, int]) -> np.ndarray:
    """Nk per-token values -> gh x gw float32 map, NaN where the token is not alive."""
    out = np.full(n, np.nan, dtype=np.float32)
    out[kept_idx.numpy()] = values.detach().float().numpy()
    return out.reshape(grid)


def diagnostics_to_maps(diag: dict[str, Any], kept_idx: Tensor, n: int, grid: tuple[int, int]) -> dict[str, Any]:
    maps: dict[str, Any] = {}
    nk = kept_idx.numel()
    for name, value in diag.items():
        if isinstance(value, Tensor):
            if value.ndim == 1 and value.numel() == nk:
                maps[name] = grid_map(value, kept_idx, n, grid)
            elif value.ndim == 0:
                maps[name] = float(value)
            else:
                maps[name] = value.detach().float().numpy()
        else:
            maps[name] = value
    return maps
