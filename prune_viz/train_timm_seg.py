"""Train a small ``timm_seg`` model on the synthetic aerial scenes, as an example of a registered
model: ``python -m prune_viz.train_timm_seg --out assets/models``.

A real timm architecture (default ``test_vit3``: 9 blocks, width 96, patch 16, 0.83 M
parameters) from scratch, at 256 px (16 x 16 tokens), with a per-token linear head and auxiliary
heads after blocks 3 and 6 (so DToP and MATP can run on it). Each token learns the class shares of
its 16 x 16 patch (soft cross-entropy); the main head's loss plus 0.4 x each auxiliary head's.
Writes ``NAME.safetensors`` (fp16), the sidecar ``NAME.json`` and ``MODEL_CARD_NAME.md`` with the
mIoU measured through the app's own inference path (resize, blocks, head, bilinear upsampling)
against full-resolution labels of the val, test and shift splits.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.timm_seg import TimmSegModel, build_timm_seg
from .data import synthetic
from .engine import run_baseline
from .metrics import miou


@dataclass(frozen=True)
class SegTrainConfig:
    timm_name: str = "test_vit3"
    size: int = 256
    aux_layers: tuple[int, ...] = (3, 6)
    steps: int = 600
    batch: int = 8
    lr: float = 2e-3
    n_train: int = 400
    aux_weight: float = 0.4
    seed: int = 0
    val: int = 50


def patch_shares(labels: np.ndarray, patch: int, k: int) -> np.ndarray:
    """H x W labels -> (H/p * W/p) x K class shares per patch (row-major tokens)."""
    h, w = labels.shape
    cells = labels.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return np.stack([(cells == j).mean(-1) for j in range(k)], axis=-1).astype(np.float32)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class shares: B x N x K logits and targets."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def forward_all(net: TimmSegModel, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """B x 3 x H x W -> (B x N x K main logits, {layer: B x N x K aux logits})."""
    vit = net.backbone
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels)))
    p = vit.num_prefix_tokens
    aux = {}
    for i, block in enumerate(vit.blocks, start=1):
        x = block(x)
        if str(i) in net.aux_heads:
            aux[i] = net.aux_heads[str(i)](x[:, p:])
    return net.head(vit.norm(x)[:, p:]), aux


def evaluate(backbone, split: str, n: int) -> dict:
    """mIoU of the main head through the engine's unpruned forward, against full-size labels."""
    k = backbone.num_classes
    scores = []
    mats = np.zeros((k, k), np.int64)
    for i in range(n):
        image, gt = synthetic.split_scene(split, i, backbone.input_size)
        pred = run_baseline(backbone, image).seg.labels
        scores.append(miou(pred, gt, k))
        np.add.at(mats, (gt.ravel(), pred.ravel()), 1)
    inter = np.diag(mats)
    union = mats.sum(0) + mats.sum(1) - inter
    present = union > 0
    return {"miou_pooled": float((inter[present] / union[present]).mean()), "miou_mean_per_scene": float(np.mean(scores)),
            "iou": {c: (float(inter[j] / union[j]) if union[j] else None) for j, c in enumerate(synthetic.CLASSES)}}


