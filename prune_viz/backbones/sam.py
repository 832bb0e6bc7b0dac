"""Adapter for Segment Anything's image encoder (``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``).

The model is segment-anything's own ``Sam`` (image encoder + prompt encoder + mask decoder),
built with the official hyper-parameters but a configurable input size. Nothing in the library
is patched: the full-grid path calls the unmodified ``Block``; the pruned path runs a block on
the kept tokens with the block's own sub-modules (``norm1``, ``attn.qkv``, ``attn.proj``,
``attn.rel_pos_h/w``, ``norm2``, ``mlp``) and segment-anything's ``get_rel_pos``.

Attention on a subset of tokens
-------------------------------
* Global blocks: every kept token attends to every kept token.
* Windowed blocks: a kept token attends to the kept tokens of its own 14 x 14 window. SAM pads
  the *normalised* grid with zeros up to a multiple of 14 before partitioning, so in edge windows
  the unmodified model also attends to those pad cells: their key/value is exactly the qkv bias
  (the input is 0). The subset path keeps these pad keys (never as queries: their outputs are
  cropped by SAM too), so at pruning rate 0 it equals the unmodified block.
* Relative positions: SAM adds ``rel_h[q_row, k_row] + rel_w[q_col, k_col]`` with
  ``rel_h = q . R_h[q_row, k_row]`` (decomposed, MViTv2). The subset path computes ``rel_h`` /
  ``rel_w`` for the kept queries only and gathers the columns of the kept (and pad) keys, with
  window-local coordinates in windowed blocks and grid coordinates in global blocks.

Layers are 1-based (``prune_viz`` convention); segment-anything's ``global_attn_indexes`` are
0-based. So the global blocks are ViT-B 3, 6, 9, 12; ViT-L 6, 12, 18, 24; ViT-H 8, 16, 24, 32.
LVTP's default pruning layer is the second global block: ViT-B 6, ViT-L 12, ViT-H 16 (the
paper's "16th layer" of ViT-H is a global-attention block).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, cache_dir, download as download_file, load_state_dict
from ..flops import conv_macs, linear_macs, measure_macs
from .base import Backbone, BlockKind, BlockOutput, Prepared, Segmentation

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
        raise ValueError(f"img_size must be a positive multiple of {PATCH_SIZE}, got {img_size}")
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


def build_sam(
    variant: str,
    checkpoint: str | None = None,
    img_size: int = 1024,
    download: bool = False,
    progress: Callable[[int, int], None] | None = None,
    random_weights: bool = False,
    points_per_side: int = 8,
) -> "SamBackbone":
    """Build a SAM backbone. Weights come from, in order: ``checkpoint`` (a path), the official
    file name in :func:`prune_viz.checkpoints.cache_dir`, or a download when ``download=True``;
    otherwise :class:`CheckpointError` says what to do. ``random_weights=True`` skips loading
    (tests, benchmarks). The network is touched only for an allowed download.

    A checkpoint made for another input size (e.g. the official 1024 weights with
    ``img_size=512``) is resampled to this grid (see :func:`_adapt_resolution`).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant '{variant}'; choose one of {', '.join(SAM_VARIANTS)}")
    v = SAM_VARIANTS[variant]
    if random_weights and checkpoint:
        raise ValueError("give either a checkpoint or random_weights=True, not both")
    args = (v.embed_dim, v.depth, v.num_heads, v.global_attn_indexes, img_size)
    if random_weights:
        sam = _build_sam_model(*args)
    else:
        path = _resolve_checkpoint(v, checkpoint, download, progress)
        state = load_state_dict(path)
        with torch.device("meta"):  # shapes only: the file's tensors become the parameters
            sam = _build_sam_model(*args)
        _load_weights(sam, state, v.name, path.name)
        # Sam's pixel_mean/std are non-persistent buffers (not in any checkpoint): make them real.
        sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
    return SamBackbone(sam, v.name, default_layers=v.default_layers, points_per_side=points_per_side)


