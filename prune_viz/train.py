"""Train the shipped demo segmenter on procedural aerial scenes (CPU is enough).

    python -m prune_viz.train --out assets/        # the shipped model (see assets/MODEL_CARD.md)
    python -m prune_viz.train --steps 20 --finetune-steps 2 --val 4 --out /tmp/tiny   # smoke run

Two phases: most steps on 256 px scenes (4x cheaper than 512, and each crop takes the matching
window of the 32 x 32 position grid, so nothing changes at inference), then a short phase on
full 512 px scenes. Loss: cross-entropy on the main decoder + 0.4 x each auxiliary head, all at
the heads' 4 px resolution against the mode label of each 4 x 4 cell. Scenes are generated on
the fly from fixed seeds, so a run is reproducible from its config.

Pruning-aware training (v2): each step draws a schedule from its own seed. In ``p_prune`` of
the steps, random token subsets (keeping 25-90 %) are dropped after 1-3 random layers; in
``p_exit`` of the steps, the most confident tokens (20-70 %, by the auxiliary head) exit after
1-2 auxiliary layers with the head's prediction as final. Both run through
``DemoSegmenter.forward_pruned``: real removal, frozen features scattered back, the mixing
decoder on top, exactly the engine's forward (tests/test_pruning_aware.py). Gradients flow into
the frozen features (they are the decoder's input). The other steps are plain forwards.
Auxiliary losses count the tokens alive when each head scores them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones.demo import DemoConfig, DemoSegmenter, Step, tokens_to_map
from .data import synthetic
from .train_eval import evaluate_heads, git_commit, head_metrics, model_card

__all__ = ["TrainConfig", "SceneDataset", "cell_labels", "evaluate_heads", "git_commit", "lr_at", "model_card", "run"]


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the shipped v2 run: a warm start from v1 (``--init``), sized for under an
    hour on 2 shared CPU cores (assets/MODEL_CARD.md has its wall time). v1 trained from
    scratch with steps 2600, batch 16, finetune_steps 250, lr 1e-3, warmup 150."""

    steps: int = 360
    batch: int = 8
    crop: int = 256
    finetune_steps: int = 30
    finetune_batch: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 30
    aux_weight: float = 0.4
    mix_depth: int = 2
    p_prune: float = 0.35
    p_exit: float = 0.15
    seed: int = 0
    val: int = 100
    threads: int = 2
    split: str = "train"  # where the training scenes come from (``train_varied``: the #11 pilot)
    eval_splits: str = "val,test,shift"  # comma-separated; the first is the card's "val" metrics

    def __post_init__(self) -> None:
        # Checked here, not after an hour of training.
        unknown = [name for name in (self.split, *self.eval_split_names) if name not in synthetic.SPLIT_SEEDS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; the data module offers {tuple(synthetic.SPLIT_SEEDS)}")

    @property
    def eval_split_names(self) -> list[str]:
        """``eval_splits`` as a list ("val, test" -> ["val", "test"]; an empty entry stays "" and is refused)."""
        return [name.strip() for name in self.eval_splits.split(",")]


class SceneDataset(Dataset):
    """Scene ``i`` of a training split at ``size`` px, flips, and a position-grid offset shared by
    each run of ``batch`` consecutive items (one offset per batch keeps the batch one forward)."""

    def __init__(
        self, start: int, count: int, size: int, cfg: DemoConfig, seed: int, batch: int = 1, split: str = "train"
    ):
        self.start, self.count, self.size, self.cfg, self.seed, self.batch = start, count, size, cfg, seed, batch
        self.split = split
        self.mean = np.array(cfg.mean, np.float32) * 255
        self.std = np.array(cfg.std, np.float32) * 255

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        index = self.start + i
        image, labels = synthetic.split_scene(self.split, index, self.size)
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


def _exit_confident(fraction: float) -> Step:
    """A step that lets the ``fraction`` most confident tokens (by the auxiliary head's top
    softmax over sub-cell-averaged logits, as DToP's rule) exit, and keeps the rest."""

    def decide(aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if aux is None:
            raise ValueError("exit steps need an auxiliary head at their layer")
        conf = aux.mean(-1).softmax(-1).amax(-1)  # B x Nk
        b, nk = conf.shape
        m = min(nk - 1, int(round(fraction * nk)))
        order = conf.argsort(dim=1, descending=True)
        exit_mask = torch.zeros(b, nk, dtype=torch.bool).scatter(1, order[:, :m], True)
        return order[:, m:].sort(dim=1).values, exit_mask

    return decide


def sample_schedule(
    rng: np.random.Generator, batch: int, n: int, aux_layers: tuple[int, ...], depth: int,
    p_prune: float = 0.35, p_exit: float = 0.15,
) -> dict[int, Step]:
    """One step's pruning schedule for ``DemoSegmenter.forward_pruned`` ({} = plain forward).
    Random subsets are drawn per image; ``n`` tokens per image enter the first step."""
    u = rng.random()
    if u < p_exit and aux_layers:
        k = min(len(aux_layers), int(rng.integers(1, 3)))
        layers = sorted(int(v) for v in rng.choice(np.array(aux_layers), size=k, replace=False))
        return {layer: _exit_confident(float(rng.uniform(0.2, 0.7))) for layer in layers}
    if u < p_exit + p_prune:
        cands = np.arange(2, depth - 1) if depth >= 4 else np.arange(1, depth)
        k = min(len(cands), int(rng.integers(1, 4)))
        steps: dict[int, Step] = {}
        alive = n
        for layer in sorted(int(v) for v in rng.choice(cands, size=k, replace=False)):
            m = max(1, int(round(alive * rng.uniform(0.25, 0.9))))
            keep = np.sort(np.argsort(rng.random((batch, alive)), axis=1)[:, :m], axis=1)
            steps[layer] = (torch.from_numpy(keep), None)
            alive = m
        return steps
    return {}


def token_targets(target: torch.Tensor, gh: int, gw: int, sub: int) -> torch.Tensor:
    """B x (gh*sub) x (gw*sub) cell labels -> B x N x sub² (the order of the heads' sub-cells)."""
    b = target.shape[0]
    return target.view(b, gh, sub, gw, sub).permute(0, 1, 3, 2, 4).reshape(b, gh * gw, sub * sub)


def loss_fn(
    model: DemoSegmenter, pixels: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor, aux_weight: float,
    steps: dict[int, Step] | None = None,
) -> torch.Tensor:
    """Main CE on every cell of the final map (exited tokens: their aux logits) + ``aux_weight``
    x each auxiliary CE over the tokens alive at that head. One position window per batch
    (``SceneDataset`` draws one offset per batch)."""
    off = offsets[0]
    if not (offsets == off).all():
        raise ValueError("a batch must share one position-grid offset")
    cfg = model.cfg
    gh, gw = pixels.shape[-2] // cfg.patch_size, pixels.shape[-1] // cfg.patch_size
    out = model.forward_pruned(pixels, steps or {}, offset=(int(off[0]), int(off[1])))
    loss = F.cross_entropy(tokens_to_map(out.logits, gh, gw), target)
    tokens = token_targets(target, gh, gw, cfg.sub)
    for logits, idx in out.aux.values():
        tgt = tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        loss = loss + aux_weight * F.cross_entropy(logits.permute(0, 2, 1, 3), tgt)
    return loss


def warm_start(model: DemoSegmenter, init: Path) -> dict:
    """Load every tensor of the checkpoint ``init`` whose name and shape match ``model`` (a
    v1 demo checkpoint has no mixer: the mixer keeps its identity initialisation). Returns
    what the card records: the file's sha256 and the tensors left at their initialisation."""
    import hashlib

    from .checkpoints import load_state_dict

    state = {k: v.float() for k, v in load_state_dict(init).items()}
    own = model.state_dict()
    used = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(used, strict=False)
    return {
        "path": str(init),
        "sha256": hashlib.sha256(Path(init).read_bytes()).hexdigest(),
        "fresh": sorted(k for k in own if k not in used),
    }


def run(
    cfg: TrainConfig, out: Path, model_cfg: DemoConfig | None = None, machine_note: str = "", init: Path | None = None
) -> dict:
    """Train (from scratch, or from the demo checkpoint ``init``), save fp16 weights + config to
    ``out``, evaluate the saved weights on ``cfg.eval_splits`` (val, test and shift by default;
    ``cfg.val`` scenes each), write the model card. Returns the card dict."""
    commit = git_commit()  # at the start: the code that trains, not HEAD when it ends
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model_cfg = model_cfg or DemoConfig(
        classes=synthetic.CLASSES, palette=tuple(map(tuple, synthetic.PALETTE.tolist())), mix_depth=cfg.mix_depth
    )
    model = DemoSegmenter(model_cfg)
    started_from = warm_start(model, init) if init is not None else None
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
    bar = tqdm(total=total_steps, desc="train", mininterval=30)
    for n_steps, batch, size, start in phases:
        if n_steps == 0:
            continue
        data = SceneDataset(start, n_steps * batch, size, model_cfg, cfg.seed, batch, cfg.split)
        loader = DataLoader(data, batch_size=batch, shuffle=False, num_workers=1, persistent_workers=False)
        n_tokens = (size // model_cfg.patch_size) ** 2
        for pixels, target, offsets in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg)
            rng = np.random.default_rng([cfg.seed, 7, step])  # the step's own schedule: reproducible
            steps = sample_schedule(rng, len(pixels), n_tokens, model_cfg.aux_layers, model_cfg.depth, cfg.p_prune, cfg.p_exit)
            loss = loss_fn(model, pixels, target, offsets, cfg.aux_weight, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            if step % 25 == 0 or step == total_steps:
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

    (out / "demo_segmenter.json").write_text(replace(model_cfg, extra={}).to_json())
    backbone = build_demo(weights, out / "demo_segmenter.json")
    eval_splits = cfg.eval_split_names
    splits = {split: evaluate_heads(backbone, split, cfg.val) for split in eval_splits}
    card = {
        "train_config": asdict(cfg),
        "command": " ".join(["python -m prune_viz.train"] + sys.argv[1:]),
        "commit": commit,
        "train_seconds": round(train_s, 1),
        "steps_done": step,
        "init": started_from,
        "machine_note": machine_note,
        "val_scenes": cfg.val,
        "inference_size": model_cfg.img_size,
        "metrics_val": head_metrics(splits[eval_splits[0]]),
        "splits": {name: {"main": m["main"], "class_shares": m["class_shares"]} for name, m in splits.items()},
        "heads_by_split": {name: {h: round(v["miou"], 4) for h, v in head_metrics(m).items()} for name, m in splits.items()},
        "log_tail": log[-5:],
    }
    final_cfg = replace(model_cfg, extra=card)
    (out / "demo_segmenter.json").write_text(final_cfg.to_json())
    (out / "MODEL_CARD.md").write_text(model_card(final_cfg, card))
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune_viz.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--out", type=Path, default=Path("assets"))
    p.add_argument("--init", type=Path, default=None, help="warm start from this demo checkpoint (default: from scratch)")
    p.add_argument("--machine-note", default="", help="free text for the card, e.g. how loaded the machine was")
    args = p.parse_args(argv)
    try:
        cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = run(cfg, args.out, machine_note=args.machine_note, init=args.init)
    print(json.dumps({h: round(v["miou"], 4) for h, v in card["metrics_val"].items()}))
    print(json.dumps({s: round(v["main"]["miou"], 4) for s, v in card["splits"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
