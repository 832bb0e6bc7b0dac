"""Adapter for Segment Anything's image encoder (``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``).

The model is segment-anything's own ``Sam`` (image encoder + prompt encoder + mask decoder),
built with the official hyper-parameters but a configurable input size. Nothing in the library
is patched: the full-grid path calls the unmodified ``Block``; the pruned path runs a block on
the kept tokens with the block's own sub-modules (``norm1``, ``attn.qkv``, ``attn.proj``,
``attn.rel_pos_h/w``, ``norm2``, ``mlp``) and segment-anything's ``get_rel_pos``.

The subset attention (and its MACs) lives in :mod:`.sam_attention`; variants, constants and
weights in :mod:`.sam_variants`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamError
from ..flops import conv_macs, linear_macs, measure_macs
from .base import Backbone, BlockKind, BlockOutput, Prepared, Segmentation
from .sam_attention import full_block_macs, run_block_full_with_stats, run_block_subset, subset_attention_macs
from .sam_variants import PIXEL_MEAN, PIXEL_STD, PROMPT_EMBED_DIM, SAM_VARIANTS, load_sam_model


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
    ``img_size=512``) is resampled to this grid (see :func:`.sam_variants._adapt_resolution`).
    """
    if variant not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant '{variant}'; choose one of {', '.join(SAM_VARIANTS)}")
    v = SAM_VARIANTS[variant]
    sam, weights = load_sam_model(v, checkpoint, img_size, download, progress, random_weights)
    backbone = SamBackbone(sam, v.name, default_layers=v.default_layers, points_per_side=points_per_side)
    backbone.weights = weights if random_weights else Path(weights).name
    backbone.weights_file = None if random_weights else weights
    return backbone


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
        self.input_size = self.img_size
        self.supports_prompts = True
        self.weights = "random weights"
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
    def num_params(self) -> int:
        return sum(p.numel() for p in self.sam.parameters())

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
            if want_attn:
                # The block's own arithmetic with the attention chunked over query rows: the
                # statistics are read off the probabilities that make the output (same MACs,
                # output equal to float rounding), in cache, with no second attention pass.
                return run_block_full_with_stats(block, x, grid)
            return BlockOutput(x=block(x.reshape(1, gh, gw, -1)).reshape(x.shape))
        return run_block_subset(block, x, kept_idx, grid, want_attn)

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
            raise ParamError("give at least one point or a box")
        coords = labels = boxes = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            lab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
            if len(lab) != len(pts):
                raise ParamError(f"{len(pts)} points but {len(lab)} point labels")
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
        want_attn: both paths get their statistics from probabilities they compute anyway (+0).
        """
        block = self._block(layer)
        if kept_idx is None:
            return full_block_macs(block, grid)
        nk = int(kept_idx.numel())
        return linear_macs(block.mlp, nk) + subset_attention_macs(block, kept_idx, grid, with_output=True)

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

