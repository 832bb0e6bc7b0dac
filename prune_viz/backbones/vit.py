"""Adapter for timm plain Vision Transformers (``timm:<model_name>``).

Surgery is minimal: a timm ``Block`` already works on any sequence length, so running it on the
kept subset is just calling it on the gathered tokens (position embeddings were added at the
embedding, before any pruning). Prefix tokens (class, registers) are always kept.

Without a segmentation head, a plain ViT segments by clustering its final patch features into
K segments (training-free, as done with DINO features); the output is anonymous segments.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, load_state_dict
from ..cluster import cosine_kmeans, kmeans_macs
from ..errors import ParamError
from ..flops import attention_core_macs, conv_macs, linear_macs
from .base import Backbone, BlockKind, BlockOutput, Prepared, Segmentation


def attention_statistics(block: nn.Module, x: Tensor, num_prefix: int, has_cls: bool) -> tuple[Tensor | None, Tensor | None]:
    """Attention probabilities of a timm block on 1 x T x C tokens, recomputed from the block's own
    weights (norm1, qkv, q_norm/k_norm, scale) so the library's forward is never replaced.

    With a class token only its row is computed (the keys of all T tokens, the query of one):
    EViT reads nothing else, and the full T x T map would cost a quarter of the block again.
    Returns (received: Nk mean attention each patch token receives over heads and queries, None
             with a class token; cls_attn: Nk attention from the class token, or None).
    """
    attn = block.attn
    if not hasattr(attn, "qkv") or not isinstance(attn.qkv, nn.Linear):
        raise ParamError("this method needs attention scores, which this timm model's attention does not expose")
    b, t, c = x.shape
    y = block.norm1(x)
    heads, hd = attn.num_heads, attn.head_dim
    w, bias = attn.qkv.weight, attn.qkv.bias
    if has_cls:
        dim = heads * hd
        q = F.linear(y[:, :1], w[:dim], None if bias is None else bias[:dim])  # 1 x 1 x dim
        k = F.linear(y, w[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])  # 1 x T x dim
        q = attn.q_norm(q.reshape(b, 1, heads, hd).transpose(1, 2))
        k = attn.k_norm(k.reshape(b, t, heads, hd).transpose(1, 2))
        probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)[0, 0]  # T
        return None, probs[num_prefix:]
    qkv = attn.qkv(y).reshape(b, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)[0]  # T x T
    return probs[:, num_prefix:].mean(dim=0), None


def resize_rgb(image: np.ndarray, h: int, w: int) -> np.ndarray:
    interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def prepare_square(image: np.ndarray, size: int, patch: int, mean: Tensor, std: Tensor) -> Prepared:
    """H x W x 3 uint8 -> the square ``size`` x ``size`` model input of a timm-style backbone
    (resized, no padding; normalised with ``mean`` / ``std`` of shape 1 x 3 x 1 x 1); the grid is
    ``size // patch`` on each side."""
    resized = resize_rgb(image, size, size)
    image01 = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
    pixels = (image01[None] - mean) / std
    g = size // patch
    return Prepared(pixels=pixels, image01=image01, grid=(g, g), valid_hw=(size, size), orig_hw=image.shape[:2])


