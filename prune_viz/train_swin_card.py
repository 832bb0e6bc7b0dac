"""The Swin demo's model card (assets/MODEL_CARD_SWIN.md), written from the evaluation that
``python -m prune_viz.train_swin`` runs on the saved weights."""

from __future__ import annotations

import json

from .backbones.demo_swin_model import SwinDemoConfig

FULL_COMMAND = "python -m prune_viz.train_swin --out assets/demo_swin.safetensors --minutes 120 --threads 2"


def _architecture(cfg: SwinDemoConfig) -> list[str]:
    lines = [
        "| stage | layers (1-based, across stages) | grid | width | heads | window |",
        "|---|---|---|---|---|---|",
    ]
    start = 1
    for s, (end, grid, dim, heads) in enumerate(zip(cfg.stage_ends, cfg.stage_grids(), cfg.stage_dims, cfg.num_heads), 1):
        w = min(cfg.window_size, grid)
        lines.append(f"| {s} | {start}-{end} | {grid} x {grid} | {dim} | {heads} | {w} x {w} |")
        start = end + 1
    return lines


def swin_model_card(cfg: SwinDemoConfig, record: dict, metrics: dict) -> str:
    """Markdown card from the training record (config, command, time) and ``metrics``
    (``train_swin.evaluate``)."""
    tc = record.get("train_config", {})
    fwd = metrics["forward"]
    minutes = record.get("train_seconds", 0) / 60
    lines = [
        "# Swin-UNet demo segmenter (shipped with prune_viz)",
        "",
        f"A small timm Swin Transformer encoder (patch {cfg.patch_size}, embed {cfg.embed_dim}, depths "
        f"{list(cfg.depths)}, window {cfg.window_size}), a UNet decoder with a skip connection from every stage "
        f"(channel LayerNorm per stage; bilinear 2x up, concat, 1x1 conv + GELU, residual depthwise 3x3 + pointwise; "
        f"widths {list(cfg.decoder_dims)} at stages 1-3; K logits on the stage-1 grid, bilinearly upsampled) and "
        f"per-token linear auxiliary heads after layers {list(cfg.aux_layers)}. Input {cfg.img_size} x {cfg.img_size}. "
        "Trained from scratch on procedural aerial scenes (`prune_viz/data/synthetic.py`, the ViT demo's classes "
        "and colours).",
        "",
        *_architecture(cfg),
        "",
        f"Stage ends: layers {list(cfg.stage_ends)} (stage 2 ends at layer {cfg.stage_ends[1]}).",
        "",
    ]
    if tc.get("p_prune", 0):
        lines += [
            f"Pruning-aware training: in {100 * tc['p_prune']:.0f} % of the steps random tokens (10-75 % of those alive, "
            "per image) stop after 1-3 random layers in 1-9, simulated densely (`prune_viz/backbones/demo_swin_frozen.py`: "
            "held features, hidden as keys of later window attentions, a merged token alive if any child is). "
            "Confident-token exits (DToP) were not simulated; the auxiliary heads are trained on every alive token.",
            "",
        ]
    lines += [
        "Numbers below are written by the training command from its own evaluation of the saved (fp16) weights "
        "(dense, unpruned forward). CIs: bootstrap 95 % over scenes (1000 resamples, "
        "`prune_viz.train_eval.evaluate_heads`).",
        "",
        f"Command: `{record.get('command', '?')}`  ",
        f"Commit: `{record.get('commit', '?')}` (the code the command ran)  ",
        f"Training time: {minutes:.1f} min wall on {tc.get('threads', '?')} CPU thread(s), "
        f"{record.get('steps_done', '?')} steps of batch {tc.get('batch', '?')} at {cfg.img_size} px"
        f"{'' if record.get('finished', True) else ' (stopped before the end of its schedule)'}  ",
    ]
    if record.get("machine_note"):
        lines.append(f"Machine: {record['machine_note']}  ")
    lines += [
        f"Full run from scratch (the spec's budget, 2 h on 2 threads): `{FULL_COMMAND}`  ",
        f"Parameters: {metrics['params']:,} ({metrics['file_bytes'] / 2**20:.1f} MiB as fp16 safetensors)  ",
        f"Dense forward at {cfg.img_size} px: {1000 * fwd['median_s']:.0f} ms (median of {fwd['repeat']} after 2 "
        f"warm-ups, {fwd['threads']} threads, 1-min load average {fwd['load_avg_1min']} on this 2-core machine)"
        + (f"; on 1 thread {1000 * metrics['forward_1thread']['median_s']:.0f} ms (load {metrics['forward_1thread']['load_avg_1min']})"
           if "forward_1thread" in metrics else "") + "  ",
        *(["(2 threads slower than 1: the machine's cores were oversubscribed by other jobs while this was timed, so "
           "the 2-thread figure measures the contention, not the model)  "]
          if metrics.get("forward_1thread", {}).get("median_s", 1e9) < fwd["median_s"] else []),
        f"Evaluation: {metrics['val_scenes']} scenes per split at {cfg.img_size} px",
        "",
        "| split | main mIoU | 95 % CI |",
        "|---|---|---|",
    ]
    for split, m in metrics["splits"].items():
        mm = m["main"]
        lines.append(f"| {split} | {mm['miou']:.3f} | {mm['ci95'][0]:.3f} - {mm['ci95'][1]:.3f} |")
    lines += [
        "",
        "`val` and `test` are i.i.d. draws of the training generator; `shift` is drawn with other settings "
        "(autumn colours, ground sampling 0.5-2x, lower sun, more haze, a town-with-river layout never seen in training).",
        "",
        "Per-class IoU (main head):",
        "",
        "| split | " + " | ".join(cfg.classes) + " |",
        "|---" * (len(cfg.classes) + 1) + "|",
    ]
    for split, m in metrics["splits"].items():
        lines.append(f"| {split} | " + " | ".join(f"{m['main']['iou'][c]:.3f}" for c in cfg.classes) + " |")
    lines += ["", "Per head on val (unpruned):", "", "| head | mIoU | 95 % CI |", "|---|---|---|"]
    for head, hm in metrics["heads_val"].items():
        lines.append(f"| {head} | {hm['miou']:.3f} | {hm['ci95'][0]:.3f} - {hm['ci95'][1]:.3f} |")
    lines += ["", "Class pixel shares (ground truth of the evaluated scenes):", "",
              "| split | " + " | ".join(cfg.classes) + " |", "|---" * (len(cfg.classes) + 1) + "|"]
    for split, m in metrics["splits"].items():
        lines.append(f"| {split} | " + " | ".join(f"{100 * m['class_shares'][c]:.1f} %" for c in cfg.classes) + " |")
    lines += ["", "Training config:", "", "```json", json.dumps(tc, indent=2), "```", ""]
    return "\n".join(lines)
