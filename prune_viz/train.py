"""Train the shipped demo segmenter on procedural aerial scenes (CPU is enough).

    python -m prune_viz.train --out assets/        # the shipped model (~1 h on 2 cores)
    python -m prune_viz.train --steps 20 --finetune-steps 2 --val 4 --out /tmp/tiny   # smoke run

Two phases: most steps on 256 px scenes (4x cheaper than 512, and each crop takes the matching
window of the 32 x 32 position grid, so nothing changes at inference), then a short phase on
full 512 px scenes. Loss: cross-entropy on the main head + 0.4 x each auxiliary head, all at the
heads' 4 px resolution against the mode label of each 4 x 4 cell. Scenes are generated on the
fly from fixed seeds, so a run is reproducible from its config.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones.demo import DemoBackbone, DemoConfig, DemoSegmenter, tokens_to_map
from .data import synthetic
from .metrics import IGNORE, ConfusionMatrix


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2600
    batch: int = 16
    crop: int = 256
    finetune_steps: int = 250
    finetune_batch: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    aux_weight: float = 0.4
    seed: int = 0
    val: int = 100
    threads: int = 2


class SceneDataset(Dataset):
    """Scene ``i`` of the train split at ``size`` px, flips, and a position-grid offset shared by
    each run of ``batch`` consecutive items (one offset per batch keeps the batch one forward)."""

    def __init__(self, start: int, count: int, size: int, cfg: DemoConfig, seed: int, batch: int = 1):
        self.start, self.count, self.size, self.cfg, self.seed, self.batch = start, count, size, cfg, seed, batch
        self.mean = np.array(cfg.mean, np.float32) * 255
        self.std = np.array(cfg.std, np.float32) * 255

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        index = self.start + i
        image, labels = synthetic.split_scene("train", index, self.size)
        rng = np.random.default_rng([self.seed, index])
        g = self.cfg.img_size // self.cfg.patch_size
        t = self.size // self.cfg.patch_size
        batch_rng = np.random.default_rng([self.seed, self.start + (i // self.batch) * self.batch])
        offset = tuple(int(v) for v in batch_rng.integers(0, g - t + 1, size=2))
        if rng.random() < 0.5:  # aerial views have no up: flips and transposes are free data
            image, labels = image[:, ::-1], labels[:, ::-1]
        if rng.random() < 0.5:
            image, labels = image.transpose(1, 0, 2), labels.T
        pixels = (np.ascontiguousarray(image, np.float32) - self.mean) / self.std
        return torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(cell_labels(labels, self.cfg)), torch.tensor(offset)


def cell_labels(labels: np.ndarray, cfg: DemoConfig) -> np.ndarray:
    """H x W labels -> (H/c) x (W/c) mode label per c x c cell (c = patch / sub), as int64."""
    c = cfg.patch_size // cfg.sub
    h, w = labels.shape
    k = len(cfg.classes)
    cells = labels.reshape(h // c, c, w // c, c).transpose(0, 2, 1, 3).reshape(h // c, w // c, c * c)
    counts = np.stack([(cells == j).sum(-1) for j in range(k)], axis=-1)
    return counts.argmax(-1).astype(np.int64)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_fn(model: DemoSegmenter, pixels: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor, aux_weight: float):
    # Crops in a batch may take different position windows: group by offset.
    total = 0.0
    for off in torch.unique(offsets, dim=0):
        sel = (offsets == off).all(dim=1)
        main, aux = model(pixels[sel], offset=(int(off[0]), int(off[1])))
        loss = F.cross_entropy(main, target[sel])
        for logits in aux.values():
            loss = loss + aux_weight * F.cross_entropy(logits, target[sel])
        total = total + loss * sel.sum() / len(sel)
    return total


@torch.no_grad()
def evaluate_heads(backbone: DemoBackbone, split: str = "val", n: int = 100, progress: bool = True) -> dict:
    """mIoU and per-class IoU of the main head and every auxiliary head on ``n`` scenes of a
    split, at the model's inference size, against the full-resolution labels."""
    cfg = backbone.cfg
    k = len(cfg.classes)
    names = ["main"] + [f"aux{layer}" for layer in cfg.aux_layers]
    cms = {name: ConfusionMatrix(k) for name in names}
    from .backbones.demo import logits_to_labels

    for i in tqdm(range(n), desc=f"eval {split}", disable=not progress):
        image, gt = synthetic.split_scene(split, i, cfg.img_size)
        prep = backbone.prepare(image)
        main, aux = backbone.net(prep.pixels)
        cms["main"].update(logits_to_labels(main, gt.shape), gt)
        for layer, logits in aux.items():
            cms[f"aux{layer}"].update(logits_to_labels(logits, gt.shape), gt)
    return {
        name: {"miou": cm.miou(), "iou": {c: float(v) for c, v in zip(cfg.classes, cm.iou())}}
        for name, cm in cms.items()
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(cfg: TrainConfig, out: Path, model_cfg: DemoConfig | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model_cfg = model_cfg or DemoConfig(classes=synthetic.CLASSES, palette=tuple(map(tuple, synthetic.PALETTE.tolist())))
    model = DemoSegmenter(model_cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    total_steps = cfg.steps + cfg.finetune_steps
    phases = [(cfg.steps, cfg.batch, cfg.crop, 0), (cfg.finetune_steps, cfg.finetune_batch, model_cfg.img_size, cfg.steps * cfg.batch)]
    log = []
    step = 0
    t0 = time.time()
    model.train()
    bar = tqdm(total=total_steps, desc="train")
    for n_steps, batch, size, start in phases:
        if n_steps == 0:
            continue
        data = SceneDataset(start, n_steps * batch, size, model_cfg, cfg.seed, batch)
        loader = DataLoader(data, batch_size=batch, shuffle=False, num_workers=1, persistent_workers=False)
        for pixels, target, offsets in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg)
            loss = loss_fn(model, pixels, target, offsets, cfg.aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", size=size)
            if step % 50 == 0 or step == total_steps:
                log.append({"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step, total_steps, cfg), "size": size, "elapsed_s": round(time.time() - t0, 1)})
                print(json.dumps(log[-1]), flush=True)
    bar.close()
    model.eval()
    train_s = time.time() - t0

    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    weights = out / "demo_segmenter.safetensors"
    # fp16 on disk keeps the file under 15 MB; the loader casts back to fp32.
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(weights))
    # Evaluate what ships: the fp16 weights loaded back exactly as the app loads them.
    from .backbones.demo import build_demo

    card_cfg = replace(model_cfg, extra={})
    (out / "demo_segmenter.json").write_text(card_cfg.to_json())
    backbone = build_demo(weights, out / "demo_segmenter.json")
    metrics = evaluate_heads(backbone, "val", cfg.val)
    card = {
        "train_config": asdict(cfg),
        "command": " ".join(["python -m prune_viz.train"] + sys.argv[1:]),
        "commit": git_commit(),
        "train_seconds": round(train_s, 1),
        "val_scenes": cfg.val,
        "inference_size": model_cfg.img_size,
        "metrics_val": metrics,
        "log_tail": log[-5:],
    }
    final_cfg = replace(model_cfg, extra=card)
    (out / "demo_segmenter.json").write_text(final_cfg.to_json())
    (out / "MODEL_CARD.md").write_text(model_card(final_cfg, card))
    return card


def model_card(cfg: DemoConfig, card: dict) -> str:
    m = card["metrics_val"]
    heads = list(m)
    lines = [
        "# Demo segmenter (shipped with prune_viz)",
        "",
        f"A plain timm ViT (patch {cfg.patch_size}, {cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads) "
        f"with a per-token head and auxiliary heads after blocks {list(cfg.aux_layers)}, trained from scratch on "
        "procedural aerial scenes (`prune_viz/data/synthetic.py`). Input "
        f"{cfg.img_size} x {cfg.img_size} ({cfg.img_size // cfg.patch_size} x {cfg.img_size // cfg.patch_size} tokens).",
        "",
        "Numbers below are written by the training command from its own evaluation of the saved (fp16) weights;"
        " `python -m prune_viz bench --backbone demo --methods none --split val --n 100` reproduces the main-head mIoU.",
        "",
        f"Command: `{card['command']}`  ",
        f"Commit: `{card['commit']}`  ",
        f"Training time: {card['train_seconds'] / 60:.1f} min on {card['train_config']['threads']} CPU threads  ",
        f"Validation: {card['val_scenes']} val scenes at {card['inference_size']} px",
        "",
        "| head | mIoU | " + " | ".join(cfg.classes) + " |",
        "|---" * (len(cfg.classes) + 2) + "|",
    ]
    for head in heads:
        ious = " | ".join(f"{m[head]['iou'][c]:.3f}" for c in cfg.classes)
        lines.append(f"| {head} | {m[head]['miou']:.3f} | {ious} |")
    lines += ["", "Classes and colours:", ""]
    lines += [f"- {i}: {c} rgb{tuple(cfg.palette[i])}" for i, c in enumerate(cfg.classes)]
    lines += ["", "Training config:", "", "```json", json.dumps(card["train_config"], indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_viz.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--out", type=Path, default=Path("assets"))
    args = p.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    card = run(cfg, args.out)
    print(json.dumps({h: round(v["miou"], 4) for h, v in card["metrics_val"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
