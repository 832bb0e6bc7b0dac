"""Fine-tune the demo segmenter with MATP pruning in the forward (MATP's training-time parts).

    python -m prune_viz.train_matp --init assets/demo_segmenter.safetensors --out assets/
    python -m prune_viz.train_matp --init /tmp/tiny/demo_segmenter.safetensors --out /tmp/m --steps 2 --val 1

Writes ``OUT/demo_matp.safetensors`` (fp16, the format of ``prune_viz.train``), ``OUT/demo_matp.json``
(the DemoConfig with the fine-tune config and validation metrics in ``extra``) and
``OUT/MODEL_CARD_MATP.md``. The metrics come from evaluating the saved weights: every head
unpruned (``prune_viz.train.evaluate_heads``) and MATP at its defaults through the engine (real
token removal), on ``--val`` validation scenes; MATP on the starting model too (``--no-eval-init``
skips it), so the card shows what the fine-tune bought.

Batched training cannot gather a different token subset per image cheaply, so pruning is emulated
on the full B x N token set, and the emulation is exact for what the loss sees:

- After a pruning layer, pruned tokens are removed from the *keys* of every later block (a
  boolean attention mask), so kept tokens never see them, as with real removal.
- A pruned token's features freeze at its pruning layer; the main head decodes the frozen
  features at the end, as the engine does. With the gradient stop (default) the frozen copy is
  detached: the main loss on pruned tokens trains the head but does not pull the early blocks
  towards final-layer features. ``--no-grad-stop`` lets that gradient through (the ablation).
- Pruned tokens still run through later blocks as queries (cheaper than gathering per image),
  but those rows are discarded, so nothing flows through them.
- Auxiliary losses at each head count only the tokens alive when that head scores them.

Retention gate: early in training a fraction of the tokens the criterion would prune is retained
anyway (chosen at random), decaying linearly from ``--gate-start`` to 0 over ``--gate-steps``, so
the model adapts gradually and keeps context. ``--no-gate`` disables it (the ablation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from .backbones.demo import DemoBackbone, DemoSegmenter, build_demo, tokens_to_map
from .data import synthetic
from .methods.matp import SPEC as MATP_SPEC
from .methods.matp import MATPParams, matp_masks
from .train import SceneDataset, lr_at
from .train_eval import evaluate_heads, git_commit, head_metrics, matp_card

WEIGHTS_NAME = "demo_matp.safetensors"
CONFIG_NAME = "demo_matp.json"
CARD_NAME = "MODEL_CARD_MATP.md"


@dataclass(frozen=True)
class MATPTrainConfig:
    """Fine-tune settings. lr and weight decay are the paper's (2e-4, 0.01); the budget (600 steps
    of 8 crops at 256 px, about 1.9 CPU-seconds per step on one thread) is sized for about 15
    minutes on 2 CPU cores (the paper: 40k iterations of 4 images at 512 px on a GPU). Crops take
    their window of the position grid, as in ``prune_viz.train``. The gate decays over the first
    half of the run (the paper: "the early stages of training")."""

    steps: int = 600
    batch: int = 8
    crop: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 30
    aux_weight: float = 0.4
    layers: tuple[int, ...] = (3, 6, 8)
    gate: bool = True
    gate_start: float = 0.2
    gate_steps: int = 300
    grad_stop: bool = True
    seed: int = 0
    data_start: int = 50_000  # train-split scenes after those the base model was trained on
    val: int = 100
    eval_init: bool = True  # also evaluate MATP on the starting model (the gain of fine-tuning)
    threads: int = 2
    split: str = "train"  # training scenes (``train_varied`` for the #11 pilot)
    val_split: str = "val"  # the split the card's evaluation uses

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.val < 0 or self.gate_steps < 0 or self.warmup < 0:
            raise ValueError("steps and batch must be >= 1; val, gate_steps and warmup >= 0")
        if not 0.0 <= self.gate_start <= 1.0:
            raise ValueError(f"gate_start must be in [0, 1] (a fraction of the tokens to prune), got {self.gate_start}")
        if list(self.layers) != sorted(set(self.layers)) or not self.layers:
            raise ValueError(f"layers must be distinct and increasing, got {list(self.layers)}")
        unknown = [name for name in (self.split, self.val_split) if name not in synthetic.SPLIT_SEEDS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; the data module offers {tuple(synthetic.SPLIT_SEEDS)}")


# ------------------------------------------------------------------------------ retention gate


def gate_fraction(step: int, cfg: MATPTrainConfig) -> float:
    """Fraction of the would-be-pruned tokens retained at ``step`` (0-based): linear decay from
    ``gate_start`` at step 0 to 0 at ``gate_steps``; 0 throughout with the gate off."""
    if not cfg.gate or cfg.gate_steps == 0:
        return 0.0
    return cfg.gate_start * max(0.0, 1.0 - step / cfg.gate_steps)


def apply_gate(prune: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Retain ``round(fraction * n)`` of the n tokens marked in ``prune`` (N bool), chosen at
    random; returns the reduced N bool mask."""
    idx = torch.nonzero(prune).flatten()
    n_keep = int(round(fraction * idx.numel()))
    if n_keep == 0:
        return prune
    out = prune.clone()
    out[idx[torch.randperm(idx.numel(), generator=generator)[:n_keep]]] = False
    return out


