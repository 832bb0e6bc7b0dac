"""Runs a backbone with tokens really removed, and records what happened.

One straight road: ``prepare -> embed -> blocks (full until the first pruning layer, then on the
kept subset only) -> scatter back to the grid -> decode``. After each pruning layer L (1-based:
block L runs in full, blocks L+1.. see only the kept tokens) the method's ``decide`` picks the
tokens that go on. Dropped tokens keep the features they had when dropped; tokens that *exit*
(DToP) keep the auxiliary head's prediction from that layer as their final prediction.

The :class:`Baseline` is the unpruned forward, kept as a prefix cache: it holds the features
after every block, so a new set of pruning parameters re-runs only the blocks after the first
pruning layer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .backbones.base import Backbone, BlockOutput, Prepared
from .budget import check_time
from .errors import ParamError
from .exits import Exits
from .flops import measure_macs
from .methods.base import EXITED, GONE, KEPT, PRUNED, PruneContext
from .records import Baseline, LayerRecord, Plan, StepRecord, Trace, diagnostics_to_maps as _diagnostics_to_maps
from .stages import (block_input, downsample_full, finish_stages, grid_field, merged_kept, next_stage, stage_kwargs,
                     stage_outputs, stages_before)


def image_key(backbone: Backbone, image: np.ndarray) -> str:
    """Cache key: backbone identity and the image's bytes."""
    digest = hashlib.sha1(memoryview(np.ascontiguousarray(image)).cast("B")).hexdigest()[:16]  # no copy
    return f"{backbone.name}:{image.shape}:{digest}"


def _now() -> float:
    return time.perf_counter()


@torch.no_grad()
def run_baseline(
    backbone: Backbone, image: np.ndarray, attn_layers: tuple[int, ...] = (), prep: Prepared | None = None
) -> Baseline:
    """Unpruned forward with every block's output kept (the prefix cache).

    ``attn_layers``: layers whose attention statistics are computed and cached (for methods that
    score tokens by attention). Their recomputation cost is not part of the baseline MACs.
    """
    t0 = _now()
    prep = prep or backbone.prepare(image)
    grid = prep.grid
    x = backbone.embed(prep)
    x_after = [x]
    stats: dict[int, BlockOutput] = {}
    records = []
    n = grid[0] * grid[1]
    down_macs = 0
    for layer in range(1, backbone.num_blocks + 1):
        check_time(f"at block {layer}")
        tb = _now()
        out = backbone.run_block(layer, x, None, grid, want_attn=layer in attn_layers)
        x = out.x
        x_after.append(x)
        if layer in attn_layers:
            stats[layer] = BlockOutput(x=torch.empty(0), received=out.received, cls_attn=out.cls_attn)
        macs = backbone.block_macs(layer, None, grid)
        records.append(LayerRecord(layer, backbone.block_kind(layer), n, macs, macs, (_now() - tb) * 1e3, *grid_field(backbone, grid)))
        if layer in backbone.stage_ends:
            down_macs += backbone.downsample_macs(layer, grid)
            x, grid = downsample_full(backbone, layer, x, grid)
            n = grid[0] * grid[1]
    prefix, patches = backbone.split_prefix(x)
    seg = backbone.decode(patches.clone(), prefix, prep, **stage_kwargs(backbone, stage_outputs(backbone, x_after)))
    total = backbone.embed_macs(prep) + sum(r.macs for r in records) + backbone.decode_macs(prep) + down_macs
    return Baseline(image_key(backbone, image), prep, x_after, stats, seg, total, records, (_now() - t0) * 1e3)


def validate_plan(backbone: Backbone, plan: Plan) -> None:
    """Raise ParamError with a user-facing reason when the plan cannot run on this backbone."""
    if not plan.layers:
        raise ParamError("choose at least one pruning layer")
    if list(plan.layers) != sorted(set(plan.layers)):
        raise ParamError(f"pruning layers must be distinct and increasing, got {list(plan.layers)}")
    for layer in plan.layers:
        if not 1 <= layer <= backbone.num_blocks - 1:
            raise ParamError(
                f"pruning layer {layer} is out of range for {backbone.name}: "
                f"choose layers 1..{backbone.num_blocks - 1} (pruning after the last block saves nothing)"
            )
    reason = plan.method.unmet_need(backbone.name, tuple(backbone.aux_layers))
    if reason:
        raise ParamError(f"method '{plan.method.name}' {reason}")
    if plan.method.needs_aux:
        missing = [layer for layer in plan.layers if layer not in backbone.aux_layers]
        if missing:
            raise ParamError(
                f"method '{plan.method.name}' can only prune after layers with an auxiliary head "
                f"{list(backbone.aux_layers)} on {backbone.name}; got {missing}"
            )


