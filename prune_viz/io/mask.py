"""Ground-truth masks: label images or colour-coded RGB, validated against the classes."""

from __future__ import annotations

import numpy as np

from .guards import InputError, _Raw

_MASK_ASPECT_TOLERANCE: float = 0.01


def _check_palette(palette: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    if palette is None:
        return None
    pal = np.asarray(palette)
    if pal.shape != (num_classes, 3):
        raise ValueError(f"palette must be num_classes x 3 = {num_classes} x 3, got {pal.shape}")
    if pal.min() < 0 or pal.max() > 255:
        raise ValueError("palette values must be 0..255")
    pal = pal.astype(np.uint8)
    if len({tuple(c) for c in pal.tolist()}) != num_classes:
        raise ValueError("palette colours must be distinct")
    return pal


def _mask_to_ids(raw: _Raw, num_classes: int, palette: np.ndarray | None, notices: list[str]) -> np.ndarray:
    arr = raw.array
    channels = arr.shape[2]
    if channels == 1:
        return _ids_from_labels(arr[..., 0], num_classes, notices)
    if channels != 3:
        raise InputError(
            f"the mask has {channels} channels; expected a single-channel label image "
            f"or an RGB colour-coded mask"
        )
    if arr.dtype != np.uint8:
        raise InputError(f"colour-coded masks must be 8-bit RGB; this one is {arr.dtype}")
    return _ids_from_colours(arr, num_classes, palette, raw.fmt, notices)


def _present_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit labels is much faster than np.unique."""
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2:
        counts = np.bincount(values.ravel(), minlength=1)
        return np.flatnonzero(counts)
    return np.unique(values)


def _ids_from_labels(values: np.ndarray, num_classes: int, notices: list[str]) -> np.ndarray:
    """Validate class ids in a single-channel mask; 255 (ignore) is kept as it is."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all() or not np.array_equal(values, np.round(values)):
            raise InputError(f"the mask has non-integer values; expected class ids 0..{num_classes - 1} (255 = ignore)")
    present = _present_values(values)
    bad = [v for v in present.tolist() if (v < 0 or v >= num_classes) and v != 255]
    if bad:
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in bad[:8])
        more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
        raise InputError(
            f"the mask has label values {shown}{more} that are not classes 0..{num_classes - 1} "
            f"(255 = ignore)"
        )
    if num_classes == 2 and 255 in present.tolist() and 1 not in present.tolist():
        notices.append(
            "the mask has only values 0 and 255: 255 is read as 'ignore'; if it marks the "
            "foreground, save the mask with values 0 and 1"
        )
    return values.astype(np.int32)


def _ids_from_colours(
    rgb: np.ndarray, num_classes: int, palette: np.ndarray | None, fmt: str, notices: list[str]
) -> np.ndarray:
    """Match every pixel's colour exactly against ``palette`` (row i = colour of class i)."""
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    if palette is None:
        if grey:
            notices.append("the mask is grey stored as RGB: using its values as class ids")
            return _ids_from_labels(rgb[..., 0], num_classes, notices)
        raise InputError(
            "the mask is a colour image but no colour palette is known for these classes; "
            f"give a single-channel label mask (values 0..{num_classes - 1})"
        )
    keys = _colour_keys(rgb)
    pal_keys = _colour_keys(palette[None])[0]
    order = np.argsort(pal_keys)
    sorted_keys = pal_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, num_classes - 1)
    matched = sorted_keys[pos] == keys
    if matched.all():
        return order[pos].astype(np.int32)
    if grey:
        notices.append("the mask is grey stored as RGB: using its values as class ids")
        return _ids_from_labels(rgb[..., 0], num_classes, notices)
    unknown, counts = np.unique(keys[~matched], return_counts=True)
    top = unknown[np.argsort(-counts, kind="stable")[:3]]
    shown = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in top.tolist())
    hint = " (JPEG compression changes colours: save masks as PNG)" if fmt == "JPEG" else ""
    raise InputError(
        f"the mask has {unknown.size} colour{'s' if unknown.size != 1 else ''} that "
        f"{'are' if unknown.size != 1 else 'is'} not in the class palette, e.g. {shown}{hint}"
    )


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W int32 key 0xRRGGBB, so colours compare as single numbers."""
    c = rgb.astype(np.int32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _fit_mask(ids: np.ndarray, shape: tuple[int, int], notices: list[str]) -> np.ndarray:
    """Resize a same-aspect mask with nearest neighbour (class ids must never be blended)."""
    h, w = ids.shape
    height, width = shape
    if (h, w) == (height, width):
        return ids
    if abs((w / h) / (width / height) - 1.0) > _MASK_ASPECT_TOLERANCE:
        raise InputError(
            f"the mask is {w}x{h} but the image is {width}x{height}; they must be the same size "
            f"(or at least the same aspect ratio)"
        )
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.intp), w - 1)
    notices.append(f"mask resized from {w}x{h} to {width}x{height} (nearest neighbour)")
    return np.ascontiguousarray(ids[rows[:, None], cols[None, :]])