# --------------------------------------------------------------------- pruned training forward


@dataclass
class PrunedForward:
    """What one emulated pruned forward produced.

    main:        B x N x K x S main-head logits (pruned tokens decoded from their frozen features)
    aux:         layer -> B x N x K x S auxiliary logits on the features after that block
    aux_alive:   layer -> B x N bool, tokens alive when that auxiliary head scored them
    alive:       B x N bool, tokens that ran through every block
    candidates:  pruning layer -> tokens the criterion chose (summed over the batch)
    pruned:      pruning layer -> tokens actually pruned after the gate (summed over the batch)
    """

    main: Tensor
    aux: dict[int, Tensor]
    aux_alive: dict[int, Tensor]
    alive: Tensor
    candidates: dict[int, int]
    pruned: dict[int, int]


def key_mask(alive: Tensor, num_prefix: int) -> Tensor:
    """B x N alive mask -> B x 1 x 1 x (P + N) boolean attention mask (True = may be attended).
    Prefix tokens are never pruned; the mask broadcasts over heads and queries."""
    prefix = torch.ones(alive.shape[0], num_prefix, dtype=torch.bool, device=alive.device)
    return torch.cat([prefix, alive], dim=1)[:, None, None, :]


def pruned_forward(
    model: DemoSegmenter,
    pixels: Tensor,
    offset: tuple[int, int],
    params: MATPParams,
    layers: tuple[int, ...],
    gate: float = 0.0,
    grad_stop: bool = True,
    generator: torch.Generator | None = None,
) -> PrunedForward:
    """Forward of B x 3 x H x W ``pixels`` with MATP pruning after ``layers`` (see the module doc).

    The criterion runs per image without gradients on the auxiliary logits averaged over sub-cells
    (N x K), exactly what the engine hands the method, so the decisions match inference.
    """
    for layer in layers:
        if str(layer) not in model.aux_heads:
            raise ValueError(f"MATP prunes after layers with an auxiliary head {list(model.cfg.aux_layers)}; got {layer}")
    generator = generator or torch.Generator().manual_seed(0)
    x = model.embed(pixels, offset)
    b = x.shape[0]
    p = 1  # the demo ViT's class token
    n = x.shape[1] - p
    alive = torch.ones(b, n, dtype=torch.bool)
    frozen = torch.zeros_like(x[:, p:])
    aux: dict[int, Tensor] = {}
    aux_alive: dict[int, Tensor] = {}
    candidates: dict[int, int] = {}
    pruned: dict[int, int] = {}
    for i, block in enumerate(model.vit.blocks, start=1):
        # No mask until something is pruned: the unmasked path is the fast fused one.
        x = block(x, attn_mask=None if bool(alive.all()) else key_mask(alive, p))
        if str(i) in model.aux_heads:
            aux[i] = model.aux_heads[str(i)](x[:, p:])
            aux_alive[i] = alive.clone()
        if i not in layers:
            continue
        new = torch.zeros(b, n, dtype=torch.bool)
        n_cand = 0
        with torch.no_grad():
            logits = aux[i].detach().mean(-1)  # B x N x K
            for j in range(b):
                idx = torch.nonzero(alive[j]).flatten()
                if idx.numel() == 0:
                    continue
                prune, _ = matp_masks(logits[j, idx], x[j, p + idx].detach(), params)
                n_cand += int(prune.sum())
                new[j, idx[apply_gate(prune, gate, generator)]] = True
        feats = x[:, p:].detach() if grad_stop else x[:, p:]
        frozen = torch.where(new[..., None], feats, frozen)
        alive = alive & ~new
        candidates[i], pruned[i] = n_cand, int(new.sum())
    final = torch.where(alive[..., None], x[:, p:], frozen)
    gh, gw = pixels.shape[-2] // model.cfg.patch_size, pixels.shape[-1] // model.cfg.patch_size
    main = model.decode_tokens(final, gh, gw)  # the mixing decoder sees the scattered-back grid
    return PrunedForward(main, aux, aux_alive, alive, candidates, pruned)


