"""Where the damage comes from: the pixels pruning changed, attributed to the pruned tokens that
caused them, by restoring tokens and measuring.

1. Changed pixels: the pruned run's labels differ from the unpruned run's.
2. Candidates: pruned tokens (removed or exited before the last block) with changed pixels in
   their 3 x 3 token neighbourhood. They are grouped: 8-connected groups on the token grid, cut
   into ``group_side`` x ``group_side`` tiles so a group stays local.
3. Each group, most nearby change first, is restored: the plan is re-run from the prefix cache
   with those tokens forced to stay through every pruning layer (``Plan.overrides``, the token
   inspector's "what if it had stayed?"). Its share = 1 - changed pixels after / before (net:
   pixels a restore breaks elsewhere count against it). At most ``max_runs`` runs in all, and
   no new one after ``budget_s`` seconds.
4. Greedy statement: groups by share, best first, until their summed shares reach ``target``;
   then the claim is **measured**: one run with all of them restored together (shares do not
   add up exactly: tokens interact through attention and later decisions). If that falls short
   of the target, the next groups are added and measured again while runs are left. The
   reported share is always the measured one of the final set.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .backbones.base import Backbone
from .engine import Baseline, Plan, Trace, run_pruned
from .errors import ParamError
from .viz import write_png
from .viz_damage import attribution_map

MAX_RUNS = 32
CHECK_RUNS = 4  # runs kept back for measuring the statement's token set
BUDGET_S = 20.0


@dataclass(frozen=True)
class Group:
    """Pruned tokens restored together. tokens: global row-major indices on the token grid."""

    tokens: tuple[int, ...]
    centre: tuple[int, int]  # (row, col) on the token grid
    changed_near: int  # changed pixels under the group's tokens and their neighbours
    share: float | None = None  # measured share of the changed pixels restoring it recovers (None: not tested)


@dataclass
class Attribution:
    grid: tuple[int, int]
    changed: int  # pixels whose class pruning changed
    pixels: int
    pruned_tokens: int
    groups: list[Group]  # tested ones by share (best first), then the untested
    chosen: tuple[int, ...]  # tokens of the statement
    claimed_share: float  # measured: restoring ``chosen`` together
    estimated_share: float  # the sum of the chosen groups' own shares (what was expected)
    claimed_macs_pct: float  # MACs of the restored run, % of the unpruned model (the pruned run's for comparison below)
    pruned_macs_pct: float
    runs: int
    seconds: float
    stopped: str  # why testing stopped ("all groups tested", "run limit", "time budget")
    statement: str

    def share_grid(self) -> np.ndarray:
        """gh x gw float: each tested token's group share; NaN elsewhere."""
        out = np.full(self.grid[0] * self.grid[1], np.nan, dtype=np.float32)
        for g in self.groups:
            if g.share is not None:
                out[list(g.tokens)] = g.share
        return out.reshape(self.grid)

    def chosen_grid(self) -> np.ndarray:
        out = np.zeros(self.grid[0] * self.grid[1], dtype=bool)
        out[list(self.chosen)] = True
        return out.reshape(self.grid)

    def as_json(self) -> dict[str, Any]:
        gw = self.grid[1]
        return {
            "changed_pixels": self.changed, "pixels": self.pixels, "pruned_tokens": self.pruned_tokens,
            "chosen_tokens": [[t // gw, t % gw] for t in self.chosen], "claimed_share": self.claimed_share,
            "estimated_share": self.estimated_share, "claimed_macs_pct": self.claimed_macs_pct,
            "pruned_macs_pct": self.pruned_macs_pct, "runs": self.runs, "seconds": round(self.seconds, 2),
            "stopped": self.stopped, "statement": self.statement,
            "groups": [{"rank": i + 1, "tokens": len(g.tokens), "centre": list(g.centre), "changed_near": g.changed_near,
                        "share": g.share} for i, g in enumerate(self.groups)],
        }


def pixel_tokens(orig_hw: tuple[int, int], valid_hw: tuple[int, int], grid: tuple[int, int], patch: int) -> np.ndarray:
    """H x W int64: the token (row-major index) each pixel of the original image falls in."""
    h, w = orig_hw
    rows = np.minimum((np.arange(h) * valid_hw[0] / h / patch).astype(np.int64), grid[0] - 1)
    cols = np.minimum((np.arange(w) * valid_hw[1] / w / patch).astype(np.int64), grid[1] - 1)
    return rows[:, None] * grid[1] + cols[None, :]


def restored_plan(plan: Plan, tokens: tuple[int, ...]) -> Plan:
    """``plan`` with ``tokens`` forced to stay at every pruning layer (other overrides kept)."""
    old = {at: (keep, prune) for at, keep, prune in plan.overrides}
    chosen = set(tokens)
    overrides = []
    for at in plan.layers:
        keep, prune = old.get(at, ((), ()))
        overrides.append((at, tuple(sorted(set(keep) | chosen)), tuple(t for t in prune if t not in chosen)))
    return dataclasses.replace(plan, overrides=tuple(overrides))


def changed_after_restoring(backbone: Backbone, image: np.ndarray, plan: Plan, baseline: Baseline,
                            tokens: tuple[int, ...]) -> tuple[int, Trace]:
    """Pixels still differing from the unpruned labels with ``tokens`` restored, and the run."""
    trace = run_pruned(backbone, image, restored_plan(plan, tokens), baseline=baseline, diagnostics=False)
    return int((trace.seg.labels != baseline.seg.labels).sum()), trace


def candidate_groups(changed: np.ndarray, token_of: np.ndarray, pruned: np.ndarray, group_side: int = 4) -> list[Group]:
    """Groups of pruned tokens near changed pixels, most nearby change first.

    changed: H x W bool; token_of: H x W token index; pruned: gh x gw bool."""
    gh, gw = pruned.shape
    own = np.bincount(token_of[changed].ravel(), minlength=gh * gw).reshape(gh, gw).astype(np.float32)
    near = cv2.boxFilter(own, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    cand = pruned & (near > 0)
    n, comp = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
    rr, cc = np.mgrid[0:gh, 0:gw]
    tile = (rr // group_side) * ((gw + group_side - 1) // group_side) + cc // group_side
    groups = []
    key = comp.astype(np.int64) * (tile.max() + 1) + tile
    for k in np.unique(key[cand]):
        sel = cand & (key == k)
        r, c = np.nonzero(sel)
        groups.append(Group(tuple(int(i) for i in (r * gw + c)), (int(round(r.mean())), int(round(c.mean()))),
                            int(near[sel].sum())))
    groups.sort(key=lambda g: (-g.changed_near, g.tokens))
    return groups


def attribute(
    backbone: Backbone, image: np.ndarray, plan: Plan, baseline: Baseline, trace: Trace,
    target: float = 0.7, max_runs: int = MAX_RUNS, budget_s: float = BUDGET_S, group_side: int = 4,
) -> Attribution:
    """Attribute the pixels ``trace`` changed (against ``baseline``) to its pruned tokens."""
    if trace.merged_into is not None:
        raise ParamError(f"attribution restores pruned tokens; {trace.method} merges them instead, so there is nothing to restore")
    if not 0 < target <= 1:
        raise ParamError(f"target must be in (0, 1], got {target}")
    if max_runs < 2:
        raise ParamError(f"max_runs must be at least 2 (one group and the check), got {max_runs}")
    t0 = time.perf_counter()
    before, after = baseline.seg.labels, trace.seg.labels
    changed_mask = before != after
    changed = int(changed_mask.sum())
    prep = baseline.prep
    pruned = trace.drop_layer < trace.num_blocks
    base_macs = baseline.macs
    pruned_pct = 100.0 * trace.macs["total"] / base_macs
    common = dict(grid=trace.grid, changed=changed, pixels=int(before.size), pruned_tokens=int(pruned.sum()),
                  pruned_macs_pct=pruned_pct)
    if changed == 0:
        return Attribution(groups=[], chosen=(), claimed_share=0.0, estimated_share=0.0, claimed_macs_pct=pruned_pct,
                           runs=0, seconds=time.perf_counter() - t0, stopped="nothing changed",
                           statement="Pruning changed no pixel: there is nothing to attribute.", **common)
    token_of = pixel_tokens(prep.orig_hw, prep.valid_hw, prep.grid, backbone.patch_size)
    groups = candidate_groups(changed_mask, token_of, pruned, group_side)
    tested: list[Group] = []
    runs, stopped = 0, "all groups tested"
    for g in groups:
        if runs >= max_runs - min(CHECK_RUNS, max_runs // 2):
            stopped = "run limit"
            break
        if time.perf_counter() - t0 > budget_s:
            stopped = "time budget"
            break
        left, _ = changed_after_restoring(backbone, image, plan, baseline, g.tokens)
        runs += 1
        tested.append(dataclasses.replace(g, share=(changed - left) / changed))
    tested.sort(key=lambda g: (-(g.share or 0.0), g.tokens))
    untested = groups[len(tested):]
    useful = [g for g in tested if (g.share or 0) > 0]
    n, claimed, est, macs_pct = 0, 0.0, 0.0, pruned_pct
    while useful and n < len(useful) and runs < max_runs:
        # The smallest prefix whose own shares add up to what is still missing, measured together.
        need, total = target - claimed, 0.0
        m = n
        while m < len(useful) and (m == n or total < need):
            total += useful[m].share or 0.0
            m += 1
        if m == n:
            break
        tokens = tuple(sorted({t for g in useful[:m] for t in g.tokens}))
        left, run = changed_after_restoring(backbone, image, plan, baseline, tokens)
        runs += 1
        n, claimed = m, (changed - left) / changed
        est = sum(g.share or 0.0 for g in useful[:m])
        macs_pct = 100.0 * run.macs["total"] / base_macs
        if claimed >= target or time.perf_counter() - t0 > budget_s:
            break
    chosen = tuple(sorted({t for g in useful[:n] for t in g.tokens}))
    statement = _statement(len(chosen), int(pruned.sum()), claimed, changed, int(before.size), macs_pct, pruned_pct,
                           len(tested), len(groups), stopped, n)
    return Attribution(groups=tested + untested, chosen=chosen, claimed_share=claimed, estimated_share=est,
                       claimed_macs_pct=macs_pct, runs=runs, seconds=time.perf_counter() - t0, stopped=stopped,
                       statement=statement, **common)


def _statement(n_tokens: int, n_pruned: int, share: float, changed: int, pixels: int, macs_pct: float,
               pruned_pct: float, tested: int, groups: int, stopped: str, n_groups: int) -> str:
    head = f"Pruning changed the class of {changed} of {pixels} pixels ({100 * changed / pixels:.2f} %)."
    scope = f"{tested} of {groups} groups of pruned tokens near the change were tested" + (
        f" (stopped: {stopped})." if stopped != "all groups tested" else ".")
    if n_tokens == 0:
        return f"{head} No tested group of pruned tokens brings any of it back on its own; {scope}"
    return (f"{head} These {n_tokens} of the {n_pruned} pruned tokens ({n_groups} group(s)) account for "
            f"{100 * share:.0f} % of the changed pixels: restored together, kept through every pruning layer, "
            f"they bring back that share (measured in one run), at {macs_pct:.1f} % of the unpruned MACs instead of "
            f"{pruned_pct:.1f} %. {scope}")


def ranked_rows(att: Attribution, limit: int = 15) -> list[list[Any]]:
    """The ranked list: rank, tokens, centre (row, col), changed pixels nearby, share restored (%)."""
    return [[i + 1, len(g.tokens), f"({g.centre[0]}, {g.centre[1]})", g.changed_near,
             "not tested" if g.share is None else f"{100 * g.share:.1f}"] for i, g in enumerate(att.groups[:limit])]


RANKED_HEADERS = ["rank", "tokens", "centre (row, col)", "changed px nearby", "share restored (%)"]


def attribution_image(att: Attribution, image: np.ndarray, baseline: Baseline, trace: Trace, patch: int) -> np.ndarray:
    """The map (viz_damage.attribution_map) over ``image`` at its original size."""
    prep = baseline.prep
    scale = (prep.orig_hw[0] / prep.valid_hw[0], prep.orig_hw[1] / prep.valid_hw[1])
    return attribution_map(image, baseline.seg.labels != trace.seg.labels, att.share_grid(), att.chosen_grid(),
                           (patch * scale[0], patch * scale[1]))


def save_attribution(att: Attribution, image: np.ndarray, baseline: Baseline, trace: Trace, patch: int, out: Path) -> list[Path]:
    """``attribution.png`` (the map) and ``attribution.json`` (statement, ranked groups) in ``out``."""
    png = write_png(out / "attribution.png", attribution_image(att, image, baseline, trace, patch))
    js = out / "attribution.json"
    js.write_text(json.dumps(att.as_json(), indent=2))
    return [png, js]
