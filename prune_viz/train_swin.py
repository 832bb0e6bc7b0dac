"""Train the shipped Swin-UNet demo segmenter on procedural aerial scenes (CPU is enough).

    python -m prune_viz.train_swin --out assets/demo_swin.safetensors            # full run: 120 min, 2 threads
    python -m prune_viz.train_swin --out /tmp/s.safetensors --minutes 1 --val 2  # smoke run
    python -m prune_viz.train_swin --out assets/demo_swin.safetensors --eval-only  # card from a saved run

Data: ``prune_viz.train.SceneDataset`` (the ViT demo's scenes, flips and transposes), full
512 px scenes (Swin's window masks are built for the 512 px grids, so no smaller crops).
Loss: cross-entropy of the main logits (stage-1 grid, bilinearly upsampled) against the pixel
labels + ``aux_weight`` x each auxiliary head's cross-entropy against the majority label of its
token's cell, over the tokens alive when the head scores them.

The run is bounded by time (``--minutes``) and steps (``--steps``), whichever comes first; the
cosine learning rate follows the larger of the two progress fractions, so a run always ends at
the bottom of its schedule. Weights (fp16) and config are written every ``--ckpt-minutes``, so a
stopped run leaves usable weights; ``--eval-only`` evaluates them and writes the card.

Pruning-aware steps (``p_prune``): random tokens (10-75 % of those alive, per image) stop after
1-3 random layers in 1..9, through the dense masked stand-in of
``backbones/demo_swin_frozen.py`` (held features, hidden as keys, merged tokens alive if a child
is). Exits (DToP's confident tokens) are not simulated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .backbones.base import Prepared
from .backbones.demo import DemoConfig
from .backbones.demo_swin_frozen import forward_frozen
from .backbones.demo_swin_model import SwinDemoConfig, SwinUNet, build_demo_swin, save_demo_swin
from .backbones.vit import resize_rgb
from .train import SceneDataset
from .train_eval import evaluate_heads, git_commit, head_metrics


@dataclass(frozen=True)
class SwinTrainConfig:
    minutes: float = 120.0
    steps: int = 100_000
    batch: int = 4
    lr: float = 6e-4
    weight_decay: float = 0.05
    warmup: int = 100
    aux_weight: float = 0.4
    p_prune: float = 0.25
    seed: int = 0
    val: int = 100
    threads: int = 2
    workers: int = 1
    ckpt_minutes: float = 10.0


def scene_config(cfg: SwinDemoConfig) -> DemoConfig:
    """The data view ``SceneDataset`` reads (normalisation, size): one label cell per pixel."""
    return DemoConfig(classes=cfg.classes, palette=cfg.palette, img_size=cfg.img_size, patch_size=cfg.patch_size,
                      sub=cfg.patch_size, mean=cfg.mean, std=cfg.std)


def lr_at(step: int, progress: float, cfg: SwinTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cell_majority(labels: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """B x H x W int64 pixel labels -> B x h x w majority label of each (H/h) x (W/w) cell."""
    onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid).argmax(1)


def sample_stops(rng: np.random.Generator, batch: int, grids: dict[int, int], p_prune: float) -> dict[int, torch.Tensor]:
    """One step's stops for ``forward_frozen`` ({} = plain forward). ``grids``: layer -> grid side
    of that layer's stage, for the layers a stop may follow."""
    if rng.random() >= p_prune:
        return {}
    layers = sorted(int(v) for v in rng.choice(np.array(sorted(grids)), size=int(rng.integers(1, 4)), replace=False))
    stops = {}
    for layer in layers:
        g = grids[layer]
        share = rng.uniform(0.1, 0.75, size=(batch, 1, 1))
        stops[layer] = torch.from_numpy(rng.random((batch, g, g)) < share)
    return stops


def loss_fn(model: SwinUNet, pixels: torch.Tensor, labels: torch.Tensor, aux_weight: float,
            stops: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """pixels B x 3 x H x W, labels B x H x W -> scalar loss (main + aux_weight x each aux head)."""
    logits, aux = forward_frozen(model, pixels, stops or {})
    k = logits.shape[1]
    loss = F.cross_entropy(F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False), labels)
    for head_logits, alive in aux.values():
        target = cell_majority(labels, tuple(head_logits.shape[1:3]), k)
        ce = F.cross_entropy(head_logits.permute(0, 3, 1, 2), target, reduction="none")
        loss = loss + aux_weight * (ce * alive).sum() / alive.sum().clamp_min(1)
    return loss