def _cell_mask(alive: Tensor, gh: int, gw: int, sub: int) -> Tensor:
    """B x N token mask -> B x (gh*sub) x (gw*sub) cell mask (each token covers sub x sub cells)."""
    m = alive.view(-1, gh, gw)
    return m.repeat_interleave(sub, dim=1).repeat_interleave(sub, dim=2)


def matp_loss(
    model: DemoSegmenter,
    pixels: Tensor,
    target: Tensor,
    offsets: Tensor,
    params: MATPParams,
    cfg: MATPTrainConfig,
    gate: float,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """Main CE on every cell + ``aux_weight`` x each auxiliary CE over its alive tokens' cells.

    pixels B x 3 x H x W, target B x H/4 x W/4 cell labels, offsets B x 2 (position-grid windows,
    grouped as in ``prune_viz.train.loss_fn``). Returns (loss, stats: kept fraction per layer).
    """
    total: Tensor = torch.zeros(())
    gh, gw = pixels.shape[-2] // model.cfg.patch_size, pixels.shape[-1] // model.cfg.patch_size
    cand = {layer: 0 for layer in cfg.layers}
    done = {layer: 0 for layer in cfg.layers}
    for off in torch.unique(offsets, dim=0):
        sel = (offsets == off).all(dim=1)
        out = pruned_forward(model, pixels[sel], (int(off[0]), int(off[1])), params, cfg.layers, gate, cfg.grad_stop, generator)
        tgt = target[sel]
        loss = F.cross_entropy(tokens_to_map(out.main, gh, gw), tgt)
        for layer, logits in out.aux.items():
            per_cell = F.cross_entropy(tokens_to_map(logits, gh, gw), tgt, reduction="none")
            mask = _cell_mask(out.aux_alive[layer], gh, gw, model.cfg.sub).float()
            # Sum over alive cells / their count: a batch whose tokens were all pruned adds 0, not NaN.
            loss = loss + cfg.aux_weight * (per_cell * mask).sum() / mask.sum().clamp_min(1.0)
        total = total + loss * sel.sum() / len(sel)
        for layer in cfg.layers:
            cand[layer] += out.candidates[layer]
            done[layer] += out.pruned[layer]
    n_tokens = pixels.shape[0] * gh * gw
    stats = {f"pruned{layer}": done[layer] / n_tokens for layer in cfg.layers}
    stats["retained_by_gate"] = sum(cand[l] - done[l] for l in cfg.layers) / max(1, sum(cand.values()))
    return total, stats


# ------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_matp_engine(
    backbone: DemoBackbone, n: int, params: MATPParams | None = None, layers: tuple[int, ...] | None = None,
    split: str = "val", progress: bool = True,
) -> dict:
    """MATP through the engine (tokens really removed) on ``n`` scenes of a split.

    Returns mIoU / per-class IoU of the pruned prediction, mean MACs per image pruned and unpruned
    (1 multiply-add = 1 MAC; aux heads included in the pruned count), and the mean fraction of
    patch tokens alive after each pruning layer.
    """
    from .data import synthetic
    from .engine import Plan, run_pruned
    from .metrics import ConfusionMatrix

    params = params or MATPParams()
    layers = layers or MATP_SPEC.default_layers(backbone.num_blocks)
    plan = Plan(MATP_SPEC, params, layers)
    cfg = backbone.cfg
    cm = ConfusionMatrix(len(cfg.classes))
    macs, macs_full, kept = [], [], []
    for i in tqdm(range(n), desc=f"matp engine {split}", disable=not progress):
        image, gt = synthetic.split_scene(split, i, cfg.img_size)
        trace = run_pruned(backbone, image, plan)
        cm.update(trace.seg.labels, gt)
        macs.append(trace.macs["total"])
        macs_full.append(trace.macs["embed"] + trace.macs["decode"] + sum(r.macs_baseline for r in trace.layers))
        total = trace.grid[0] * trace.grid[1]
        kept.append([s.tokens_kept / total for s in trace.steps])
    mean_macs, mean_full = float(np.mean(macs)), float(np.mean(macs_full))
    return {
        "method": "matp",
        "params": asdict(params),
        "layers": list(layers),
        "scenes": n,
        "miou": cm.miou(),
        "iou": {c: float(v) for c, v in zip(cfg.classes, cm.iou())},
        "macs": int(mean_macs),
        "macs_unpruned": int(mean_full),
        "macs_reduction_pct": round(100.0 * (1.0 - mean_macs / mean_full), 2),
        "kept_fraction_after": {str(layer): round(float(v), 4) for layer, v in zip(layers, np.mean(kept, axis=0))},
    }


