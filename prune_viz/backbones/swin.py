"""Adapter for timm Swin Transformers (``timm:swin_*``) and Swin-UNet segmenters built on them.

Hierarchical: four stages of windowed blocks, the grid halving (and the channels doubling) at
each patch merging. Layers are blocks counted across stages, 1-based (swin_tiny: 1..12, stage 1
= 1-2, stage 2 = 3-4, stage 3 = 5-10, stage 4 = 11-12). The engine learns the layout from
``stage_ends`` / ``grid_at`` / ``downsample`` (see :class:`.base.Backbone`).

Nothing in timm is patched. The full-grid path calls timm's own ``SwinTransformerBlock`` and
``PatchMerging``; the pruned path runs a block on the kept tokens with the block's own modules
(:mod:`.swin_attention`). Patch merging always runs on the full grid (pruned tokens keep their
frozen features): every merged position is needed, alive ones as input to the next stage, the
others as frozen features for the next merge and the decoder's skips. A merged token is alive
when any of its four children was (docs/methods/swin.md says why).

Input size and window: timm's swin_tiny is made for 224 px with 7 x 7 windows. The adapter builds
it at ``input_size`` (default 512) with ``window_size`` 8: at patch 4 the stage grids are 128, 64,
32, 16, each a multiple of 8, so no stage pads a window and every window is full (7 would divide
none of them).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointError, load_state_dict
from ..cluster import cosine_kmeans, kmeans_macs
from ..errors import ParamError
from ..exits import exit_pixels
from ..flops import conv_macs, linear_macs, measure_macs
from .base import Backbone, BlockKind, BlockOutput, Prepared, Segmentation, argmax_channels
from .swin_attention import run_swin_block_subset, subset_window_attention, swin_block_macs
from .vit import prepare_square

DEFAULT_WINDOW = 8
DEFAULT_SIZE = 512


def merged_alive(alive: Tensor, grid: tuple[int, int]) -> Tensor:
    """N bool alive flags on a gh x gw grid -> (gh/2 * gw/2) flags after 2 x 2 patch merging:
    a merged token is alive when any of its four children was."""
    gh, gw = grid
    return alive.view(gh // 2, 2, gw // 2, 2).any(dim=3).any(dim=1).flatten()


class SwinBackbone(Backbone):
    """A timm ``SwinTransformer`` encoder, optionally with a UNet-style decoder and aux heads.

    decoder: ``decoder(stage_features)`` with the S stage outputs as 1 x C_s x H_s x W_s (NCHW),
             returning 1 x K x gh x gw logits on the stage-1 grid; None: training-free segments
             (cosine k-means of the final, normed features, like the plain-ViT adapter).
    aux:     {str(layer): module mapping Nk x C_stage tokens to Nk x K logits}.
    """

    def __init__(
        self,
        encoder: nn.Module,
        name: str,
        decoder: nn.Module | None = None,
        aux: nn.ModuleDict | None = None,
        class_names: tuple[str, ...] = (),
        palette: np.ndarray | None = None,
        segments: int = 6,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ):
        from timm.models.swin_transformer import SwinTransformer, WindowAttention

        if not isinstance(encoder, SwinTransformer):
            raise ParamError(f"{name} is not a timm SwinTransformer")
        for module in encoder.modules():
            # timm's own switch (TIMM_FUSED_ATTN=2 sets it; off by default for Swin as
            # "experimental"): the stock blocks then use the same fused attention kernel as the
            # subset path, so a wall-time comparison measures pruning, not a kernel choice.
            if isinstance(module, WindowAttention):
                module.fused_attn = True
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False) if decoder is not None else None
        self.aux = aux.eval().requires_grad_(False) if aux is not None else None
        self.name = name
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        gh, gw = (int(v) for v in encoder.patch_embed.grid_size)
        self.input_size = gh * self.patch_size
        self.num_prefix_tokens = 0
        self.embed_dim = int(encoder.layers[0].blocks[0].dim)
        self._where: list[tuple[int, int]] = [(s, j) for s, st in enumerate(encoder.layers) for j in range(len(st.blocks))]
        self.num_blocks = len(self._where)
        depths = [len(st.blocks) for st in encoder.layers]
        self.stage_ends = tuple(int(v) for v in np.cumsum(depths)[:-1])
        for s, st in enumerate(encoder.layers):
            sh, sw = gh >> s, gw >> s
            ws = st.blocks[0].window_size
            if sh % ws[0] or sw % ws[1] or (s and (sh * 2 != gh >> (s - 1) or sw * 2 != gw >> (s - 1))):
                raise ParamError(
                    f"{name}: stage {s + 1}'s {sh} x {sw} grid is not a multiple of its {ws[0]} x {ws[1]} window "
                    f"(choose an input size that is a multiple of {self.patch_size * ws[0] * 2 ** (len(depths) - 1)})"
                )
        self._native_window = max(int(v) for st in encoder.layers for b in st.blocks for v in b.window_size)
        self.aux_layers = tuple(sorted(int(k) for k in aux.keys())) if aux is not None else ()
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.palette = palette
        self.segments = int(segments)
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        self.mean = torch.tensor(mean or cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(std or cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self._decoder_macs: int | None = None

    # --- structure -----------------------------------------------------------------------------
    def num_params(self) -> int:
        mods = [m for m in (self.encoder, self.decoder, self.aux) if m is not None]
        return sum(p.numel() for m in mods for p in m.parameters())

    def stage_of(self, layer: int) -> int:
        """0-based stage of block ``layer`` (1-based)."""
        if not 1 <= layer <= self.num_blocks:
            raise ValueError(f"layer {layer} is out of range for {self.name}: 1..{self.num_blocks}")
        return self._where[layer - 1][0]

    def layer_label(self, layer: int) -> str:
        s, j = self._where[layer - 1]
        return f"stage {s + 1}, block {j + 1}"

    def _block(self, layer: int) -> nn.Module:
        s, j = self._where[layer - 1] if 1 <= layer <= self.num_blocks else (None, None)
        if s is None:
            raise ValueError(f"layer {layer} is out of range for {self.name}: 1..{self.num_blocks}")
        return self.encoder.layers[s].blocks[j]

    def block_kind(self, layer: int) -> BlockKind:
        return "window"

    def grid_at(self, layer: int, grid: tuple[int, int]) -> tuple[int, int]:
        s = self.stage_of(layer)
        return (grid[0] >> s, grid[1] >> s)

    def dim_at(self, layer: int) -> int:
        return int(self._block(layer).dim)

    def default_layers(self) -> tuple[int, ...]:
        """LVTP's Swin setting: prune early in stage 2 (its first block), so the rest of the
        encoder runs on the kept tokens."""
        return (self.stage_ends[0] + 1,) if self.stage_ends and self.stage_ends[0] + 1 < self.num_blocks else (1,)

    # --- the same model at another input size (the "lower resolution" baseline) -----------------
    def stage_grids(self, size: int) -> list[int] | None:
        """Stage grid sides at a ``size`` px input, or None when this encoder cannot take it
        without padding a window: the side must halve exactly at every merge, and each stage grid
        must be a multiple of the stage's window or at most one window (timm then shrinks the
        window to the grid and turns the shift off, as it does for the last stage at 224 px)."""
        if size <= 0 or size % self.patch_size:
            return None
        g, depth = size // self.patch_size, len(self.encoder.layers)
        if g % (1 << (depth - 1)):
            return None
        grids = [g >> s for s in range(depth)]
        ws = self._native_window
        return grids if all(h % ws == 0 or h <= ws for h in grids) else None

    def at_input_size(self, size: int) -> "SwinBackbone":
        """This backbone fed ``size`` px inputs: a copy of the encoder re-sized with timm's own
        ``set_input_size`` (same weights; windows kept, except where a stage grid is smaller than
        its window: timm shrinks that window to the grid). A shrunk window's relative-position
        table is **cropped** to the offsets it can still see (what the full window gives those
        offsets), not resampled as timm's ``resize_rel_pos_bias_table`` does. Decoder and aux
        heads are shared (both work at any grid)."""
        if size == self.input_size:
            return self
        if self.stage_grids(size) is None:
            raise ParamError(f"{self.name} cannot take {size} px inputs: its stage grids must be multiples of its "
                             f"{self._native_window} x {self._native_window} window (or one window)")
        enc = copy.deepcopy(self.encoder)
        old = {id(b): (tuple(b.window_size), b.attn.relative_position_bias_table.detach().clone())
               for st in enc.layers for b in st.blocks}
        with warnings.catch_warnings():  # timm resamples the shrunk tables first (replaced below)
            warnings.simplefilter("ignore", UserWarning)
            enc.set_input_size(img_size=(size, size), window_size=self._native_window)
        for st in enc.layers:
            for b in st.blocks:
                (oh, ow), table = old[id(b)]
                nh, nw = b.window_size
                if (nh, nw) != (oh, ow):  # offsets -(n-1)..(n-1) sit at rows/cols o-n .. o+n-2 of the old table
                    t = table.view(2 * oh - 1, 2 * ow - 1, -1)[oh - nh: oh + nh - 1, ow - nw: ow + nw - 1]
                    b.attn.relative_position_bias_table = nn.Parameter(t.reshape(-1, t.shape[-1]).clone(), requires_grad=False)
        out = SwinBackbone(enc, f"{self.name}@{size}px", decoder=self.decoder, aux=self.aux, class_names=self.class_names,
                           palette=self.palette, segments=self.segments, mean=tuple(self.mean.flatten().tolist()),
                           std=tuple(self.std.flatten().tolist()))
        out.weights, out.weights_file = getattr(self, "weights", None), getattr(self, "weights_file", None)
        return out

    # --- forward pieces ------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        return prepare_square(image, self.input_size, self.patch_size, self.mean, self.std)

    def embed(self, prep: Prepared) -> Tensor:
        """Patch embedding (conv + norm) -> 1 x N x C on the stage-1 grid (row-major)."""
        return self.encoder.patch_embed(prep.pixels).flatten(1, 2)

    def run_block(
        self, layer: int, x: Tensor, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False
    ) -> BlockOutput:
        """x: 1 x N x C on ``grid`` (the grid of block ``layer``'s stage; ``kept_idx`` None: timm's
        block) or 1 x Nk x C, the kept tokens in ``kept_idx`` order (subset path)."""
        block = self._block(layer)
        if kept_idx is not None and kept_idx.numel() == 0:  # every token left (e.g. all exited): nothing runs
            return BlockOutput(x=x, received=x.new_zeros(0) if want_attn else None)
        if kept_idx is not None:
            return run_swin_block_subset(block, x, kept_idx, grid, want_attn)
        gh, gw = grid
        out = block(x.reshape(1, gh, gw, -1)).reshape(1, gh * gw, -1)
        received = None
        if want_attn:  # statistics recomputed from the block's weights; the output stays timm's
            _, received = subset_window_attention(block, block.norm1(x[0]), torch.arange(gh * gw), grid, True, False)
        return BlockOutput(x=out, received=received)

    def downsample(self, layer: int, full: Tensor, alive: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """timm's PatchMerging of the stage after ``layer`` on the full grid 1 x N x C (frozen
        features of pruned tokens included) -> (1 x N/4 x 2C, N/4 bool alive, grid / 2)."""
        merge = self.encoder.layers[self.stage_of(layer) + 1].downsample
        gh, gw = grid
        out = merge(full.reshape(1, gh, gw, -1))
        return out.flatten(1, 2), merged_alive(alive, grid), (gh // 2, gw // 2)

    def downsample_alive(self, layer: int, alive: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        return merged_alive(alive, grid), (grid[0] // 2, grid[1] // 2)

    def downsample_macs(self, layer: int, grid: tuple[int, int]) -> int:
        merge = self.encoder.layers[self.stage_of(layer) + 1].downsample
        return linear_macs(merge, (grid[0] // 2) * (grid[1] // 2))

    def merge_window(self, layer: int) -> tuple[int, int] | None:
        """ToMe on Swin merges within the stage's (unshifted) attention windows (docs/methods/swin.md)."""
        return tuple(int(v) for v in self._block(layer).window_size)

    def aux_logits(self, layer: int, patch_tokens: Tensor) -> Tensor | None:
        if self.aux is None or str(layer) not in self.aux:
            return None
        return self.aux[str(layer)](patch_tokens)[:, :, None]

    def aux_macs(self, layer: int, n_tokens: int) -> int:
        return linear_macs(self.aux[str(layer)], n_tokens) if self.aux is not None and str(layer) in self.aux else 0

    def _stage_maps(self, stage_outputs: list[Tensor], final: Tensor, grid: tuple[int, int]) -> list[Tensor]:
        """Per-stage full grids 1 x N_s x C_s -> 1 x C_s x H_s x W_s (NCHW), stage 1 first."""
        maps = []
        for s, t in enumerate([*stage_outputs, final]):
            hs, ws = grid[0] >> s, grid[1] >> s
            maps.append(t.reshape(1, hs, ws, -1).permute(0, 3, 1, 2))
        return maps

    @torch.no_grad()
    def decode(
        self, patch_grid: Tensor, prefix: Tensor, prep: Prepared, exit_logits=None, exited=None,
        stage_outputs: list[Tensor] | None = None,
    ) -> Segmentation:
        """Final-stage full grid 1 x N_S x C_S (+ the earlier stages' full grids, pruned tokens
        frozen, for a decoder's skips) -> segmentation at the original size. ``exited`` (N bool)
        and ``exit_logits`` (N x K x 1) are on the stage-1 grid (``prune_viz.exits``)."""
        oh, ow = prep.orig_hw
        if self.decoder is None:
            feats = self.encoder.norm(patch_grid)[0]
            labels, _ = cosine_kmeans(feats, self.segments, seed=0)
            g = self.grid_at(self.num_blocks, prep.grid)
            full = cv2.resize(labels.view(g).numpy().astype(np.int32), (ow, oh), interpolation=cv2.INTER_NEAREST)
            return Segmentation(labels=full.astype(np.int32), kind="segments")
        if stage_outputs is None or len(stage_outputs) != len(self.stage_ends):
            raise ValueError(f"{self.name}'s decoder needs the {len(self.stage_ends)} earlier stage outputs")
        logits = self.decoder(self._stage_maps(stage_outputs, patch_grid, prep.grid))  # 1 x K x gh x gw
        up = F.interpolate(logits.float(), size=(oh, ow), mode="bilinear", align_corners=False)[0]
        token_logits = logits[0].flatten(1).T  # N x K
        if exited is not None and exit_logits is not None:
            # Early exits (on the stage-1 grid, however coarse the exiting token was): their
            # cells' pixels take the exit logits unblended; the decoder's output there is unused.
            up = exit_pixels(exited, exit_logits, up, prep.grid)
            token_logits = torch.where(exited[:, None], exit_logits.float().mean(-1).to(token_logits.dtype), token_logits)
        labels = argmax_channels(up, torch.int32).numpy()
        return Segmentation(labels=labels, kind="semantic", class_names=self.class_names, palette=self.palette,
                            token_logits=token_logits)

    # --- MACs ----------------------------------------------------------------------------------
    def embed_macs(self, prep: Prepared) -> int:
        gh, gw = prep.grid
        return conv_macs(self.encoder.patch_embed.proj, gh, gw)

    def block_macs(self, layer: int, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False) -> int:
        """Exactly what ``run_block`` multiplies-and-adds (see :func:`.swin_attention.swin_block_macs`).
        want_attn on the full path: qkv and QK^T recomputed for the statistics; on the subset
        path the statistics come from probabilities it computes anyway (+0)."""
        block = self._block(layer)
        macs = swin_block_macs(block, kept_idx, grid)
        if want_attn and kept_idx is None:
            macs += swin_block_macs(block, torch.arange(grid[0] * grid[1]), grid, with_output=False)
        return macs

    def decode_macs(self, prep: Prepared) -> int:
        if self.decoder is None:
            g = self.grid_at(self.num_blocks, prep.grid)
            return kmeans_macs(g[0] * g[1], self.segments, self.dim_at(self.num_blocks))
        if self._decoder_macs is None:  # measured once on a meta copy (shapes only, instant)
            meta = copy.deepcopy(self.decoder).to("meta")
            gh, gw = prep.grid
            feats = [torch.zeros(1, self.dim_at(e), gh >> s, gw >> s, device="meta")
                     for s, e in enumerate([*self.stage_ends, self.num_blocks])]
            self._decoder_macs, _ = measure_macs(lambda: meta(feats))
        return self._decoder_macs