class EvalView:
    """What ``train_eval.evaluate_heads`` reads from a backbone (cfg, prepare, net), for the Swin
    demo: net(pixels) -> (B x K x h x w main logits, {layer: B x K x h x w aux logits})."""

    def __init__(self, model: SwinUNet):
        self.model, self.cfg = model.eval(), model.cfg
        self.mean = torch.tensor(model.cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(model.cfg.std).view(1, 3, 1, 1)

    def prepare(self, image: np.ndarray) -> Prepared:
        s = self.cfg.img_size
        image01 = torch.from_numpy(np.ascontiguousarray(resize_rgb(image, s, s))).permute(2, 0, 1).float() / 255.0
        g = s // self.cfg.patch_size
        return Prepared((image01[None] - self.mean) / self.std, image01, (g, g), (s, s), image.shape[:2])

    def net(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        main, aux = self.model.forward_train(pixels)
        return main, {layer: a.permute(0, 3, 1, 2) for layer, a in aux.items()}


@torch.no_grad()
def forward_seconds(model: SwinUNet, threads: int = 2, repeat: int = 7) -> dict:
    """Median wall time of a dense 512 px forward (after 2 warm-ups) on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, model.cfg.img_size, model.cfg.img_size)
    for _ in range(2):
        model(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(before)
    return {"median_s": round(statistics.median(times), 4), "threads": threads, "repeat": repeat,
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def train(cfg: SwinTrainConfig, out: Path, command: str, machine_note: str = "") -> dict:
    """Train from scratch; weights + json at ``out`` (written every ``ckpt_minutes`` and at the
    end). Returns the training record that goes into the json and the card."""
    commit = git_commit()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = SwinUNet()
    mcfg = model.cfg
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "relative_position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "relative_position" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    grids = {layer: mcfg.stage_grids()[mcfg.stage_of(layer) - 1] for layer in range(1, mcfg.stage_ends[-1])}
    budget = cfg.minutes * 60
    data = SceneDataset(0, cfg.steps * cfg.batch, mcfg.img_size, scene_config(mcfg), cfg.seed, cfg.batch)
    loader = DataLoader(data, batch_size=cfg.batch, shuffle=False, num_workers=cfg.workers)
    record = {"train_config": asdict(cfg), "command": command, "commit": commit, "machine_note": machine_note,
              "steps_done": 0, "train_seconds": 0.0, "finished": False, "log": []}
    t0 = last_ckpt = time.time()
    step, progress = 0, 0.0
    model.train()
    for pixels, labels, _ in loader:
        elapsed = time.time() - t0
        progress = max(step / cfg.steps, elapsed / budget)
        if progress >= 1.0:
            break
        lr = lr_at(step, progress, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        stops = sample_stops(np.random.default_rng([cfg.seed, 7, step]), len(pixels), grids, cfg.p_prune)
        loss = loss_fn(model, pixels, labels, cfg.aux_weight, stops)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            record["log"].append({"step": step, "loss": round(loss.item(), 4), "lr": round(lr, 6),
                                  "elapsed_s": round(time.time() - t0, 1)})
            print(json.dumps(record["log"][-1]), flush=True)
        if time.time() - last_ckpt > cfg.ckpt_minutes * 60:
            record.update(steps_done=step, train_seconds=round(time.time() - t0, 1))
            _save(model, out, record)
            last_ckpt = time.time()
            model.train()
    record.update(steps_done=step, train_seconds=round(time.time() - t0, 1), finished=True)
    _save(model, out, record)
    return record


def summary(record: dict) -> dict:
    """The training record without its full log (the last five entries kept)."""
    tail = record["log"][-5:] if "log" in record else record.get("log_tail", [])
    return {k: v for k, v in record.items() if k != "log"} | {"log_tail": tail}


def _save(model: SwinUNet, out: Path, record: dict) -> None:
    """fp16 weights + json, written beside and renamed, so a reader never sees half a file."""
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    save_demo_swin(model, tmp, extra={"training": summary(record)})
    os.replace(tmp.with_suffix(".json"), out.with_suffix(".json"))
    os.replace(tmp, out)
    print(f"saved {out} at step {record['steps_done']}", flush=True)


def evaluate(out: Path, n: int) -> dict:
    """Evaluate the saved weights (loaded as the app loads them) on val, test, shift."""
    model = build_demo_swin(out)
    view = EvalView(model)
    splits = {split: evaluate_heads(view, split, n) for split in ("val", "test", "shift")}
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "file_bytes": out.stat().st_size,
        "forward": forward_seconds(model, 2),
        "forward_1thread": forward_seconds(model, 1),
        "val_scenes": n,
        "splits": {s: {"main": m["main"], "class_shares": m["class_shares"]} for s, m in splits.items()},
        "heads_val": {h: {"miou": v["miou"], "ci95": v["ci95"]} for h, v in head_metrics(splits["val"]).items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_viz.train_swin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SwinTrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--out", type=Path, default=Path("assets/demo_swin.safetensors"))
    p.add_argument("--card", type=Path, default=None, help="model card path (default: MODEL_CARD_SWIN.md beside --out)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the weights at --out and write the card")
    p.add_argument("--machine-note", default="", help="free text for the card, e.g. how loaded the machine was")
    args = p.parse_args(argv)
    cfg = SwinTrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    command = " ".join(["python -m prune_viz.train_swin"] + (sys.argv[1:] if argv is None else argv))
    if args.eval_only:
        record = SwinDemoConfig.from_json(args.out.with_suffix(".json")).extra.get("training", {})
        if args.machine_note:
            record = record | {"machine_note": args.machine_note}
    else:
        record = train(cfg, args.out, command, args.machine_note)
    torch.set_num_threads(cfg.threads)
    metrics = evaluate(args.out, cfg.val)
    from .train_swin_card import swin_model_card

    final = build_demo_swin(args.out).cfg
    extra = {"training": summary(record), "metrics": metrics}
    args.out.with_suffix(".json").write_text(replace(final, extra=extra).to_json())
    card_path = args.card or args.out.with_name("MODEL_CARD_SWIN.md")
    card_path.write_text(swin_model_card(final, record, metrics))
    print(json.dumps({s: round(v["main"]["miou"], 4) for s, v in metrics["splits"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