# ---------------------------------------------------------------------------------- training


def run(
    cfg: MATPTrainConfig, init: Path, out: Path, params: MATPParams | None = None, progress: bool = True,
    command: str | None = None,
) -> dict:
    """Fine-tune from ``init`` (a demo checkpoint with its .json beside it), save, evaluate.
    ``command`` is recorded in the card (default: this process's command line)."""
    commit = git_commit()  # at the start: the code that trains, not HEAD when it ends
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    params = params or MATPParams()
    base = build_demo(init)
    model = base.net
    model_cfg = model.cfg
    missing = [layer for layer in cfg.layers if layer not in model_cfg.aux_layers]
    if missing:
        raise ValueError(f"pruning layers {missing} have no auxiliary head in {init} (heads after {list(model_cfg.aux_layers)})")
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in name]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    data = SceneDataset(cfg.data_start, cfg.steps * cfg.batch, cfg.crop, model_cfg, cfg.seed, split=cfg.split)
    loader = DataLoader(data, batch_size=cfg.batch, shuffle=False, num_workers=1, persistent_workers=False)
    # MATP on the model before fine-tuning, same scenes and engine: what the fine-tune buys.
    before = (
        evaluate_matp_engine(base, cfg.val, params, cfg.layers, cfg.val_split, progress=progress)
        if cfg.val and cfg.eval_init
        else {}
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    t0 = time.time()
    model.train()
    bar = tqdm(total=cfg.steps, desc="matp fine-tune", disable=not progress)
    for step, (pixels, target, offsets) in enumerate(loader):
        lr = lr_at(step, cfg.steps, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        gate = gate_fraction(step, cfg)
        loss, stats = matp_loss(model, pixels, target, offsets, params, cfg, gate, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", gate=f"{gate:.2f}")
        if (step + 1) % 20 == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "lr": lr, "gate": round(gate, 4)}
            entry.update({k: round(v, 4) for k, v in stats.items()})
            entry["elapsed_s"] = round(time.time() - t0, 1)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    bar.close()
    model.eval()
    train_s = time.time() - t0

    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    weights = out / WEIGHTS_NAME
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(weights))
    (out / CONFIG_NAME).write_text(replace(model_cfg, extra={}).to_json())
    # Evaluate what ships: the fp16 file loaded back the way the app loads a demo checkpoint.
    tuned = build_demo(weights, out / CONFIG_NAME)
    card = {
        "finetune": "matp",
        "init": str(init),
        "train_config": asdict(cfg),
        "command": command or " ".join(["python -m prune_viz.train_matp"] + sys.argv[1:]),
        "commit": commit,
        "train_seconds": round(train_s, 1),
        "val_scenes": cfg.val,
        "inference_size": model_cfg.img_size,
        "metrics_val": head_metrics(evaluate_heads(tuned, cfg.val_split, cfg.val, progress=progress)) if cfg.val else {},
        "matp_engine_val": (
            evaluate_matp_engine(tuned, cfg.val, params, cfg.layers, cfg.val_split, progress=progress) if cfg.val else {}
        ),
        "matp_engine_val_init": before,
        "log_tail": log[-5:],
    }
    final_cfg = replace(model_cfg, extra=card)
    (out / CONFIG_NAME).write_text(final_cfg.to_json())
    if cfg.val:
        (out / CARD_NAME).write_text(matp_card(final_cfg, card))
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_viz.train_matp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", type=Path, required=True, help="demo checkpoint to start from (its .json beside it)")
    p.add_argument("--out", type=Path, default=Path("assets"))
    defaults = MATPTrainConfig()
    for f in fields(MATPTrainConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=f"disable {f.name}")
        elif isinstance(value, tuple):
            p.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(",")), default=value, help="comma-separated")
        else:
            p.add_argument(flag, type=type(value), default=value)
    args = p.parse_args(argv)
    try:
        cfg = MATPTrainConfig(**{f.name: getattr(args, f.name) for f in fields(MATPTrainConfig)})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    card = run(cfg, args.init, args.out, command=" ".join(["python -m prune_viz.train_matp"] + list(argv)))
    summary = {h: round(v["miou"], 4) for h, v in card["metrics_val"].items()}
    if card["matp_engine_val"]:
        summary["matp_engine"] = round(card["matp_engine_val"]["miou"], 4)
        summary["macs_reduction_pct"] = card["matp_engine_val"]["macs_reduction_pct"]
    if card["matp_engine_val_init"]:
        summary["matp_engine_before_finetune"] = round(card["matp_engine_val_init"]["miou"], 4)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