def build_swin(
    model_name: str, input_size: int | None = None, window_size: int = DEFAULT_WINDOW, checkpoint: str | None = None,
    pretrained: bool = False,
) -> SwinBackbone:
    """``timm:swin_*`` at ``input_size`` (default 512) with ``window_size`` windows: random weights,
    a local checkpoint (its relative-position tables must match the window), or timm's hub."""
    import timm

    size = int(input_size or DEFAULT_SIZE)
    try:
        model = timm.create_model(model_name, pretrained=pretrained and checkpoint is None, num_classes=0,
                                  img_size=size, window_size=window_size)
    except (RuntimeError, TypeError, AssertionError) as exc:
        raise CheckpointError(f"could not create timm model '{model_name}' at {size} px: {exc}") from None
    if checkpoint:
        state = {k: v for k, v in load_state_dict(checkpoint).items() if not k.startswith("head.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{Path(checkpoint).name} does not match timm model '{model_name}': {str(exc).splitlines()[1].strip()}") from None
        missing = [k for k in missing if not k.endswith(("relative_position_index", "attn_mask"))]
        if missing or unexpected:
            raise CheckpointError(f"{Path(checkpoint).name} does not match timm model '{model_name}' "
                                  f"(missing {len(missing)} keys, unexpected {len(unexpected)})")
    backbone = SwinBackbone(model, f"timm:{model_name}")
    backbone.weights = Path(checkpoint).name if checkpoint else ("timm pretrained" if pretrained else "random weights")
    backbone.weights_file = str(checkpoint) if checkpoint else None
    return backbone


def from_swin_unet(model: nn.Module, name: str) -> SwinBackbone:
    """A Swin-UNet segmenter (``.encoder`` a timm SwinTransformer, ``.decoder(stage_features)``,
    ``.aux`` per-token heads keyed by str(layer), ``.cfg`` with classes, palette, mean, std:
    the shipped ``demo_swin``) behind the prune_viz protocol."""
    cfg = model.cfg
    backbone = SwinBackbone(model.encoder, name, decoder=model.decoder, aux=model.aux, class_names=tuple(cfg.classes),
                            palette=np.asarray(cfg.palette, dtype=np.uint8), mean=tuple(cfg.mean), std=tuple(cfg.std))
    backbone.weights = getattr(model, "weights", "random weights")
    backbone.weights_file = getattr(model, "weights_file", None)
    return backbone


def is_swin_name(model_name: str) -> bool:
    """Whether a timm model name is built by this adapter (timm's ``swin_*`` family, not v2 / s3)."""
    return model_name.startswith("swin_") and not model_name.startswith(("swinv2", "swin_s3"))
