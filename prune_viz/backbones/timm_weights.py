"""timm's pretrained weights, fetched only when a user asks (the app's download button, the
CLI's ``--download``), kept in the checkpoint folder, and read from there offline.

The file comes from the Hugging Face Hub repository timm's own configuration names
(``pretrained_cfg.hf_hub_id``, e.g. ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``) as
``model.safetensors``, downloaded with progress like the SAM checkpoints
(:func:`prune_viz.checkpoints.download`) into ``<checkpoint folder>/timm/<model>.safetensors``.
No sha256 is published in timm's configuration, so none is checked; safetensors holds tensors
only, and the report carries the file's own sha256. timm's hub download is never called: it
would touch the network on its own schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from ..checkpoints import CheckpointError, cache_dir, download, load_state_dict
from ..errors import ParamError

HUB = "https://huggingface.co"


def pretrained_url(model_name: str) -> str:
    """Where timm's default pretrained weights of ``model_name`` (optionally ``name.tag``) live.
    ParamError when timm names none on the Hub."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ParamError(f"timm names no pretrained weights on the Hugging Face Hub for {model_name}")
    return f"{HUB}/{hub_id}/resolve/main/model.safetensors"


def pretrained_path(model_name: str) -> Path:
    """Where the pretrained weights of ``model_name`` are kept (they may not be there)."""
    return cache_dir() / "timm" / f"{model_name.replace('/', '_')}.safetensors"


def cached_pretrained(model_name: str) -> Path | None:
    """The downloaded pretrained weights of ``model_name``, or None (no network)."""
    path = pretrained_path(model_name)
    return path if path.is_file() else None


def download_pretrained(model_name: str, progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch timm's pretrained weights (needs the network; CheckpointError offline)."""
    return download(pretrained_url(model_name), pretrained_path(model_name), None, progress=progress)


def load_pretrained(model: nn.Module, path: str | Path, model_name: str) -> None:
    """Load a downloaded timm checkpoint into ``model`` (timm's own key filter, no head)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_state_dict(path), model)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{Path(path).name} does not match timm model '{model_name}': {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise CheckpointError(f"{Path(path).name} does not match timm model '{model_name}' "
                              f"(missing {missing[:2]}, unexpected {unexpected[:2]}); delete it and download again")
