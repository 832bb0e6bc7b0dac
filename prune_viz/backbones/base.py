"""One protocol for every backbone family (demo, timm, SAM).

The engine owns the loop over blocks and the token bookkeeping; an adapter owns everything
that depends on the architecture: how an image becomes tokens, how one block runs on a subset
of tokens, how the full token grid becomes a segmentation, and what each of those costs in MACs.

Token layout everywhere: ``x`` is ``1 x (P + Nk) x C`` with the P prefix tokens first, then the
Nk alive patch tokens in the order of ``kept_idx`` (row-major positions on the gh x gw grid,
sorted). ``kept_idx=None`` means "the full grid, run the unmodified module"; a tensor means
"run the subset code path", even when it happens to hold every position, so that rate-0 runs
exercise (and test) the pruned path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np
import torch
from torch import Tensor

BlockKind = Literal["window", "global", "plain"]


@dataclass
class Prepared:
    """An image made ready for one backbone.

    pixels:  1 x 3 x H x W, normalised model input (H = gh * patch, W = gw * patch)
    image01: 3 x H x W in [0, 1], the same input before normalisation (for Sobel, drawing)
    valid_hw: (h, w) of the part of the input that is image, not padding (SAM pads bottom/right)
    orig_hw:  (h, w) of the original image; segmentations are returned at this size
    """

    pixels: Tensor
    image01: Tensor
    grid: tuple[int, int]
    valid_hw: tuple[int, int]
    orig_hw: tuple[int, int]


@dataclass
class Segmentation:
    """A dense prediction at the original image size.

    labels: H x W int32. For ``kind == "semantic"`` the values are class ids into
    ``class_names``; for ``"segments"`` they are anonymous segment ids (clusters, SAM masks;
    0 may mean "no segment"), which must be matched (Hungarian) before comparing two runs.
    token_logits: N x K float or None (per grid token), when the head is per-token.
    """

    labels: np.ndarray
    kind: Literal["semantic", "segments"]
    class_names: tuple[str, ...] = ()
    palette: np.ndarray | None = None
    token_logits: Tensor | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class BlockOutput:
    """x after the block, plus attention statistics when they were asked for.

    received: Nk mean attention received per alive patch token (over heads and queries); None
              where a class token makes ``cls_attn`` the statistic (timm)
    cls_attn: Nk attention from the first prefix token to each patch token (or None)
    """

    x: Tensor
    received: Tensor | None = None
    cls_attn: Tensor | None = None


def argmax_channels(maps: Iterable[Tensor], dtype: torch.dtype = torch.long) -> Tensor:
    """``x.argmax(0)`` for K x H x W scores, the same labels (the first maximum on ties).

    ``maps`` is the K x H x W tensor, or any iterable of its K H x W maps, so a decoder can
    produce them one at a time (the demo upsamples class by class: all 7 maps of a 4096 px image
    at once are 470 MB). Why not torch's argmax: over the outer dimension it walks memory with
    stride H*W and measured 28 ms for 7 x 512 x 512 (one thread); K passes of contiguous
    element-wise maxima take 3 ms."""
    maps = iter(maps)
    best = next(maps).clone()
    labels = torch.zeros(best.shape, dtype=dtype)
    for k, scores in enumerate(maps, start=1):
        better = scores > best  # strict: ties keep the lower index, as argmax does
        labels.masked_fill_(better, k)
        torch.maximum(best, scores, out=best)
    return labels


class Backbone(ABC):
    """Adapter interface. Subclasses set the attributes below in ``__init__``.

    The capabilities (``class_names`` .. ``weights``) are facts stated once, as timm's
    ``num_prefix_tokens`` is: callers read them instead of guessing from the backbone's name.
    """

    name: str
    patch_size: int
    num_blocks: int
    num_prefix_tokens: int
    embed_dim: int
    aux_layers: tuple[int, ...] = ()  # 1-based layers with an auxiliary head after them
    num_classes: int = 0  # semantic classes of the head (0 when the output is segments)
    class_names: tuple[str, ...] = ()  # num_classes names, () for segments
    palette: np.ndarray | None = None  # num_classes x 3 uint8 class colours, None for segments
    global_layers: tuple[int, ...] = ()  # 1-based blocks with global attention where others are windowed
    input_size: int | None = None  # side of the square model input in px
    supports_prompts: bool = False  # answers point / box prompts (``predict_masks``)
    weights: str = ""  # where the weights came from, in words (a file name, "random weights")
    # Provenance for reports (see .provenance): "pretrained" | "file" | "random" ("" = read ``weights``),
    # and the weights file on disk (hashed lazily for the report's ``file <sha256[:12]>``).
    weights_kind: str = ""
    weights_file: str | None = None
    # Hierarchical backbones (Swin): 1-based layers after which the grid coarsens (patch
    # merging); () for plain ViTs, whose grid and width never change.
    stage_ends: tuple[int, ...] = ()

    @abstractmethod
    def num_params(self) -> int:
        """Parameters of everything the backbone runs (heads included)."""

    @abstractmethod
    def block_kind(self, layer: int) -> BlockKind:
        """Kind of block ``layer`` (1-based)."""

    def default_layers(self) -> tuple[int, ...]:
        """Where to prune when the user does not say: a middle block."""
        return (self.num_blocks // 2,)

    @abstractmethod
    def prepare(self, image: np.ndarray) -> Prepared:
        """H x W x 3 uint8 RGB -> model input."""

    @abstractmethod
    def embed(self, prep: Prepared) -> Tensor:
        """Patch embedding (+ position, + prefix tokens): 1 x (P + N) x C."""

    @abstractmethod
    def run_block(
        self, layer: int, x: Tensor, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False
    ) -> BlockOutput:
        """Run block ``layer`` (1-based) on ``x`` (1 x (P + Nk) x C)."""

    def grid_at(self, layer: int, grid: tuple[int, int]) -> tuple[int, int]:
        """The token grid entering block ``layer`` when the input grid is ``grid`` (constant
        unless the backbone is hierarchical)."""
        return grid

    def dim_at(self, layer: int) -> int:
        """Channels of the tokens of block ``layer``."""
        return self.embed_dim

    def layer_label(self, layer: int) -> str:
        """How block ``layer`` is named in views ("layer 5"; "stage 2, block 3" on Swin)."""
        return f"layer {layer}"

    def downsample(self, layer: int, full: Tensor, alive: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Hierarchical backbones, after block ``layer`` in ``stage_ends``: the full grid
        1 x N x C (pruned tokens carry frozen features) and its N bool alive flags -> the next
        stage's full grid 1 x N' x C', its alive flags and its grid."""
        raise NotImplementedError(f"{self.name} has no stages")

    def downsample_alive(self, layer: int, alive: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """The alive flags and grid ``downsample`` returns, without the features (MAC estimates)."""
        raise NotImplementedError(f"{self.name} has no stages")

    def downsample_macs(self, layer: int, grid: tuple[int, int]) -> int:
        """MACs of ``downsample`` after block ``layer`` on ``grid``."""
        return 0

    def aux_logits(self, layer: int, patch_tokens: Tensor) -> Tensor | None:
        """Auxiliary head after block ``layer`` on Nk x C patch tokens -> Nk x K x S logits
        (S = sub-patch positions the head predicts per token, 1 for a token-level head)."""
        return None

    @abstractmethod
    def decode(
        self,
        patch_grid: Tensor,
        prefix: Tensor,
        prep: Prepared,
        exit_logits: Tensor | None = None,
        exited: Tensor | None = None,
    ) -> Segmentation:
        """Full grid features 1 x N x C (pruned tokens carry the features they had when dropped)
        and prefix tokens 1 x P x C -> segmentation. ``exited`` (N bool) marks tokens whose
        final prediction is fixed to ``exit_logits`` (N x K x S rows, as ``aux_logits``) by an
        early exit. Hierarchical backbones also get ``stage_outputs=``: the full grids
        (1 x N_s x C_s) after the last block of each earlier stage, for a decoder's skips."""

    # --- MACs (1 multiply-add = 1 MAC) -----------------------------------------------------
    @abstractmethod
    def embed_macs(self, prep: Prepared) -> int:
        """MACs of ``embed``."""

    @abstractmethod
    def block_macs(self, layer: int, kept_idx: Tensor | None, grid: tuple[int, int], want_attn: bool = False) -> int:
        """MACs of ``run_block`` for this token set (None = unmodified full-grid module)."""

    @abstractmethod
    def decode_macs(self, prep: Prepared) -> int:
        """MACs of ``decode``."""

    def aux_macs(self, layer: int, n_tokens: int) -> int:
        return 0

    def merge_window(self, layer: int) -> tuple[int, int] | None:
        """The tile (grid rows, cols) a merging method must keep each group inside after block
        ``layer`` (Swin: the stage's attention window); None: groups may span the grid."""
        return None

    # --- helpers shared by adapters ----------------------------------------------------------
    def split_prefix(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.num_prefix_tokens
        return x[:, :p], x[:, p:]
