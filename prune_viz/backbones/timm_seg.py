"""``timm_seg``: a timm plain ViT / DeiT / DINOv2-style backbone with a per-token linear head,
the simplest semantic segmenter people train on timm features ("linear probe" segmentation).

Checkpoint (safetensors, or a tensors-only torch file), the keys of :class:`TimmSegModel`:

- ``backbone.*``: the timm ``VisionTransformer`` (built with ``num_classes=0`` at the sidecar's
  ``input_size``, so the position embedding fits that grid); its final ``norm`` runs before the head
- ``head.weight`` (K x C, or K x C x 1 x 1 from a 1x1 conv) and ``head.bias`` (K)
- optional auxiliary heads after 1-based block L: ``aux_heads.L.norm.*`` (LayerNorm) and
  ``aux_heads.L.fc.*`` (K x C), one per ``aux_layers`` entry of the sidecar (for DToP / MATP)

Blocks run through the timm adapter (:class:`.vit.TimmViT`), so pruning, attention statistics
and MACs are the same as for ``timm:<name>``; only the decoder differs: per-token logits
(gh x gw x K), bilinearly upsampled, argmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointError, load_state_dict
from ..flops import linear_macs
from .base import Prepared, Segmentation
from .demo import logits_to_labels
from .vit import TimmViT


class AuxHead(nn.Module):
    """LayerNorm + Linear on Nk x C tokens -> Nk x K."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.norm(tokens))


class TimmSegModel(nn.Module):
    """timm VisionTransformer + per-token linear head (+ auxiliary heads). Build one, train it
    on your data, ``save_file(model.state_dict(), ...)``: that file is a timm_seg checkpoint."""

    def __init__(self, timm_name: str, num_classes: int, input_size: int | None = None, aux_layers: tuple[int, ...] = ()):
        super().__init__()
        import timm

        kw = {"img_size": input_size} if input_size else {}
        try:
            self.backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, **kw)
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"could not create timm model '{timm_name}': {exc}") from None
        dim = int(self.backbone.embed_dim)
        self.head = nn.Linear(dim, num_classes)
        depth = len(self.backbone.blocks)
        bad = [layer for layer in aux_layers if not 1 <= layer < depth]
        if bad:
            raise CheckpointError(f"aux_layers {bad} out of range: {timm_name} has {depth} blocks (heads after 1..{depth - 1})")
        self.aux_heads = nn.ModuleDict({str(layer): AuxHead(dim, num_classes) for layer in aux_layers})


class TimmSegBackbone(TimmViT):
    """Engine adapter: timm blocks (as ``timm:<name>``), a per-token semantic decoder."""

    def __init__(self, net: TimmSegModel, name: str, classes: tuple[str, ...], palette: np.ndarray,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 input_size: int | None = None):
        super().__init__(net.backbone, name, input_size=input_size)
        self.net = net.eval()
        self.aux_layers = tuple(sorted(int(k) for k in net.aux_heads))
        self.num_classes = len(classes)
        self.class_names = tuple(classes)
        self.palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if mean is not None:
            self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        if std is not None:
            self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # heads included

    def aux_logits(self, layer: int, patch_tokens: Tensor) -> Tensor | None:
        key = str(layer)
        return self.net.aux_heads[key](patch_tokens)[..., None] if key in self.net.aux_heads else None

    def aux_macs(self, layer: int, n_tokens: int) -> int:
        key = str(layer)
        return linear_macs(self.net.aux_heads[key], n_tokens) if key in self.net.aux_heads else 0

    def token_logits(self, patch_grid: Tensor, exit_logits: Tensor | None = None, exited: Tensor | None = None) -> Tensor:
        """1 x N x C full grid -> N x K logits (exited tokens keep their auxiliary logits)."""
        logits = self.net.head(self.final_norm(patch_grid))[0]
        if exit_logits is not None and exited is not None:
            logits = torch.where(exited[:, None], exit_logits.mean(-1).to(logits.dtype), logits)
        return logits

    def decode(self, patch_grid: Tensor, prefix: Tensor, prep: Prepared, exit_logits=None, exited=None) -> Segmentation:
        logits = self.token_logits(patch_grid, exit_logits, exited)  # N x K
        gh, gw = prep.grid
        logit_map = logits.T.reshape(1, -1, gh, gw)
        return Segmentation(labels=logits_to_labels(logit_map, prep.orig_hw), kind="semantic",
                            class_names=self.class_names, palette=self.palette, token_logits=logits)

    def decode_macs(self, prep: Prepared) -> int:
        return linear_macs(self.net.head, prep.grid[0] * prep.grid[1])


def load_timm_seg(net: TimmSegModel, checkpoint: str, timm_name: str) -> None:
    """Load a timm_seg checkpoint into ``net``: every key must match (a 1x1 conv head is read
    as the linear head it is)."""
    state = load_state_dict(checkpoint)
    w = state.get("head.weight")
    if w is not None and w.ndim == 4 and w.shape[2:] == (1, 1):
        state["head.weight"] = w[:, :, 0, 0]
    name = Path(checkpoint).name
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes: another architecture, class count or input size
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise CheckpointError(f"{name} does not match timm_seg '{timm_name}' with these classes and input size: "
                              f"{lines[0] if lines else str(exc).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{name} does not match timm_seg '{timm_name}' (missing {len(missing)} keys, e.g. "
                              f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}). Keys: backbone.*, "
                              "head.weight, head.bias, aux_heads.L.* (see prune_viz/backbones/timm_seg.py)")


def build_timm_seg(name: str, checkpoint: str | Path, timm_name: str, classes: tuple[str, ...],
                   palette: np.ndarray | tuple, input_size: int | None = None, aux_layers: tuple[int, ...] = (),
                   mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                   run_size: int | None = None) -> TimmSegBackbone:
    """A timm_seg backbone called ``name`` from its checkpoint, made at ``input_size`` (a
    registered model's sidecar gives the rest); ``run_size`` runs it at another input size."""
    net = TimmSegModel(timm_name, len(classes), input_size, aux_layers)
    load_timm_seg(net, str(checkpoint), timm_name)
    backbone = TimmSegBackbone(net, name, classes, np.array(palette), mean, std, input_size=run_size)
    backbone.weights = Path(checkpoint).name
    backbone.weights_file = str(checkpoint)
    backbone.weights_kind = "file"
    return backbone