# --- geometry helpers ----------------------------------------------------------------------------
def _window_pad_cells(grid: tuple[int, int], ws: int) -> list[Tensor]:
    """Per window (row-major over the padded grid): window-local indices (row * ws + col) of the
    zero pad cells SAM appends to reach a multiple of ``ws``. Empty for interior windows."""
    gh, gw = grid
    nwh, nww = math.ceil(gh / ws), math.ceil(gw / ws)
    local = torch.arange(ws * ws)
    lr, lc = local // ws, local % ws
    pads = []
    for wi in range(nwh):
        for wj in range(nww):
            is_pad = (wi * ws + lr >= gh) | (wj * ws + lc >= gw)
            pads.append(local[is_pad])
    return pads


def _window_occupancy(kept_idx: Tensor, grid: tuple[int, int], ws: int) -> Tensor:
    """Kept tokens per window (row-major over windows)."""
    gh, gw = grid
    nww = math.ceil(gw / ws)
    rows, cols = kept_idx // gw, kept_idx % gw
    win = (rows // ws) * nww + cols // ws
    return torch.bincount(win, minlength=math.ceil(gh / ws) * nww)


def _point_grid(n: int) -> np.ndarray:
    """n*n points at cell centres of the unit square (x, y), as SAM's ``build_point_grid``."""
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def _mask_nms(masks: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS on M x P boolean masks by mask IoU (no torchvision). Returns kept indices,
    best score first. Done in numpy: it is post-processing, not model arithmetic, and stays
    out of the FLOP counter's view."""
    order = np.argsort(-scores, kind="stable")
    flat = masks[order].astype(np.float32)
    area = flat.sum(1)
    inter = flat @ flat.T
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1.0)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= iou[i] <= iou_thresh
    return order[np.array(keep, dtype=np.int64)]


class SamBackbone(Backbone):
    """A ``segment_anything.modeling.Sam`` behind the prune_viz protocol.

    Output: "everything" mode. A ``points_per_side``^2 grid of single-point prompts goes through
    the prompt encoder and mask decoder (three masks per point, the best by predicted IoU kept),
    masks with predicted IoU < ``pred_iou_thresh`` are dropped, near duplicates (mask IoU >
    ``nms_iou_thresh``) removed, and the rest painted largest first so smaller masks stay
    visible. ``predict_masks`` answers user clicks / boxes like ``SamPredictor.predict``.

    The grid defaults to 8 x 8 (SamAutomaticMaskGenerator uses 32 x 32): at 1024 px each point
    costs ~1.8 GMACs in the mask decoder, untouched by pruning, so 16 x 16 would cost as much as
    the whole ViT-B encoder and hide the encoder's saving inside the total.
    """

    def __init__(
        self,
        sam: nn.Module,
        name: str,
        default_layers: tuple[int, ...] | None = None,
        points_per_side: int = 8,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.7,
        nms_iou_thresh: float = 0.8,
    ):
        from segment_anything.utils.transforms import ResizeLongestSide

        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        # Inference only. (Also keeps FlopCounterMode's module tracker away from grad hooks on
        # views of parameters, which it cannot attach under no_grad.)
        self.sam = sam.eval().requires_grad_(False)
        enc = sam.image_encoder
        self.name = name
        self.patch_size = int(enc.patch_embed.proj.kernel_size[0])
        self.img_size = int(enc.img_size)
        self.num_blocks = len(enc.blocks)
        self.num_prefix_tokens = 0
        self.embed_dim = int(enc.patch_embed.proj.out_channels)
        self.grid = (self.img_size // self.patch_size,) * 2
        self.global_layers = tuple(i + 1 for i, b in enumerate(enc.blocks) if b.window_size == 0)
        if default_layers:
            self._default_layers = tuple(default_layers)
        else:  # LVTP's rule for the official variants: the second global block, if it is not the last
            second = self.global_layers[1:2]
            self._default_layers = second if second and second[0] < self.num_blocks else (max(1, self.num_blocks // 2),)
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.nms_iou_thresh = float(nms_iou_thresh)
        self.transform = ResizeLongestSide(self.img_size)
        self.mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD).view(3, 1, 1)
        self._prompt_decoder_macs = self._measure_prompt_decoder_macs()

    # --- structure -----------------------------------------------------------------------------
    def _block(self, layer: int) -> nn.Module:
        if not 1 <= layer <= self.num_blocks:
            raise ValueError(f"layer {layer} is out of range for {self.name}: 1..{self.num_blocks}")
        return self.sam.image_encoder.blocks[layer - 1]

    def block_kind(self, layer: int) -> BlockKind:
        return "global" if self._block(layer).window_size == 0 else "window"

    def default_layers(self) -> tuple[int, ...]:
        return self._default_layers

    # --- forward pieces ------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        """H x W x 3 uint8 RGB -> SAM input: longest side resized to ``img_size`` (SAM's
        ``ResizeLongestSide``), normalised on the 0-255 scale, zero-padded bottom/right to a square
        (as ``Sam.preprocess``). ``image01`` is the same padded input before normalisation, so its
        padding is the pixel mean (what a normalised 0 means), not black."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("expected an H x W x 3 uint8 RGB image")
        resized = self.transform.apply_image(image)
        h, w = resized.shape[:2]
        rgb = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()  # 3 x h x w, 0..255
        s = self.img_size
        pixels = F.pad((rgb - self.mean) / self.std, (0, s - w, 0, s - h))[None]
        image01 = (self.mean / 255.0).expand(3, s, s).clone()
        image01[:, :h, :w] = rgb / 255.0
        return Prepared(pixels=pixels, image01=image01, grid=self.grid, valid_hw=(h, w), orig_hw=tuple(image.shape[:2]))

    def embed(self, prep: Prepared) -> Tensor:
        """Patch embedding + absolute position embedding -> 1 x N x C (row-major grid)."""
        enc = self.sam.image_encoder
        x = enc.patch_embed(prep.pixels)  # 1 x gh x gw x C
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        return x.flatten(1, 2)

    def run_block(
        self, layer: int, x: Tensor, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False
    ) -> BlockOutput:
        """x: 1 x N x C (``kept_idx`` None: the full grid, run the unmodified segment-anything
        ``Block``) or 1 x Nk x C (the kept tokens, in ``kept_idx`` order: subset path)."""
        block = self._block(layer)
        if x.shape[0] != 1:
            raise ValueError("SamBackbone runs one image at a time (batch 1)")
        gh, gw = grid
        if kept_idx is None:
            out = block(x.reshape(1, gh, gw, -1)).reshape(x.shape)
            received = None
            if want_attn:  # statistics recomputed from the block's weights; the output stays the library's
                _, received = _subset_attention(block, block.norm1(x[0]), torch.arange(gh * gw), grid, True, False)
            return BlockOutput(x=out, received=received)
        return _run_block_subset(block, x, kept_idx, grid, want_attn)

    def image_embedding(self, patch_grid: Tensor) -> Tensor:
        """1 x N x C grid features -> SAM image embedding 1 x 256 x gh x gw (the encoder's neck)."""
        gh, gw = self.grid
        return self.sam.image_encoder.neck(patch_grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2))

    def _decode_points(
        self, embedding: Tensor, coords: Tensor | None, labels: Tensor | None, boxes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Prompts in the input frame (B x M x 2 xy, B x M labels; B x 4 boxes) -> low-res mask
        logits B x 3 x 4gh x 4gw and predicted IoU B x 3 (multimask output)."""
        pe, md = self.sam.prompt_encoder, self.sam.mask_decoder
        points = (coords, labels) if coords is not None else None
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        return md(
            image_embeddings=embedding,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    @torch.no_grad()
    def decode(
        self, patch_grid: Tensor, prefix: Tensor, prep: Prepared, exit_logits: Tensor | None = None, exited: Tensor | None = None
    ) -> Segmentation:
        """Grid features 1 x N x C -> "everything" label map H x W int32 (0 = no mask).

        The image embedding (1 x 256 x gh x gw) is kept in ``extra["image_embedding"]`` for
        :meth:`predict_masks`. Cost: the mask decoder re-projects the whole embedding for every
        prompt, about 1.8 GMACs per point at img_size 1024, so the default 16 x 16 points cost
        ~465 GMACs, as much as the ViT-B encoder (483 GMACs) and independent of pruning.
        SAM has no auxiliary heads, so ``exit_logits`` / ``exited`` are unused."""
        embedding = self.image_embedding(patch_grid)
        oh, ow = prep.orig_hw
        pts = self.transform.apply_coords(_point_grid(self.points_per_side) * np.array([ow, oh]), prep.orig_hw)
        coords = torch.as_tensor(pts, dtype=torch.float32)[:, None, :]  # P x 1 x 2
        logits, scores = [], []
        for start in range(0, len(coords), self.points_per_batch):
            c = coords[start : start + self.points_per_batch]
            low, iou = self._decode_points(embedding, c, torch.ones(len(c), 1, dtype=torch.int))
            best = iou.argmax(dim=1)
            logits.append(low[torch.arange(len(c)), best])
            scores.append(iou[torch.arange(len(c)), best])
        low_res, score = torch.cat(logits), torch.cat(scores)  # P x 4gh x 4gw, P

        # Filter and de-duplicate on the low-res masks restricted to the image (padding cropped).
        lh = math.ceil(prep.valid_hw[0] * low_res.shape[-2] / self.img_size)
        lw = math.ceil(prep.valid_hw[1] * low_res.shape[-1] / self.img_size)
        binary = (low_res[:, :lh, :lw] > self.sam.mask_threshold).flatten(1)
        ok = (score >= self.pred_iou_thresh) & binary.any(dim=1)
        idx = torch.nonzero(ok).flatten()
        labels = np.zeros((oh, ow), dtype=np.int32)
        kept: list[int] = []
        if idx.numel():
            idx = idx[torch.from_numpy(_mask_nms(binary[idx].numpy(), score[idx].numpy(), self.nms_iou_thresh))]
            # Largest first so that smaller masks painted later stay visible.
            idx = idx[torch.argsort(binary[idx].sum(1), descending=True, stable=True)]
            kept = idx.tolist()
            for chunk in range(0, len(kept), 8):  # full-size masks are big: a few at a time
                sel = idx[chunk : chunk + 8]
                full = self.sam.postprocess_masks(low_res[sel][:, None], prep.valid_hw, prep.orig_hw)[:, 0]
                for j, m in enumerate((full > self.sam.mask_threshold).numpy()):
                    labels[m] = chunk + j + 1
        return Segmentation(
            labels=labels,
            kind="segments",
            extra={"image_embedding": embedding, "mask_scores": score[kept].numpy() if kept else np.zeros(0, np.float32)},
        )

    @torch.no_grad()
    def predict_masks(
        self,
        seg_or_embedding: Segmentation | Tensor,
        prep: Prepared,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float]:
        """Prompted mask, as ``SamPredictor.predict`` (multimask output, best by predicted IoU).

        points: M x 2 (x, y) in ORIGINAL image pixels; point_labels: M (1 foreground, 0
        background; all foreground when omitted); box: (x0, y0, x1, y1) in original pixels.
        Works on the embedding of a pruned run as well as an unpruned one.
        Returns (H x W bool mask at the original size, predicted IoU).
        """
        embedding = seg_or_embedding.extra["image_embedding"] if isinstance(seg_or_embedding, Segmentation) else seg_or_embedding
        if points is None and box is None:
            raise ValueError("give at least one point or a box")
        coords = labels = boxes = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            lab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
            if len(lab) != len(pts):
                raise ValueError(f"{len(pts)} points but {len(lab)} point labels")
            coords = torch.as_tensor(self.transform.apply_coords(pts, prep.orig_hw), dtype=torch.float32)[None]
            labels = torch.as_tensor(lab, dtype=torch.int)[None]
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(1, 4)
            boxes = torch.as_tensor(self.transform.apply_boxes(b, prep.orig_hw), dtype=torch.float32)
        low, iou = self._decode_points(embedding, coords, labels, boxes)
        best = int(iou[0].argmax())
        mask = self.sam.postprocess_masks(low[:, best : best + 1], prep.valid_hw, prep.orig_hw)[0, 0]
        return (mask > self.sam.mask_threshold).numpy(), float(iou[0, best])

    # --- MACs ----------------------------------------------------------------------------------
    def embed_macs(self, prep: Prepared) -> int:
        gh, gw = prep.grid
        return conv_macs(self.sam.image_encoder.patch_embed.proj, gh, gw)

    def block_macs(self, layer: int, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False) -> int:
        """Exactly what ``run_block`` multiplies-and-adds.

        kept_idx None (unmodified block): windowed blocks run qkv, proj, attention and the
        rel-pos einsums on the PADDED windows (pad queries included), the MLP on the N real
        tokens; global blocks on the N tokens. Subset path: qkv/proj/MLP on Nk tokens, rel-pos
        for Nk queries, attention Nk x Nk (global) or n_w x (n_w + pads_w) per occupied window.
        want_attn: the subset path gets its statistics from probabilities it computes anyway
        (+0); the full path recomputes norm1, qkv, rel-pos and QK^T on the real tokens.
        """
        block = self._block(layer)
        gh, gw = grid
        n = gh * gw
        if kept_idx is None:
            macs = _full_block_macs(block, grid)
            if want_attn:
                macs += _subset_attention_macs(block, torch.arange(n), grid, with_output=False)
            return macs
        nk = int(kept_idx.numel())
        return linear_macs(block.mlp, nk) + _subset_attention_macs(block, kept_idx, grid, with_output=True)

    def _measure_prompt_decoder_macs(self) -> int:
        """MACs of the prompt encoder + mask decoder for the everything-mode point batches.

        Measured once with FlopCounterMode (no closed form is practical for the two-way
        transformer): the prompt encoder on tiny real CPU tensors, the mask decoder on a ``meta``
        copy (shapes only, instant). Independent of pruning and of the image.
        """
        pe, md = self.sam.prompt_encoder, self.sam.mask_decoder
        md_meta = copy.deepcopy(md).to("meta")
        gh, gw = self.grid
        total_points = self.points_per_side**2
        sizes = [self.points_per_batch] * (total_points // self.points_per_batch)
        if total_points % self.points_per_batch:
            sizes.append(total_points % self.points_per_batch)
        macs_for: dict[int, int] = {}
        for b in set(sizes):
            coords = torch.zeros(b, 1, 2)
            labels = torch.ones(b, 1, dtype=torch.int)
            pe_macs, (sparse, dense, dense_pe) = measure_macs(
                lambda: (*pe(points=(coords, labels), boxes=None, masks=None), pe.get_dense_pe())
            )
            emb = torch.zeros(1, PROMPT_EMBED_DIM, gh, gw, device="meta")
            md_macs, _ = measure_macs(
                lambda: md_meta(
                    image_embeddings=emb,
                    image_pe=dense_pe.to("meta"),
                    sparse_prompt_embeddings=sparse.to("meta"),
                    dense_prompt_embeddings=dense.to("meta"),
                    multimask_output=True,
                )
            )
            macs_for[b] = pe_macs + md_macs
        return sum(macs_for[b] for b in sizes)

    def decode_macs(self, prep: Prepared) -> int:
        """Neck (1x1 and 3x3 convs, analytic) + prompt encoder and mask decoder for all point
        batches (measured at construction, see ``_measure_prompt_decoder_macs``). Mask filtering,
        NMS and painting are post-processing and not counted."""
        gh, gw = prep.grid
        neck = self.sam.image_encoder.neck
        return conv_macs(neck[0], gh, gw) + conv_macs(neck[2], gh, gw) + self._prompt_decoder_macs


# --- the subset path ---------------------------------------------------------------------------
def _run_block_subset(block: nn.Module, x: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_attn: bool) -> BlockOutput:
    """A segment-anything ``Block`` on the kept tokens only. x: 1 x Nk x C -> 1 x Nk x C."""
    if kept_idx.numel() != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens but {kept_idx.numel()} kept positions")
    attn_out, received = _subset_attention(block, block.norm1(x[0]), kept_idx, grid, want_attn, True)
    x = x + attn_out[None]
    x = x + block.mlp(block.norm2(x))
    return BlockOutput(x=x, received=received)


def _subset_attention(
    block: nn.Module, y: Tensor, kept_idx: Tensor, grid: tuple[int, int], want_stats: bool, with_output: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Attention of block ``block`` among the kept tokens.

    y: Nk x C, tokens after norm1, in ``kept_idx`` order (row-major grid positions).
    Returns (Nk x C after attn.proj, or None when ``with_output`` is False;
             Nk mean attention received per kept token when ``want_stats``, else None).
    qkv and proj run on all kept tokens at once (one big matmul each); only the attention
    itself is per window. In windowed blocks the tokens are first sorted by window (a row
    gather of y), so that every window is a contiguous slice of q, k and v.
    """
    attn = block.attn
    nk, c = y.shape
    heads = attn.num_heads
    gh, gw = grid
    rows, cols = kept_idx // gw, kept_idx % gw
    ws = block.window_size
    order = None
    if ws:
        win = (rows // ws) * math.ceil(gw / ws) + cols // ws
        order = torch.sort(win, stable=True).indices
        counts = torch.bincount(win, minlength=math.ceil(gh / ws) * math.ceil(gw / ws)).tolist()
        y, rows, cols = y.index_select(0, order), rows[order], cols[order]
    qkv = attn.qkv(y).reshape(nk, 3, heads, c // heads).permute(1, 2, 0, 3)  # 3 x H x Nk x hd
    q, k, v = qkv.unbind(0)
    if ws:
        ctx, received = _window_attention(attn, q, k, v, rows % ws, cols % ws, counts, grid, ws, want_stats, with_output)
    else:
        rel = _rel_pos_tables(attn, q, (gh, gw), rows, cols) if attn.use_rel_pos else None
        ctx, received = _attend(q * attn.scale, k, v, rel, rows, cols, nk, want_stats, with_output)
    out = attn.proj(ctx.transpose(0, 1).reshape(nk, c)) if with_output else None
    if order is not None:  # back to kept_idx order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(nk)
        out = out.index_select(0, inverse) if out is not None else None
        received = received[inverse] if received is not None else None
    return out, received


def _rel_pos_tables(attn: nn.Module, q: Tensor, size: tuple[int, int], q_rows: Tensor, q_cols: Tensor) -> tuple[Tensor, Tensor]:
    """SAM's decomposed relative-position terms for the given queries, key-coordinate major:
    rel_h[h, r, i] = q_i . R_h[q_row_i, r], rel_w[h, s, i] = q_i . R_w[q_col_i, s].
    q: H x n x hd (unscaled, as in ``add_decomposed_rel_pos``) -> (H x size_h x n, H x size_w x n).
    Same products as segment-anything's einsums (one hd-dot per query and key coordinate)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    r_h = get_rel_pos(size[0], size[0], attn.rel_pos_h)  # size_h x size_h x hd (q_row, k_row)
    r_w = get_rel_pos(size[1], size[1], attn.rel_pos_w)
    rel_h = torch.einsum("hnc,nkc->hkn", q, r_h[q_rows])
    rel_w = torch.einsum("hnc,nkc->hkn", q, r_w[q_cols])
    return rel_h, rel_w


def _attend(
    q_scaled: Tensor,
    k: Tensor,
    v: Tensor,
    rel: tuple[Tensor, Tensor] | None,
    key_rows: Tensor,
    key_cols: Tensor,
    n_real_keys: int,
    want_stats: bool,
    with_output: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """softmax over keys of (q k^T + rel_h[key_row, q] + rel_w[key_col, q]), times v.

    q_scaled: H x n x hd; k, v: H x m x hd, the first ``n_real_keys`` keys are tokens (the rest
    are window pad cells); rel: (H x size_h x n, H x size_w x n) from :func:`_rel_pos_tables`.
    The scores are held key-major (H x m x n): the bias for a key is then a whole row of the
    table, so adding it is a row gather (memory copies) rather than a per-element gather along
    the last axis, which measured 3-10x slower on CPU. Softmax runs in place over dim 1.
    Returns (H x n x hd or None, n_real_keys attention received, averaged over heads and
    queries, or None).
    """
    scores = torch.bmm(k, q_scaled.transpose(1, 2))  # H x m x n
    if rel is not None:
        scores += rel[0].index_select(1, key_rows)
        scores += rel[1].index_select(1, key_cols)
    scores -= scores.amax(dim=1, keepdim=True)
    scores.exp_()
    scores /= scores.sum(dim=1, keepdim=True)
    received = scores[:, :n_real_keys].mean(dim=(0, 2)) if want_stats else None
    ctx = torch.bmm(v.transpose(1, 2), scores).transpose(1, 2) if with_output else None
    return ctx, received


def _window_attention(
    attn: nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    lc: Tensor,
    counts: list[int],
    grid: tuple[int, int],
    ws: int,
    want_stats: bool,
    with_output: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Windowed attention among kept tokens (plus each edge window's pad keys).

    q, k, v: H x Nk x hd, tokens sorted by window (``counts[w]`` tokens of window w, row-major
    over windows); lr, lc: their window-local row / column. The loop runs over occupied windows
    only (at most ceil(gh/ws) * ceil(gw/ws) of them; a Python step per window, never per token).
    Returns (H x Nk x hd, Nk received) in the same window order, as requested.
    """
    heads, nk, hd = q.shape
    q_scaled = q * attn.scale
    rel_h = rel_w = None
    if attn.use_rel_pos:
        rel_h, rel_w = _rel_pos_tables(attn, q, (ws, ws), lr, lc)  # H x ws x Nk each
    # Pad cells are zeros after norm1, so their key/value is the qkv bias (zero without bias).
    qkv_bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * heads * hd, dtype=q.dtype)
    k_pad, v_pad = qkv_bias.reshape(3, heads, 1, hd)[1:3]
    pads = _window_pad_cells(grid, ws)

    ctx_parts: list[Tensor] = []
    recv_parts: list[Tensor] = []
    start = 0
    for w, n in enumerate(counts):
        if n == 0:
            continue
        sl = slice(start, start + n)
        start += n
        kw, vw = k[:, sl], v[:, sl]
        key_r, key_c = lr[sl], lc[sl]
        p = int(pads[w].numel())
        if p:
            kw = torch.cat([kw, k_pad.expand(heads, p, hd)], dim=1)
            vw = torch.cat([vw, v_pad.expand(heads, p, hd)], dim=1)
            key_r = torch.cat([key_r, pads[w] // ws])
            key_c = torch.cat([key_c, pads[w] % ws])
        rel = (rel_h[:, :, sl], rel_w[:, :, sl]) if rel_h is not None else None
        ctx_w, recv_w = _attend(q_scaled[:, sl], kw, vw, rel, key_r, key_c, n, want_stats, with_output)
        if ctx_w is not None:
            ctx_parts.append(ctx_w)
        if recv_w is not None:
            recv_parts.append(recv_w)
    ctx = torch.cat(ctx_parts, dim=1) if with_output else None
    received = torch.cat(recv_parts) if want_stats else None
    return ctx, received


# --- MAC formulas ------------------------------------------------------------------------------
def _full_block_macs(block: nn.Module, grid: tuple[int, int]) -> int:
    """MACs of the unmodified segment-anything Block on the gh x gw grid."""
    gh, gw = grid
    n = gh * gw
    c = block.attn.qkv.in_features
    ws = block.window_size
    if ws == 0:
        tokens, core, rel = n, 2 * n * n * c, n * (gh + gw) * c
    else:
        hp, wp = math.ceil(gh / ws) * ws, math.ceil(gw / ws) * ws
        tokens = hp * wp  # qkv, attention, rel-pos and proj all see the pad cells as tokens
        windows = tokens // (ws * ws)
        core = windows * 2 * (ws * ws) ** 2 * c
        rel = windows * (ws * ws) * 2 * ws * c  # einsum bhwc,hkc / bhwc,wkc per window
    if not block.attn.use_rel_pos:
        rel = 0
    return linear_macs(block.attn, tokens) + core + rel + linear_macs(block.mlp, n)


def _subset_attention_macs(block: nn.Module, kept_idx: Tensor, grid: tuple[int, int], with_output: bool) -> int:
    """MACs of :func:`_subset_attention`: qkv (+ proj and P.V when ``with_output``), rel-pos
    terms for the kept queries, and QK^T over the keys each query sees."""
    attn = block.attn
    c = attn.qkv.in_features
    nk = int(kept_idx.numel())
    ws = block.window_size
    gh, gw = grid
    if ws == 0:
        pairs = nk * nk
        rel = nk * (gh + gw) * c
    else:
        occ = _window_occupancy(kept_idx, grid, ws).tolist()
        pads = _window_pad_cells(grid, ws)
        pairs = sum(n * (n + int(p.numel())) for n, p in zip(occ, pads) if n)
        rel = nk * 2 * ws * c
    if not attn.use_rel_pos:
        rel = 0
    qkv = nk * attn.qkv.in_features * attn.qkv.out_features
    macs = qkv + rel + pairs * c  # QK^T
    if with_output:
        macs += pairs * c + nk * attn.proj.in_features * attn.proj.out_features  # P.V and proj
    return macs
