"""SAM's image encoder sizes: hyper-parameters, constants, official weights and how to load them.

Layers are 1-based (``prune_viz`` convention); segment-anything's ``global_attn_indexes`` are
0-based. So the global blocks are ViT-B 3, 6, 9, 12; ViT-L 6, 12, 18, 24; ViT-H 8, 16, 24, 32.
LVTP's default pruning layer is the second global block: ViT-B 6, ViT-L 12, ViT-H 16 (the
paper's "16th layer" of ViT-H is a global-attention block).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, cache_dir, download as download_file, load_state_dict
from ..errors import ParamError

PATCH_SIZE = 16
WINDOW_SIZE = 14
PROMPT_EMBED_DIM = 256
PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0-255 scale, as segment_anything/build_sam.py
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamVariant:
    """Hyper-parameters and official weights of one SAM image encoder size.

    global_attn_indexes: 0-based, exactly as in segment_anything/build_sam.py.
    default_layers: 1-based pruning layers (LVTP's choice: the second global block).
    sha256: of the official file. The 6 hex characters in the official file names are the start
    of the file's **md5**, not of its sha256, so they are not checked separately (the sha256
    check is the stronger one). sha256 values were cross-checked against several independent
    download scripts that verify these files; ``None`` would mean "unknown: check skipped".
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    default_layers: tuple[int, ...]
    filename: str
    url: str
    sha256: str | None
    size_note: str


_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_VARIANTS: dict[str, SamVariant] = {
    "sam_vit_b": SamVariant(
        "sam_vit_b", 768, 12, 12, (2, 5, 8, 11), (6,), "sam_vit_b_01ec64.pth", _URL + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "375 MB",
    ),
    "sam_vit_l": SamVariant(
        "sam_vit_l", 1024, 24, 16, (5, 11, 17, 23), (12,), "sam_vit_l_0b3195.pth", _URL + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "1.25 GB",
    ),
    "sam_vit_h": SamVariant(
        "sam_vit_h", 1280, 32, 16, (7, 15, 23, 31), (16,), "sam_vit_h_4b8939.pth", _URL + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "2.56 GB",
    ),
}


# --- building ----------------------------------------------------------------------------------
def _build_sam_model(
    embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...], img_size: int = 1024
) -> "nn.Module":
    """segment-anything's ``_build_sam`` with ``img_size`` as a parameter (the library fixes 1024).

    ``img_size`` sets the token grid (img_size / 16), the absolute position embedding and the
    global blocks' relative-position tables; windowed blocks stay 14 x 14. Built on the current
    default device (``torch.device("meta")`` gives a free shape-only model).
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if img_size % PATCH_SIZE or img_size < PATCH_SIZE:
        raise ParamError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {img_size}")
    grid = img_size // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(global_attn_indexes),
            window_size=WINDOW_SIZE,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def _guess_variant(state: dict[str, Tensor]) -> str | None:
    """Which official variant a state dict looks like (by its embedding width), if any."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    for v in SAM_VARIANTS.values():
        if w.shape[0] == v.embed_dim:
            return v.name
    return None


def _adapt_resolution(state: dict[str, Tensor], model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Resample the input-size-dependent tensors of a checkpoint to this model's grid.

    Only ``pos_embed`` (1 x g x g x C) and the global blocks' ``rel_pos_h/w`` ((2g - 1) x d)
    depend on the input size. Relative tables are resampled exactly as ``get_rel_pos`` would do
    on the fly (linear), so the result equals running the original tables; the absolute table is
    resampled bicubically. Tensors whose channel width differs are left alone: that is a wrong
    variant, reported by the caller.
    """
    out = dict(state)
    for key, target in model_state.items():
        src = out.get(key)
        if src is None or src.shape == target.shape or src.ndim != target.ndim:
            continue
        if key.endswith("pos_embed") and src.ndim == 4 and src.shape[-1] == target.shape[-1]:
            grid = tuple(target.shape[1:3])
            resized = F.interpolate(src.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False)
            out[key] = resized.permute(0, 2, 3, 1).to(src.dtype)
        elif (key.endswith("rel_pos_h") or key.endswith("rel_pos_w")) and src.ndim == 2 and src.shape[1] == target.shape[1]:
            resized = F.interpolate(src.float().T[None], size=target.shape[0], mode="linear")
            out[key] = resized[0].T.to(src.dtype).contiguous()
    return out


def _load_weights(sam: nn.Module, state: dict[str, Tensor], variant: str, source: str) -> None:
    """Check every key and shape against the model, then load (``assign``: no copy of the
    weights, and the model may be a shape-only ``meta`` model until now)."""
    model_state = sam.state_dict()
    state = _adapt_resolution(state, model_state)
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    mismatched = [k for k in model_state if k in state and state[k].shape != model_state[k].shape]
    if missing or unexpected or mismatched:
        guess = _guess_variant(state)
        hint = f" It looks like a {guess} checkpoint: choose that backbone." if guess and guess != variant else ""
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(
                f"{len(mismatched)} tensors of another shape, e.g. {k}: "
                f"file {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
            )
        if missing:
            detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise CheckpointError(f"{source} does not fit {variant} ({'; '.join(detail)}).{hint}")
    sam.load_state_dict({k: v.to(model_state[k].dtype) for k, v in state.items()}, strict=True, assign=True)


def _resolve_checkpoint(variant: SamVariant, checkpoint: str | None, download: bool, progress) -> Path:
    """The file to load: an explicit path, else the cache folder, else a download if allowed."""
    if checkpoint:
        return Path(checkpoint).expanduser()
    cached = cache_dir() / variant.filename
    if cached.is_file():
        return cached
    if download:
        return download_file(variant.url, cached, variant.sha256, progress)
    raise CheckpointError(
        f"no weights for {variant.name}: {variant.filename} is not in {cache_dir()}. Either pass "
        f"--checkpoint PATH (a local copy of {variant.url}), or put {variant.filename} in that folder "
        f"(set PRUNE_VIZ_CHECKPOINTS to use another folder), or allow the download with --download "
        f"({variant.size_note}, sha256-checked)."
    )


def load_sam_model(
    variant: SamVariant,
    checkpoint: str | None,
    img_size: int,
    download: bool,
    progress: Callable[[int, int], None] | None,
    random_weights: bool,
) -> tuple[nn.Module, str]:
    """segment-anything's ``Sam`` for ``variant`` at ``img_size``, weights from ``checkpoint``,
    the cache folder or an allowed download (random when ``random_weights``), and the path of
    the weights file ("random weights" when there is none)."""
    if random_weights and checkpoint:
        raise ValueError("give either a checkpoint or random_weights=True, not both")
    v = variant
    args = (v.embed_dim, v.depth, v.num_heads, v.global_attn_indexes, img_size)
    if random_weights:
        return _build_sam_model(*args), "random weights"
    path = _resolve_checkpoint(v, checkpoint, download, progress)
    state = load_state_dict(path)
    with torch.device("meta"):  # shapes only: the file's tensors become the parameters
        sam = _build_sam_model(*args)
    _load_weights(sam, state, v.name, path.name)
    # Sam's pixel_mean/std are non-persistent buffers (not in any checkpoint): make them real.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    return sam, str(path)