class TimmViT(Backbone):
    """Any timm ``VisionTransformer``; ``input_size`` picks the square input resolution."""

    def __init__(self, model: nn.Module, name: str, input_size: int | None = None, segments: int = 6):
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ParamError(f"{name} is not a plain timm VisionTransformer")
        self.model = model.eval()
        self.name = name
        self.patch_size = int(model.patch_embed.patch_size[0])
        native = int(model.patch_embed.img_size[0]) if model.patch_embed.img_size else 224
        self.input_size = int(input_size or native)
        if self.input_size % self.patch_size:
            raise ParamError(f"input size {self.input_size} must be a multiple of the patch size {self.patch_size}")
        if self.input_size != native and not getattr(model, "dynamic_img_size", False):
            # timm's own resampling of the position embedding (done once, on this model copy).
            model.set_input_size(img_size=(self.input_size, self.input_size))
        self.num_blocks = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.embed_dim = int(model.embed_dim)
        self.has_cls = model.cls_token is not None
        self.segments = int(segments)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self._native = native

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def block_kind(self, layer: int) -> BlockKind:
        return "plain"

    def default_layers(self) -> tuple[int, ...]:
        return (max(1, self.num_blocks // 4),)

    # --- forward pieces ----------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        return prepare_square(image, self.input_size, self.patch_size, self.mean, self.std)

    def embed(self, prep: Prepared) -> Tensor:
        m = self.model
        x = m.patch_embed(prep.pixels)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def run_block(self, layer: int, x: Tensor, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False) -> BlockOutput:
        block = self.model.blocks[layer - 1]
        received = cls_attn = None
        if want_attn:
            received, cls_attn = attention_statistics(block, x, self.num_prefix_tokens, self.has_cls)
        return BlockOutput(x=block(x), received=received, cls_attn=cls_attn)

    def final_norm(self, patch_grid: Tensor) -> Tensor:
        return self.model.norm(patch_grid)

    def decode(self, patch_grid: Tensor, prefix: Tensor, prep: Prepared, exit_logits=None, exited=None) -> Segmentation:
        feats = self.final_norm(patch_grid)[0]  # N x C
        labels, _ = cosine_kmeans(feats, self.segments, seed=0)
        grid_labels = labels.view(prep.grid).numpy().astype(np.int32)
        h, w = prep.orig_hw
        full = cv2.resize(grid_labels, (w, h), interpolation=cv2.INTER_NEAREST)
        return Segmentation(labels=full.astype(np.int32), kind="segments")

    # --- MACs --------------------------------------------------------------------------------
    def embed_macs(self, prep: Prepared) -> int:
        gh, gw = prep.grid
        return conv_macs(self.model.patch_embed.proj, gh, gw)

    def block_macs(self, layer: int, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False) -> int:
        block = self.model.blocks[layer - 1]
        n = self.num_prefix_tokens + (grid[0] * grid[1] if kept_idx is None else kept_idx.numel())
        attn_dim = block.attn.num_heads * block.attn.head_dim
        macs = self._linear_per_token(layer) * n + attention_core_macs(n, n, attn_dim)
        if want_attn:  # statistics recompute q, k and QK^T (the class token's row only, when there is one)
            qkv = block.attn.qkv
            if self.has_cls:
                macs += (n + 1) * qkv.in_features * attn_dim + n * attn_dim
            else:
                macs += linear_macs(qkv, n) + n * n * attn_dim
        return macs

    def decode_macs(self, prep: Prepared) -> int:
        n = prep.grid[0] * prep.grid[1]
        return kmeans_macs(n, self.segments, self.embed_dim)

    def _linear_per_token(self, layer: int) -> int:
        """``linear_macs(block, 1)``, remembered per block: walking the block's modules took
        ~0.1 ms, twice per block on the timed path (the blocks do not change after building)."""
        cache = self.__dict__.setdefault("_linear_macs_cache", {})
        if layer not in cache:
            cache[layer] = linear_macs(self.model.blocks[layer - 1], 1)
        return cache[layer]


def build_timm(model_name: str, input_size: int | None = None, checkpoint: str | None = None, pretrained: bool = False,
               random_weights: bool = False, checkpoint_size: int | None = None) -> TimmViT:
    """``timm:<name>``: a local ``checkpoint``; else timm's pretrained weights when they are in the
    checkpoint folder (fetched first when ``pretrained``: needs the network); else random weights
    (or always, with ``random_weights``). ``checkpoint_size``: the input size the checkpoint's
    position embedding was made for (default: timm's native size); ``input_size`` the one to run at."""
    import timm

    from .timm_weights import cached_pretrained, download_pretrained, load_pretrained

    try:
        kw = {"img_size": checkpoint_size} if checkpoint_size else {}
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **kw)
    except RuntimeError as exc:
        raise CheckpointError(f"could not create timm model '{model_name}': {exc}") from None
    fetched = None
    if not checkpoint and not random_weights:
        fetched = cached_pretrained(model_name) or (download_pretrained(model_name) if pretrained else None)
    if fetched is not None:
        load_pretrained(model, fetched, model_name)
    elif checkpoint:
        load_timm_state(model, checkpoint, model_name)
    backbone = TimmViT(model, f"timm:{model_name}", input_size=input_size)
    backbone.weights_file = str(fetched or checkpoint) if (fetched or checkpoint) else None
    backbone.weights_kind = "pretrained" if fetched else ("file" if checkpoint else "random")
    backbone.weights = ("timm pretrained" if fetched else Path(checkpoint).name if checkpoint else "random weights")
    return backbone


def load_timm_state(model: nn.Module, checkpoint: str | Path, model_name: str, skip: tuple[str, ...] = ("head.",)) -> None:
    """Load a state dict file into a timm model (keys starting with ``skip`` ignored); every
    other key must match, else CheckpointError says which."""
    state = load_state_dict(checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: another architecture or size
        raise CheckpointError(f"{Path(checkpoint).name} does not match timm model '{model_name}': {str(exc).splitlines()[1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{Path(checkpoint).name} does not match timm model '{model_name}' "
            f"(missing {len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