def train(cfg: SegTrainConfig, out: Path, name: str) -> dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    k = len(synthetic.CLASSES)
    net = TimmSegModel(cfg.timm_name, k, cfg.size, cfg.aux_layers)
    patch = int(net.backbone.patch_embed.patch_size[0])
    mean = torch.tensor(net.backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(net.backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    t0 = time.time()
    scenes = [synthetic.split_scene("train", i, cfg.size) for i in range(cfg.n_train)]
    images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 255.0
    labels = np.stack([s[1] for s in scenes])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.05)
    net.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:  # linear warm-up, cosine decay
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = cfg.lr * warm * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        idx = rng.choice(cfg.n_train, cfg.batch, replace=False)
        batch, lab = images[idx].clone(), labels[idx].copy()
        flip = rng.random(cfg.batch) < 0.5
        batch[flip] = batch[flip].flip(-1)
        lab[flip] = lab[flip][:, :, ::-1]
        target = torch.from_numpy(np.stack([patch_shares(np.ascontiguousarray(lb), patch, k) for lb in lab]))
        main, aux = forward_all(net, (batch - mean) / std)
        loss = soft_ce(main, target) + cfg.aux_weight * sum(soft_ce(a, target) for a in aux.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    train_s = time.time() - t0
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    weights = out / f"{name}.safetensors"
    save_file({k_: v.detach().half().contiguous() for k_, v in net.state_dict().items()}, str(weights))
    sidecar = {
        "family": "timm_seg", "checkpoint": weights.name, "timm_name": cfg.timm_name, "input_size": cfg.size,
        "classes": list(synthetic.CLASSES), "palette": synthetic.PALETTE.tolist(), "aux_layers": list(cfg.aux_layers),
        "note": f"timm {cfg.timm_name} + linear head, trained here on the synthetic aerial scenes (example; "
                f"see MODEL_CARD_{name}.md)",
    }
    (out / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
    backbone = build_timm_seg(f"models:{name}", weights, cfg.timm_name, synthetic.CLASSES, synthetic.PALETTE, cfg.size,
                              cfg.aux_layers)
    metrics = {split: evaluate(backbone, split, cfg.val) for split in ("val", "test", "shift")}
    card = {"config": asdict(cfg), "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in net.parameters()), "file_bytes": weights.stat().st_size, "metrics": metrics}
    # Not a .json: every .json in a models folder is read as a sidecar.
    (out / f"MODEL_CARD_{name}.md").write_text(card_markdown(name, card))
    return card


def card_markdown(name: str, card: dict) -> str:
    """The model card: what it is, how it was trained, what it scores (measured), its limits."""
    cfg = card["config"]
    rows = "\n".join(f"| {split} | {m['miou_pooled']:.3f} | {m['miou_mean_per_scene']:.3f} | "
                     + ", ".join(f"{c} {v:.2f}" for c, v in m["iou"].items() if v is not None) + " |"
                     for split, m in card["metrics"].items())
    return f"""# {name}: an example `timm_seg` model

timm `{cfg['timm_name']}` (a real timm VisionTransformer: {card['params']:,} parameters) trained from
scratch by this project with a per-token linear head and auxiliary heads after blocks
{', '.join(map(str, cfg['aux_layers']))}, on {cfg['n_train']} synthetic aerial scenes of the train split
at {cfg['size']} px ({cfg['steps']} steps of {cfg['batch']} images, AdamW lr {cfg['lr']}, soft cross-entropy
against each 16 x 16 patch's class shares; {card['train_seconds']:.0f} s on {card['threads']} CPU thread(s)).
File: `{name}.safetensors`, fp16, {card['file_bytes'] / 1e6:.2f} MB; sidecar `{name}.json`.

Reproduce: `python -m prune_viz.train_timm_seg --out assets/models --name {name} --steps {cfg['steps']}`.

## Measured (val / test / shift splits, {cfg['val']} scenes each, full-resolution labels)

The app's own inference path: resize to {cfg['size']} px, blocks, head, bilinear upsampling of the
per-token logits, argmax.

| split | mIoU (pooled) | mIoU (mean per scene) | IoU per class |
|---|---|---|---|
{rows}

## What it is for, and its limits

An example of a registered model (`PRUNE_VIZ_MODELS=assets/models python app.py` lists it as
`models:{name}`): a second real architecture to prune, with heads for DToP and MATP. It knows only
the synthetic aerial scenes, predicts one class mix per 16 x 16 px token (coarse borders), and is
far weaker than the demo segmenter (val mIoU 0.82 at 512 px, `assets/MODEL_CARD.md`); small classes (cars) suffer most.

```json
{json.dumps(card, indent=2)}
```
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_viz.train_timm_seg", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="synthetic_vit3")
    p.add_argument("--steps", type=int, default=SegTrainConfig.steps)
    p.add_argument("--timm-name", default=SegTrainConfig.timm_name)
    p.add_argument("--val", type=int, default=SegTrainConfig.val)
    args = p.parse_args(argv)
    cfg = SegTrainConfig(timm_name=args.timm_name, steps=args.steps, val=args.val)
    card = train(cfg, args.out, args.name)
    print(json.dumps({s: round(m["miou_pooled"], 4) for s, m in card["metrics"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
