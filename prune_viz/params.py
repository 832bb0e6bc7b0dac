"""Parameter validation in one place, used by the app, its API and the CLI.

Everything a user can set becomes a validated :class:`~prune_viz.engine.Plan` here, or a
``ValueError`` whose message can be shown to that user as is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .backbones import check_backbone_name
from .backbones.base import Backbone
from .engine import Plan, validate_plan
from .methods import METHODS, get_method


def parse_layers(text: str | list | tuple | None) -> tuple[int, ...] | None:
    """'3,6,8' / [3, 6, 8] / None -> sorted distinct layers (None or '' = the default; ',' is refused)."""
    if text is None or (isinstance(text, str) and text.strip() == ""):
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [int(str(p).strip()) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise ValueError(f"layers must be integers like 3,6,8, got '{text}'") from None
    if not values:
        if isinstance(text, str):  # "," or " , ": something was typed, but no layer
            raise ValueError(f"layers must be integers like 3,6,8, got '{text}'")
        return None
    return tuple(sorted(set(values)))


def method_values(spec_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Keep only the values the method's params take; reject NaN / infinite numbers early."""
    spec = get_method(spec_name)
    names = {f.name for f in dataclasses.fields(spec.params_cls)}
    out = {}
    for key, value in values.items():
        if key not in names or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        out[key] = value
    return out


def make_plan(backbone: Backbone, method: str, layers: Any, seed: int = 0, values: dict[str, Any] | None = None) -> Plan:
    """Method name + raw values + layers -> validated Plan (ValueError with the reason)."""
    spec = get_method(method)
    try:
        params = spec.params_cls(**method_values(method, values or {}))
    except TypeError as exc:
        raise ValueError(f"bad parameter for {method}: {exc}") from None
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    chosen = parse_layers(layers)
    if chosen is None:
        chosen = spec.default_layers(backbone.num_blocks) if spec.default_layers else backbone.default_layers()
    plan = Plan(spec, params, chosen, seed)
    validate_plan(backbone, plan)
    return plan


def method_availability(backbone: Backbone) -> dict[str, str | None]:
    """Method name -> None when usable on this backbone, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name, spec in METHODS.items():
        reason = None
        if spec.needs_aux and not backbone.aux_layers:
            reason = f"needs auxiliary heads, which {backbone.name} does not have (use the demo backbone)"
        out[name] = reason
    return out


__all__ = ["parse_layers", "make_plan", "method_values", "method_availability", "check_backbone_name"]
