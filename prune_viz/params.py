"""The one door that turns user input into a validated :class:`~prune_viz.engine.Plan`.

The app, its API, the CLI and the benchmark all build plans here (one utility per rule, like
ToMe's ``parse_r``): a method's parameter names, its default layers on a backbone, whether it
can run there, which values it takes. Anything wrong becomes a :class:`~prune_viz.errors.ParamError`
(a ``ValueError``) whose message can be shown to the user as is; echoed values are cut to 200
characters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .backbones import BackboneFacts
from .errors import ParamError, echo, shorten
from .backbones.base import Backbone
from .engine import Plan, validate_plan
from .methods import METHODS, get_method
from .methods.base import MethodSpec

DEFAULT_METHOD = "lvtp" if "lvtp" in METHODS else "random"
MAX_SEED = 2**32 - 1  # numpy's and our generators' range; larger ones overflowed inside torch
MAX_LAYERS_TEXT = 200  # "1,2,...,32" is 84 characters; more is not a layer list
MAX_INPUT_SIZE = 2048  # px per side: SAM's global attention at 2048 already holds 16384 tokens


def param_names(spec: MethodSpec) -> tuple[str, ...]:
    """The fields of the method's params dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(spec.params_cls))


def default_layers(spec: MethodSpec, backbone: Backbone | BackboneFacts) -> tuple[int, ...]:
    """Where ``spec`` prunes on ``backbone`` when the user does not say: the method's own
    schedule, else the backbone's; a method that needs auxiliary heads keeps only the layers
    that have one (the first head's layer when none of them does)."""
    own = backbone.default_layers() if isinstance(backbone, Backbone) else backbone.default_layers
    layers = spec.default_layers(backbone.num_blocks) if spec.default_layers else tuple(own)
    if spec.needs_aux and backbone.aux_layers:
        layers = tuple(layer for layer in layers if layer in backbone.aux_layers) or tuple(backbone.aux_layers[:1])
    return tuple(layers)


def method_availability(backbone: Backbone | BackboneFacts) -> dict[str, str | None]:
    """Method name -> None when usable on this backbone, else the reason it is not."""
    return {name: spec.unmet_need(backbone.name, tuple(backbone.aux_layers)) for name, spec in METHODS.items()}


def parse_layers(text: str | list | tuple | None) -> tuple[int, ...] | None:
    """'3,6,8' / [3, 6, 8] / None -> sorted distinct layers (None or '' = the default; ',' is refused)."""
    if text is None or (isinstance(text, str) and text.strip() == ""):
        return None
    if len(text) > MAX_LAYERS_TEXT:
        raise ParamError(f"layers: at most {MAX_LAYERS_TEXT} characters, got {len(text):,} (e.g. 3,6,8)")
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [int(str(p).strip()) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise ParamError(f"layers must be integers like 3,6,8, got {echo(text)}") from None
    if not values:
        if isinstance(text, str):  # "," or " , ": something was typed, but no layer
            raise ParamError(f"layers must be integers like 3,6,8, got {echo(text)}")
        return None
    return tuple(sorted(set(values)))


def method_values(method: str, values: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """Keep only the values the method's params take (``strict``: refuse the others, as the
    API does); reject NaN / infinite numbers early. ``None`` means "the default"."""
    spec = get_method(method)
    names = param_names(spec)
    unknown = sorted(set(values) - set(names))
    if strict and unknown:
        raise ParamError(f"{method} has no parameter {shorten(', '.join(unknown))}; it takes: {', '.join(sorted(names)) or 'none'}")
    out = {}
    for key, value in values.items():
        if key not in names or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(f"{key} must be a finite number, got {value}")
        out[key] = value
    return out


def make_plan(
    backbone: Backbone,
    method: str,
    layers: Any,
    seed: Any = 0,
    values: dict[str, Any] | None = None,
    strict: bool = False,
) -> Plan:
    """Method name + raw values + layers -> validated Plan (ParamError with the reason).

    Availability is checked first (a clearer message than a failed run). ``layers``: text,
    a list, or None / '' for :func:`default_layers`; an empty list is a choice of no layer and
    refused. ``seed``: a non-negative whole number (a float like 3.0 from a number field is
    accepted). ``strict``: parameters the method does not take are refused, not ignored.
    """
    spec = get_method(method)
    reason = spec.unmet_need(backbone.name, tuple(backbone.aux_layers))
    if reason:
        raise ParamError(f"{method} cannot run on {backbone.name}: it {reason}")
    if isinstance(layers, (list, tuple)) and not layers:
        raise ParamError("choose at least one pruning layer")
    seed = 0 if seed is None else seed
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ParamError(f"seed must be a whole number from 0 to {MAX_SEED}, got {echo(seed)}")
    try:
        params = spec.params_cls(**method_values(method, values or {}, strict))
    except TypeError as exc:
        raise ParamError(f"bad parameter for {method}: {exc}") from None
    except ValueError as exc:  # the params dataclass checks each value against its range
        raise ParamError(str(exc)) from None
    chosen = parse_layers(layers)
    plan = Plan(spec, params, chosen if chosen is not None else default_layers(spec, backbone), seed)
    validate_plan(backbone, plan)
    return plan


def plan_params(method: str, stored: dict[str, Any]) -> Any:
    """A report's ``params`` (JSON: tuples became lists) -> the method's params object again."""
    spec = get_method(method)
    names = param_names(spec)
    return spec.params_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in names})
