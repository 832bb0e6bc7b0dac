"""What the training commands measure and write: per-head mIoU on a split with a bootstrap 95 %
confidence interval over scenes, class pixel shares, and the model cards (the demo model's and
its MATP fine-tune's).

The CI resamples *scenes* (with replacement) and recomputes the dataset-level mIoU from the
summed per-scene confusion matrices, so it answers "how much would the number move on another
draw of 100 scenes from the same generator".
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import torch
from tqdm import tqdm

from .backbones.demo import DemoBackbone, DemoConfig, logits_to_labels
from .data import synthetic
from .metrics import ConfusionMatrix

BOOTSTRAP = 1000


def miou_of(mat: np.ndarray) -> tuple[float, np.ndarray]:
    """K x K confusion (rows = truth) -> (mIoU over classes present, per-class IoU with NaN)."""
    cm = ConfusionMatrix(mat.shape[0])
    cm.mat = mat
    return cm.miou(), cm.iou()


def bootstrap_miou(per_scene: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """S x K x K per-scene confusion matrices -> (2.5 %, 97.5 %) percentiles of the mIoU of
    ``n_boot`` resamples of the scenes."""
    rng = np.random.default_rng(seed)
    s = per_scene.shape[0]
    draws = rng.integers(0, s, size=(n_boot, s))
    counts = np.stack([np.bincount(d, minlength=s) for d in draws])  # n_boot x S
    mats = np.tensordot(counts, per_scene, axes=(1, 0))  # n_boot x K x K
    values = np.array([miou_of(m)[0] for m in mats])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@torch.no_grad()
def evaluate_heads(backbone: DemoBackbone, split: str = "val", n: int = 100, progress: bool = True) -> dict:
    """mIoU (with bootstrap CI) and per-class IoU of the main decoder and every auxiliary head
    on ``n`` scenes of a split, at the model's inference size, against full-resolution labels.
    Also the split's class pixel shares (ground truth)."""
    cfg = backbone.cfg
    k = len(cfg.classes)
    names = ["main"] + [f"aux{layer}" for layer in cfg.aux_layers]
    per_scene = {name: np.zeros((n, k, k), np.int64) for name in names}
    for i in tqdm(range(n), desc=f"eval {split}", disable=not progress):
        image, gt = synthetic.split_scene(split, i, cfg.img_size)
        prep = backbone.prepare(image)
        main, aux = backbone.net(prep.pixels)
        maps = {"main": main, **{f"aux{layer}": logits for layer, logits in aux.items()}}
        for name, logits in maps.items():
            cm = ConfusionMatrix(k)
            cm.update(logits_to_labels(logits, gt.shape), gt)
            per_scene[name][i] = cm.mat
    out: dict = {}
    for name, mats in per_scene.items():
        miou, iou = miou_of(mats.sum(0))
        lo, hi = bootstrap_miou(mats) if n > 1 else (miou, miou)
        out[name] = {"miou": miou, "ci95": [lo, hi], "iou": {c: float(v) for c, v in zip(cfg.classes, iou)}}
    gt_pixels = per_scene["main"].sum(0).sum(1)
    out["class_shares"] = {c: float(v) for c, v in zip(cfg.classes, gt_pixels / max(1, gt_pixels.sum()))}
    return out


def head_metrics(metrics: dict) -> dict:
    """The per-head entries of an ``evaluate_heads`` result (without ``class_shares``)."""
    return {name: m for name, m in metrics.items() if name != "class_shares"}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _note_suffix(note: str) -> str:
    """The card's machine note after the training time: "; note", whether or not the caller
    typed the leading "; " (the shipped card's note has it; a bare word used to run on)."""
    note = note.strip()
    if not note:
        return ""
    return note if note[0] in ";,." else f"; {note}"


def training_domain(split: str) -> str:
    """The model card's sentence on what the model was trained on, for a training split."""
    if split == "train":
        return (
            "`val` and `test` are i.i.d. draws of the training generator; `shift` is drawn with other settings "
            "(autumn colours, ground sampling 0.5-2x, lower sun, more haze, a town-with-river layout never seen in training)."
        )
    style = synthetic.split_style(split)
    seasons = " or ".join(style.seasons) if style.seasons else style.season
    lookalike = (
        f", lookalikes: {100 * style.lookalike_p:.0f} % of "
        + ", ".join(synthetic.LOOKALIKES[name].described for name in style.lookalikes)
        if style.lookalike_p
        else ""
    )
    return (
        f"Trained on `{split}`, drawn with the `{style.name}` style of prune_viz/data/synthetic.py "
        f"({seasons} per scene, ground sampling {style.gsd[0]:g}-{style.gsd[1]:g}x, haze in "
        f"{100 * style.haze_p:.0f} % of scenes{lookalike}); `val` and `test` are the standard generator's, `shift` has "
        "autumn colours, ground sampling 0.5-2x and a layout never seen in training."
    )