def attention_surcharge(backbone: Backbone, layer: int, grid: tuple[int, int], kept_idx: Tensor | None = None) -> int:
    """Extra MACs block ``layer`` pays to also return attention statistics (for this token set)."""
    return backbone.block_macs(layer, kept_idx, grid, want_attn=True) - backbone.block_macs(layer, kept_idx, grid)


def pad_query_saving(backbone: Backbone, plan: Plan, grid: tuple[int, int]) -> int:
    """MACs the subset code path saves over the stock blocks with *every* token kept (rate 0),
    summed over the blocks after the first pruning layer.

    Not pruning: SAM's windowed blocks run queries for the pad cells of edge windows, whose
    outputs are cropped; the subset path skips those queries (3.6 % of ViT-B's block MACs at
    1024 px, 5.4 % of ViT-H's). 0 on backbones without windows. Reports show it as its own line
    and measure the pruning saving against ``baseline - this``.
    """
    grids = {layer: backbone.grid_at(layer, grid) for layer in range(plan.layers[0] + 1, backbone.num_blocks + 1)}
    return sum(
        backbone.block_macs(layer, None, g) - backbone.block_macs(layer, torch.arange(g[0] * g[1]), g)
        for layer, g in grids.items()
    )


def _context(
    backbone: Backbone, plan: Plan, layer: int, patches: Tensor, kept_idx: Tensor, prep: Prepared,
    stats: BlockOutput | None, aux: Tensor | None, sizes: Tensor | None = None,
    want_diagnostics: bool = True, grid: tuple[int, int] | None = None,
) -> PruneContext:
    """What the method sees after block ``layer``. patches: 1 x Nk x C; aux: Nk x K x S or None;
    sizes: Nk tokens each kept token stands for (merging methods), or None; grid: the layer's
    token grid (hierarchical backbones; default the input grid), its patch in input pixels."""
    grid = grid or prep.grid
    return PruneContext(
        layer=layer,
        step=plan.layers.index(layer),
        num_steps=len(plan.layers),
        tokens=patches[0],
        kept_idx=kept_idx,
        grid=grid,
        patch_size=backbone.patch_size * (prep.grid[0] // grid[0]),
        image=prep.image01,
        seed=plan.seed,
        received=stats.received if stats is not None else None,
        cls_attn=stats.cls_attn if stats is not None else None,
        aux_logits=aux.mean(-1) if aux is not None else None,
        num_tokens_total=grid[0] * grid[1],
        sizes=sizes,
        window=backbone.merge_window(layer),
        want_diagnostics=want_diagnostics,
    )


@torch.no_grad()
def run_pruned(
    backbone: Backbone,
    image: np.ndarray,
    plan: Plan,
    baseline: Baseline | None = None,
    count_decisions: bool = False,
    replay: list[Tensor] | None = None,
    prep: Prepared | None = None,
    diagnostics: bool = True,
) -> Trace:
    """Pruned forward.

    baseline: a cached unpruned forward of the same image; blocks up to the first pruning layer
              are then taken from it instead of recomputed.
    count_decisions: measure each decision's own arithmetic (entropy, clustering, ...) with the
              FLOP counter and report it as ``macs['decision']``.
    replay:   kept_idx per step from an earlier trace; the method is not called and the same
              token sets are used (to measure the model's MACs for exactly those sets).
    diagnostics: False on the timed path: methods skip view-only work and the steps carry no
              diagnostic maps (``StepRecord.diagnostics == {}``); decisions are the same.
    """
    validate_plan(backbone, plan)
    t0 = _now()
    if baseline is not None and baseline.key != image_key(backbone, image):
        raise ValueError("baseline cache belongs to another image or backbone")
    prep = baseline.prep if baseline is not None else (prep or backbone.prepare(image))
    method = plan.method
    first = plan.layers[0]
    grid = backbone.grid_at(first, prep.grid)  # the input grid, except on hierarchical backbones
    n = grid[0] * grid[1]
    want_attn = method.needs_attention and replay is None
    hierarchical = bool(backbone.stage_ends)

    records: list[LayerRecord] = []
    steps: list[StepRecord] = []
    kept_per_step: list[Tensor] = []
    drop_layer = np.full(n, backbone.num_blocks, dtype=np.int16)
    exits = Exits.none(prep.grid)  # on the input grid: a hierarchical stage token covers several cells
    decision_macs = 0
    aux_macs = 0
    from_cache = baseline is not None
    rep = torch.arange(n)  # merging methods: grid token -> the token it is decoded as
    merged = False
    skips: list[Tensor] = []  # hierarchical: full grids after each finished stage (decoder skips)
    stage_drops, down_macs = stages_before(backbone, first, prep.grid)  # per-stage drop maps, merging MACs

    # Blocks 1..first run in full: from the cache if we have one.
    stats: BlockOutput | None = None
    if baseline is not None:
        x = baseline.x_after[first]
        records.extend(baseline.layers[:first])
        skips = stage_outputs(backbone, baseline.x_after, before=first)
        if want_attn:
            stats = baseline.attn_stats.get(first)
            if stats is None:  # not cached: recompute only block `first` with statistics
                stats = backbone.run_block(first, block_input(backbone, baseline, first), None, grid, want_attn=True)
    else:
        x = backbone.embed(prep)
        g = prep.grid
        for layer in range(1, first + 1):
            tb = _now()
            out = backbone.run_block(layer, x, None, g, want_attn=want_attn and layer == first)
            x = out.x
            macs = backbone.block_macs(layer, None, g)
            records.append(LayerRecord(layer, backbone.block_kind(layer), g[0] * g[1], macs, macs, (_now() - tb) * 1e3,
                                       *grid_field(backbone, g)))
            if layer == first:
                stats = out
            elif layer in backbone.stage_ends:
                skips.append(backbone.split_prefix(x)[1])
                x, g = downsample_full(backbone, layer, x, g)
    if want_attn and stats is not None:
        # The statistics cost extra arithmetic in the block that produced them: count it.
        decision_macs += attention_surcharge(backbone, first, grid)

    kept_idx = torch.arange(n)
    full = torch.zeros(1, n, backbone.dim_at(first), dtype=x.dtype)
    for layer in range(first, backbone.num_blocks + 1):
        check_time(f"at block {layer}")
        if layer > first:
            tb = _now()
            step_attn = want_attn and layer in plan.layers
            out = backbone.run_block(layer, x, kept_idx, grid, want_attn=step_attn)
            x = out.x
            stats = out if step_attn else None
            macs = backbone.block_macs(layer, kept_idx, grid)
            if step_attn:
                decision_macs += attention_surcharge(backbone, layer, grid, kept_idx)
            base_macs = backbone.block_macs(layer, None, grid)
            records.append(LayerRecord(layer, backbone.block_kind(layer), kept_idx.numel(), macs, base_macs, (_now() - tb) * 1e3,
                                       *grid_field(backbone, grid)))
        if layer not in plan.layers:
            if layer in backbone.stage_ends:
                x, kept_idx, full, grid, drop_layer, down_macs, rep = next_stage(
                    backbone, layer, x, kept_idx, full, grid, skips, stage_drops, drop_layer, down_macs,
                    rep if merged else None)
            continue

        step = plan.layers.index(layer)
        n = grid[0] * grid[1]  # this stage's grid
        prefix, patches = backbone.split_prefix(x)
        aux = None
        if method.needs_aux:
            aux = backbone.aux_logits(layer, patches[0])  # Nk x K x S (S sub-patch positions)
            aux_macs += backbone.aux_macs(layer, kept_idx.numel())
        td = _now()
        if replay is not None:
            keep_global = replay[step]
            keep = torch.nonzero(torch.isin(kept_idx, keep_global)).flatten()
            status = torch.full((kept_idx.numel(),), PRUNED, dtype=torch.long)
            status[keep] = KEPT
            diag: dict[str, Any] = {}
        else:
            sizes = torch.bincount(rep, minlength=n)[kept_idx].float() if merged else None
            ctx = _context(backbone, plan, layer, patches, kept_idx, prep, stats, aux, sizes, diagnostics, grid)
            if count_decisions:
                step_macs, decision = measure_macs(lambda: method.decide(ctx, plan.params))
                decision_macs += step_macs
            else:
                decision = method.decide(ctx, plan.params)
            keep, status, diag = decision.keep, decision.status, decision.diagnostics
            forced = _overrides_at(plan, layer)
            if forced is not None and decision.merge_into is not None:
                # A merge decides where every token's feature goes; forcing one token in or out
                # would leave its group without a representative.
                raise ParamError(f"force keep / force prune is not available for merging methods ({plan.method.name})")
            if decision.merge_into is not None:
                # Re-point every grid token represented by a merged alive token (itself, or tokens
                # merged into it earlier) to its new representative.
                step_map = torch.arange(n)
                step_map[kept_idx] = kept_idx[decision.merge_into]
                rep = step_map[rep]
                merged = True
            if decision.features is not None:
                patches = patches.clone()
                patches[0, keep] = decision.features.to(patches.dtype)
            if forced is not None:
                keep, status = apply_overrides(status, kept_idx, *forced)
        decide_ms = (_now() - td) * 1e3

        status_grid = np.full(n, GONE, dtype=np.int8)
        status_grid[kept_idx.numpy()] = status.numpy().astype(np.int8)
        steps.append(
            StepRecord(
                layer=layer,
                tokens_in=kept_idx.numel(),
                tokens_kept=keep.numel(),
                status_grid=status_grid.reshape(grid),
                diagnostics=_diagnostics_to_maps(diag, kept_idx, n, grid) if diagnostics else {},
                decide_ms=decide_ms,
            )
        )
        # Tokens leaving: freeze their features; exiting ones also freeze their prediction.
        leaving = torch.ones(kept_idx.numel(), dtype=torch.bool)
        leaving[keep] = False
        gone_idx = kept_idx[leaving]
        full[:, gone_idx] = patches[:, leaving]
        drop_layer[gone_idx.numpy()] = layer
        exit_here = leaving & (status == EXITED)
        if exit_here.any():
            if aux is None:
                raise RuntimeError(f"method '{method.name}' exited tokens without auxiliary logits")
            exits.add(layer, kept_idx[exit_here], aux[exit_here], grid)
        kept_idx = kept_idx[keep]
        kept_per_step.append(kept_idx.clone())
        x = torch.cat([prefix, patches[:, keep]], dim=1)
        if layer in backbone.stage_ends:
            x, kept_idx, full, grid, drop_layer, down_macs, rep = next_stage(
                backbone, layer, x, kept_idx, full, grid, skips, stage_drops, drop_layer, down_macs,
                rep if merged else None)

    prefix, patches = backbone.split_prefix(x)
    full[:, kept_idx] = patches
    if merged:  # ToMe's unmerge: a merged token takes its group's final feature
        full = full[:, rep]
    seg = backbone.decode(full, prefix, prep, *exits.decode_args(), **stage_kwargs(backbone, skips))

    embed = backbone.embed_macs(prep)
    blocks = sum(r.macs for r in records)
    decode = backbone.decode_macs(prep)
    macs = {
        "embed": embed,
        "blocks": blocks,
        "aux_heads": aux_macs,
        "decision": decision_macs,
        "decode": decode,
        "total": embed + blocks + aux_macs + decision_macs + decode,
    }
    if hierarchical:
        macs["downsample"] = down_macs
        macs["total"] += down_macs
        drop_layer, grid = finish_stages(drop_layer, grid, prep.grid, stage_drops, exits)
    return Trace(
        backbone=backbone.name,
        method=method.name,
        params=_params_dict(plan.params),
        plan_layers=plan.layers,
        grid=grid,
        layers=records,
        steps=steps,
        drop_layer=drop_layer.reshape(grid),
        exited=exits.mask.numpy().reshape(grid),
        kept_per_step=kept_per_step,
        seg=seg,
        macs=macs,
        time_ms=(_now() - t0) * 1e3,
        from_cache=from_cache,
        num_blocks=backbone.num_blocks,
        merged_into=rep.numpy().reshape(grid) if merged and not hierarchical else None,  # Swin: groups end with a stage
        stage_ends=tuple(backbone.stage_ends),
        stage_drop_layer=stage_drops if hierarchical else None,
    )


def apply_overrides(status: Tensor, kept_idx: Tensor, force_keep: tuple[int, ...], force_prune: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Overrule a decision for chosen tokens (global row-major indices; tokens not alive are
    ignored). status: Nk long; returns (keep Nk-local sorted indices, status). A forced-in token
    becomes KEPT, a forced-out one PRUNED (never EXITED: it has no final prediction of its own)."""
    status = status.clone()
    status[torch.isin(kept_idx, torch.tensor(force_keep, dtype=torch.long))] = KEPT
    status[torch.isin(kept_idx, torch.tensor(force_prune, dtype=torch.long))] = PRUNED
    return torch.nonzero((status != PRUNED) & (status != EXITED)).flatten(), status


def _overrides_at(plan: Plan, layer: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    return next(((k, p) for at, k, p in plan.overrides if at == layer), None)


def _params_dict(params: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(params) if is_dataclass(params) else dict(params or {})


@torch.no_grad()
def estimate_macs(backbone: Backbone, baseline: Baseline, plan: Plan) -> dict[str, Any]:
    """Fast MAC readout from the prefix cache, for live controls (no block is run).

    The first decision is made for real on the cached features after the first pruning layer,
    so with one pruning layer the block MACs are exact (the same kept set, window occupancy
    included). Later steps cannot be known without running the blocks in between: they are
    assumed to keep the same fraction as the first step, spread evenly over the tokens still
    alive. The method's own decision arithmetic is not included. Returns total MACs, the
    per-layer token counts, ``exact`` (True when the estimate is the real count) and
    ``subset_rate0`` (the unpruned MACs less :func:`pad_query_saving`).
    """
    validate_plan(backbone, plan)
    first = plan.layers[0]
    grid = backbone.grid_at(first, baseline.prep.grid)
    n = grid[0] * grid[1]
    x = baseline.x_after[first]
    prefix, patches = backbone.split_prefix(x)
    stats = baseline.attn_stats.get(first) if plan.method.needs_attention else None
    if plan.method.needs_attention and stats is None:
        stats = backbone.run_block(first, block_input(backbone, baseline, first), None, grid, want_attn=True)
    aux = backbone.aux_logits(first, patches[0]) if plan.method.needs_aux else None
    ctx = _context(backbone, plan, first, patches, torch.arange(n), baseline.prep, stats, aux, want_diagnostics=False,
                   grid=grid)
    decision = plan.method.decide(ctx, plan.params)
    keep = decision.keep
    forced = _overrides_at(plan, first)
    if forced is not None:
        keep, _ = apply_overrides(decision.status, torch.arange(n), *forced)
    kept_idx = torch.arange(n)[keep]
    fraction = kept_idx.numel() / n
    total = backbone.embed_macs(baseline.prep) + backbone.decode_macs(baseline.prep)
    total += sum(r.macs for r in baseline.layers[:first])
    # Patch merging runs on the full grid whatever is pruned.
    total += sum(backbone.downsample_macs(e, backbone.grid_at(e, baseline.prep.grid)) for e in backbone.stage_ends)
    tokens = [r.tokens for r in baseline.layers[:first]]
    aux_macs = backbone.aux_macs(first, n) if plan.method.needs_aux else 0
    if first in backbone.stage_ends:
        kept_idx, grid = merged_kept(backbone, first, kept_idx, grid, plan.method.merges)
    for layer in range(first + 1, backbone.num_blocks + 1):
        total += backbone.block_macs(layer, kept_idx, grid)
        tokens.append(kept_idx.numel())
        if layer in plan.layers and layer != backbone.num_blocks:
            if plan.method.needs_aux:
                aux_macs += backbone.aux_macs(layer, kept_idx.numel())
            keep_n = max(1, int(round(fraction * kept_idx.numel())))
            kept_idx = kept_idx[torch.linspace(0, kept_idx.numel() - 1, keep_n).round().long().unique()]
        if layer in backbone.stage_ends:
            kept_idx, grid = merged_kept(backbone, layer, kept_idx, grid, plan.method.merges)
    return {"macs": int(total + aux_macs), "baseline": int(baseline.macs), "tokens": tokens, "exact": len(plan.layers) == 1,
            "subset_rate0": int(baseline.macs - pad_query_saving(backbone, plan, baseline.prep.grid))}

