"""The server owner's own models: a folder of checkpoints, each with a small sidecar.

``$PRUNE_VIZ_MODELS`` names the folder (unset: no registered models). Every ``NAME.json`` or
``NAME.toml`` in it (not in subfolders) describes one model, offered as ``models:NAME`` in the
app's backbone dropdown, the CLI (``--backbone models:NAME``) and the API::

    {"family": "timm_seg", "checkpoint": "city.safetensors", "timm_name": "vit_small_patch16_224",
     "input_size": 224, "classes": ["road", "car"], "palette": [[128, 64, 128], [0, 0, 142]],
     "note": "ViT-S + linear head, trained on my street scenes"}

Fields: ``family`` (sam_vit_b | sam_vit_l | sam_vit_h | timm | demo | timm_seg),
``checkpoint`` (a file in the folder), ``timm_name`` (timm families), ``input_size`` (px, not
for demo), ``classes`` + ``palette`` and ``aux_layers`` (timm_seg), ``mean`` / ``std``
(timm families), ``config`` (demo: its DemoConfig JSON, default ``<checkpoint stem>.json``),
``note`` (shown in the dropdown and under it).

Scanning reads the sidecars only (no weights, no hashing, no network). A sidecar that cannot be
used gets one message, logged at the scan and shown when the model is chosen; the others still
load. The scan is redone when the folder's listing changes (a file added, renamed, removed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11 (a Space's older default): JSON sidecars only
    tomllib = None  # type: ignore[assignment]

import torch

from ..errors import ParamError, echo, shorten
from .base import Backbone

log = logging.getLogger("prune_viz")

MODELS_PREFIX = "models:"
MODELS_ENV = "PRUNE_VIZ_MODELS"
FAMILIES = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "timm", "demo", "timm_seg")
TIMM_FAMILIES = ("timm", "timm_seg")
MAX_SIDECAR_BYTES = 64 * 1024
MAX_INPUT = 2048  # px per side, as params.MAX_INPUT_SIZE
MAX_NOTE = 500
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# field -> (families that take it (None: all), what it must be)
FIELDS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "family": (None, "text"),
    "checkpoint": (None, "text"),
    "note": (None, "text"),
    "timm_name": (TIMM_FAMILIES, "text"),
    "input_size": (("sam_vit_b", "sam_vit_l", "sam_vit_h", "timm", "timm_seg"), "whole number"),
    "classes": (("timm_seg",), "list of names"),
    "palette": (("timm_seg",), "list of [r, g, b]"),
    "aux_layers": (("timm_seg",), "list of whole numbers"),
    "mean": (TIMM_FAMILIES, "3 numbers"),
    "std": (TIMM_FAMILIES, "3 numbers"),
    "config": (("demo",), "text"),
}


class SidecarError(ParamError):
    """A sidecar that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered model, as its sidecar describes it (paths resolved inside the folder)."""

    name: str
    sidecar: Path
    family: str
    checkpoint: Path
    timm_name: str = ""
    input_size: int | None = None
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    aux_layers: tuple[int, ...] = ()
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    config: Path | None = None
    note: str = ""

    @property
    def backbone_name(self) -> str:
        return MODELS_PREFIX + self.name


@dataclass(frozen=True)
class Registry:
    """What a scan found: usable models and, per NAME, the one message of an unusable sidecar."""

    folder: Path | None
    models: dict[str, ModelSpec]
    problems: dict[str, str]


def models_dir() -> Path | None:
    """``$PRUNE_VIZ_MODELS``, or None (no registered models) when unset or empty."""
    env = os.environ.get(MODELS_ENV, "").strip()
    return Path(env).expanduser() if env else None


def registry() -> Registry:
    """The registered models of ``$PRUNE_VIZ_MODELS`` (rescanned when the folder's listing
    changes; a listing costs one ``stat``)."""
    folder = models_dir()
    if folder is None:
        return Registry(None, {}, {})
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        stamp = -1
    return _scan_cached(str(folder), stamp)


@functools.lru_cache(maxsize=8)
def _scan_cached(folder: str, stamp: int) -> Registry:
    return scan(Path(folder))


def scan(folder: Path) -> Registry:
    """Read every sidecar in ``folder``; log one warning per unusable one."""
    if not folder.is_dir():
        log.warning("%s=%s is not a folder; no registered models", MODELS_ENV, folder)
        return Registry(folder, {}, {})
    models: dict[str, ModelSpec] = {}
    problems: dict[str, str] = {}
    sidecars = sorted(p for p in folder.iterdir()
                      if p.suffix in (".json", ".toml") and not p.name.startswith(".") and p.is_file())
    stems = [p.stem for p in sidecars]
    for path in sidecars:
        try:
            if stems.count(path.stem) > 1:
                raise SidecarError(f"{path.stem}.json and {path.stem}.toml both describe models:{path.stem}: keep one")
            spec = parse_sidecar(path, folder)
            models[spec.name] = spec
        except SidecarError as exc:
            problems[path.stem] = str(exc)
    # A demo's DemoConfig JSON named by another sidecar is not a sidecar of its own.
    configs = {spec.config.resolve() for spec in models.values() if spec.config is not None}
    for path in sidecars:
        if path.resolve() in configs:
            problems.pop(path.stem, None)
    for problem in problems.values():
        log.warning("model registry: %s", problem)
    return Registry(folder, models, problems)


def _read(path: Path) -> dict[str, Any]:
    where = path.name
    size = path.stat().st_size
    if size > MAX_SIDECAR_BYTES:
        raise SidecarError(f"{where}: {size:,} bytes; a sidecar is at most {MAX_SIDECAR_BYTES:,}")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix != ".json" and tomllib is None:
        raise SidecarError(f"{where}: TOML sidecars need Python 3.11 or newer; write it as {path.stem}.json")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise SidecarError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except getattr(tomllib, "TOMLDecodeError", ValueError) as exc:
        raise SidecarError(f"{where}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise SidecarError(f"{where}: must hold one object of fields (family, checkpoint, ...)")
    return data


def _inside(folder: Path, value: str, field: str, where: str) -> Path:
    """``value`` as a file inside ``folder`` (links resolved); refused when it leaves it."""
    path = Path(value)
    root = folder.resolve()
    target = (folder / path).resolve()
    if path.is_absolute() or not target.is_relative_to(root):
        raise SidecarError(f"{where}: {field} {echo(value)} is outside the models folder; name a file inside it")
    if not target.is_file():
        raise SidecarError(f"{where}: {field} {echo(value)} not found next to the sidecar")
    return target


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(field: str, value: Any, where: str) -> None:
    kind = FIELDS[field][1]
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    ok = {
        "text": lambda: isinstance(value, str) and value.strip() != "",
        "whole number": lambda: _whole(value),
        "list of names": lambda: isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value),
        "list of [r, g, b]": lambda: isinstance(value, list) and value and all(
            isinstance(c, list) and len(c) == 3 and all(_whole(x) and 0 <= x <= 255 for x in c) for c in value),
        "list of whole numbers": lambda: isinstance(value, list) and all(_whole(v) and v >= 1 for v in value),
        "3 numbers": lambda: isinstance(value, list) and len(value) == 3 and all(number(v) for v in value),
    }[kind]()
    if not ok:
        detail = " of 0..255 each" if kind == "list of [r, g, b]" else (" >= 1" if kind == "list of whole numbers" else "")
        raise SidecarError(f"{where}: {field} must be a {kind}{detail}, got {echo(value, 80)}")


def parse_sidecar(path: Path, folder: Path) -> ModelSpec:
    """One sidecar -> ModelSpec; SidecarError (one message naming the file) when unusable."""
    where = f"{path.name}"
    name = path.stem
    if not NAME_RE.fullmatch(name):
        raise SidecarError(f"{where}: name the file with letters, digits, '_', '-', '.' (at most 64), as models:NAME")
    data = _read(path)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SidecarError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    family = data.get("family")
    if family not in FAMILIES:
        raise SidecarError(f"{where}: family must be one of {', '.join(FAMILIES)}; got {echo(family, 80)}")
    for field, value in data.items():
        _check_type(field, value, where)
        families = FIELDS[field][0]
        if families is not None and family not in families:
            raise SidecarError(f"{where}: {field} is not used by family {family} (only by {', '.join(families)})")
    if "checkpoint" not in data:
        raise SidecarError(f"{where}: checkpoint is missing (the weights file, next to the sidecar)")
    checkpoint = _inside(folder, data["checkpoint"], "checkpoint", where)
    if family in TIMM_FAMILIES:
        if "timm_name" not in data:
            raise SidecarError(f"{where}: timm_name is missing (the timm model, e.g. vit_small_patch16_224)")
        _check_timm_name(data["timm_name"], where)
    classes, palette = tuple(data.get("classes", ())), tuple(tuple(c) for c in data.get("palette", ()))
    if family == "timm_seg":
        if not classes or not palette:
            raise SidecarError(f"{where}: timm_seg needs classes and palette (one [r, g, b] per class)")
        if len(classes) != len(palette):
            raise SidecarError(f"{where}: classes has {len(classes)} names but palette {len(palette)} colours")
        if len(set(classes)) != len(classes):
            raise SidecarError(f"{where}: classes has repeated names")
    size = data.get("input_size")
    if size is not None and not 16 <= size <= MAX_INPUT:
        raise SidecarError(f"{where}: input_size must be from 16 to {MAX_INPUT} px, got {size}")
    if len(data.get("note", "")) > MAX_NOTE:
        raise SidecarError(f"{where}: note is longer than {MAX_NOTE} characters")
    config = None
    if family == "demo":
        config = _inside(folder, data.get("config", checkpoint.with_suffix(".json").name), "config", where)
        if config == path.resolve():
            raise SidecarError(f"{where}: the demo's config must be its own JSON, not this sidecar; name it in config")
    return ModelSpec(name, path, family, checkpoint, data.get("timm_name", ""), size, classes, palette,
                     tuple(sorted(set(data.get("aux_layers", ())))),
                     tuple(map(float, data["mean"])) if "mean" in data else None,
                     tuple(map(float, data["std"])) if "std" in data else None, config, data.get("note", ""))


def _check_timm_name(model_name: str, where: str) -> None:
    if any(c in model_name for c in ":/\\") or model_name.startswith("."):
        raise SidecarError(f"{where}: timm_name {echo(model_name)} must be a name from timm's registry (no hub or path)")
    from timm.models import is_model

    if not is_model(model_name):
        raise SidecarError(f"{where}: timm has no model called {echo(model_name)}")


def registered_spec(name: str) -> ModelSpec:
    """The spec of ``models:NAME``; ParamError with the sidecar's own message when it is
    unusable, or the registered names when there is no such model."""
    short = name[len(MODELS_PREFIX):]
    reg = registry()
    if short in reg.models:
        return reg.models[short]
    if short in reg.problems:
        raise SidecarError(f"models:{short} cannot be used: {reg.problems[short]}")
    if reg.folder is None:
        raise ParamError(f"{echo(name)}: no models are registered on this server ({MODELS_ENV} is not set)")
    if not reg.folder.is_dir():
        raise ParamError(f"{echo(name)}: no models are registered on this server ({MODELS_ENV} is not a folder)")
    known = ", ".join(MODELS_PREFIX + n for n in reg.models) or "none"
    raise ParamError(f"{echo(name)}: no such registered model; registered: {known}")


def model_choices() -> list[tuple[str, str]]:
    """(label, value) for the backbone dropdown: usable models with their notes, unusable ones
    saying so (choosing one shows its message)."""
    reg = registry()
    out = [(f"{spec.backbone_name} — {shorten(spec.note or spec.family, 80)}", spec.backbone_name)
           for spec in reg.models.values()]
    out += [(f"{MODELS_PREFIX}{n} — cannot be used (choose it to see why)", MODELS_PREFIX + n) for n in reg.problems]
    return sorted(out, key=lambda c: c[1])


def model_note(name: str) -> str:
    """Markdown under the backbone choice for ``models:NAME``."""
    spec = registered_spec(name)
    note = f" {spec.note}" if spec.note else ""
    return f"Registered model (family {spec.family}, {spec.checkpoint.name}, from {spec.sidecar.name}).{note}"


def _build_demo_family(spec: ModelSpec, size: int | None) -> Backbone:
    from .demo import build_demo

    return build_demo(spec.checkpoint, spec.config)


def _build_sam_family(spec: ModelSpec, size: int | None) -> Backbone:
    from .sam import build_sam

    return build_sam(spec.family, checkpoint=str(spec.checkpoint), img_size=size or 1024)


def _build_timm_family(spec: ModelSpec, size: int | None) -> Backbone:
    from .vit import build_timm

    backbone = build_timm(spec.timm_name, input_size=size, checkpoint=str(spec.checkpoint), checkpoint_size=spec.input_size)
    if spec.mean is not None:
        backbone.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    if spec.std is not None:
        backbone.std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return backbone


def _build_timm_seg_family(spec: ModelSpec, size: int | None) -> Backbone:
    from .timm_seg import build_timm_seg

    return build_timm_seg(spec.backbone_name, spec.checkpoint, spec.timm_name, spec.classes, spec.palette,
                          spec.input_size, spec.aux_layers, spec.mean, spec.std, run_size=size)


# family -> builder from (spec, input size to run at). A new family (e.g. a Swin adapter) adds
# its builder here, its name to FAMILIES and the fields it takes to FIELDS.
FAMILY_BUILDERS: dict[str, Callable[[ModelSpec, "int | None"], Backbone]] = {
    "sam_vit_b": _build_sam_family, "sam_vit_l": _build_sam_family, "sam_vit_h": _build_sam_family,
    "timm": _build_timm_family, "demo": _build_demo_family, "timm_seg": _build_timm_seg_family,
}


def build_registered(name: str, checkpoint: str | None = None, input_size: int | None = None) -> Backbone:
    """Build ``models:NAME`` from its sidecar. The sidecar's ``input_size`` is the size its
    checkpoint was made for; ``input_size`` (e.g. the CLI's ``--input-size``) runs it at another
    (timm's resampling of the position embedding)."""
    spec = registered_spec(name)
    if checkpoint:
        raise ParamError(f"{name} brings its own checkpoint ({spec.checkpoint.name}); drop --checkpoint")
    backbone = FAMILY_BUILDERS[spec.family](spec, input_size or spec.input_size)
    backbone.name = spec.backbone_name
    return backbone