def model_card(cfg: DemoConfig, card: dict) -> str:
    """Markdown model card from the training command's own evaluation (``card``)."""
    m = head_metrics(card["metrics_val"])
    tc = card["train_config"]
    g = cfg.img_size // cfg.patch_size
    lines = [
        "# Demo segmenter (shipped with prune_viz)",
        "",
        f"A plain timm ViT (patch {cfg.patch_size}, {cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads), "
        f"a main decoder that mixes neighbouring tokens ({cfg.mix_depth} residual depthwise-3x3 + pointwise stages on the "
        f"{g} x {g} token grid, then a per-token head of {cfg.sub} x {cfg.sub} sub-cells) and per-token auxiliary heads "
        f"after blocks {list(cfg.aux_layers)}, trained on procedural aerial scenes "
        f"(`prune_viz/data/synthetic.py`). Input {cfg.img_size} x {cfg.img_size} ({g} x {g} tokens).",
        "",
    ]
    init = card.get("init")
    if isinstance(init, dict):
        lines += [
            f"Warm start: every matching tensor from `{init['path']}` (sha256 `{init['sha256'][:16]}...`); "
            f"left at their initialisation: {', '.join(f'`{k}`' for k in init['fresh']) or 'none'} "
            "(the mixer starts as the identity, so training starts from the starting model's per-token decoding).",
            "",
        ]
    elif init is None:
        lines += ["Trained from scratch.", ""]
    if tc.get("p_prune", 0) or tc.get("p_exit", 0):
        lines += [
            f"Pruning-aware training: in {100 * tc['p_prune']:.0f} % of the steps random token subsets are dropped after "
            "1-3 random layers and decoded as the engine does (frozen features scattered back before the decoder); in "
            f"{100 * tc['p_exit']:.0f} % the most confident tokens exit through 1-2 auxiliary heads (their aux prediction "
            "is final). So one set of weights serves every pruning method.",
            "",
        ]
    lines += [
        "Numbers below are written by the training command from its own evaluation of the saved (fp16) weights "
        "(unpruned forward). CIs: bootstrap 95 % over scenes (1000 resamples).",
        "",
        f"Command: `{card['command']}`  ",
        f"Commit: `{card['commit']}` (the code the command ran; the card and weights are committed after it)  ",
        f"Training time: {card['train_seconds'] / 60:.1f} min wall on {tc['threads']} CPU threads "
        f"({card.get('steps_done', '?')} steps){_note_suffix(card.get('machine_note', ''))}  ",
        f"Evaluation: {card['val_scenes']} scenes per split at {card['inference_size']} px",
        "",
    ]
    splits = card.get("splits", {})
    if splits:
        lines += ["| split | main mIoU | 95 % CI |", "|---|---|---|"]
        for split, metrics in splits.items():
            mm = metrics["main"]
            lines.append(f"| {split} | {mm['miou']:.3f} | {mm['ci95'][0]:.3f} - {mm['ci95'][1]:.3f} |")
        lines += [
            "",
            training_domain(tc.get("split", "train")),
            "",
            "Class pixel shares (ground truth of the evaluated scenes):",
            "",
            "| split | " + " | ".join(cfg.classes) + " |",
            "|---" * (len(cfg.classes) + 1) + "|",
        ]
        for split, metrics in splits.items():
            shares = metrics.get("class_shares", {})
            lines.append(f"| {split} | " + " | ".join(f"{100 * shares.get(c, float('nan')):.1f} %" for c in cfg.classes) + " |")
        lines.append("")
    lines += [
        f"Per head on {next(iter(splits), 'val')} (unpruned):",
        "",
        "| head | mIoU | 95 % CI | " + " | ".join(cfg.classes) + " |",
        "|---" * (len(cfg.classes) + 3) + "|",
    ]
    for head, hm in m.items():
        ious = " | ".join(f"{hm['iou'][c]:.3f}" for c in cfg.classes)
        ci = hm.get("ci95")
        ci_text = f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-"
        lines.append(f"| {head} | {hm['miou']:.3f} | {ci_text} | {ious} |")
    lines += ["", "Classes and colours:", ""]
    lines += [f"- {i}: {c} rgb{tuple(cfg.palette[i])}" for i, c in enumerate(cfg.classes)]
    lines += ["", "Training config:", "", "```json", json.dumps(tc, indent=2), "```", ""]
    return "\n".join(lines)


def matp_card(cfg, card: dict) -> str:
    """Model card of the fine-tuned checkpoint: the MATP engine evaluation, then the per-head
    table, classes and config in ``prune_viz.train.model_card``'s format (its from-scratch
    preamble left out: this model was fine-tuned)."""
    e = card["matp_engine_val"]
    tc = card["train_config"]
    kept = ", ".join(f"after {layer}: {100 * v:.1f}%" for layer, v in e["kept_fraction_after"].items())
    change = -e["macs_reduction_pct"]
    lines = [
        "# Demo segmenter, MATP fine-tune",
        "",
        f"Fine-tuned from `{card['init']}` with MATP pruning after blocks {list(tc['layers'])} in the forward "
        f"(`prune_viz/train_matp.py`: retention gate {'on' if tc['gate'] else 'off'}, gradient stop "
        f"{'on' if tc['grad_stop'] else 'off'}). Method details: `docs/methods/matp.md`.",
        "",
        f"Command: `{card['command']}`  ",
        f"Commit: `{card['commit']}`  ",
        f"Fine-tune time: {card['train_seconds'] / 60:.1f} min on {tc['threads']} CPU threads  ",
        f"Validation: {card['val_scenes']} scenes of `{tc.get('val_split', 'val')}` at {card['inference_size']} px",
        "",
        "MATP at its defaults through the engine (tokens really removed): "
        f"mIoU {e['miou']:.3f}; MACs per image {e['macs'] / 1e9:.3f} G vs {e['macs_unpruned'] / 1e9:.3f} G unpruned "
        f"({change:+.1f}%; 1 multiply-add = 1 MAC, auxiliary heads included); patch tokens alive {kept}.",
        "",
    ]
    b = card.get("matp_engine_val_init") or {}
    if b:
        lines += [
            f"The same evaluation of the starting model (before the fine-tune): mIoU {b['miou']:.3f}, "
            f"MACs {b['macs'] / 1e9:.3f} G ({-b['macs_reduction_pct']:+.1f}%).",
            "",
        ]
    lines += [
        "Heads of the fine-tuned model, unpruned forward:",
        "",
    ]
    base = model_card(cfg, card).splitlines()
    start = next((i for i, line in enumerate(base) if line.startswith("| head")), 1)
    return "\n".join(lines + base[start:])
