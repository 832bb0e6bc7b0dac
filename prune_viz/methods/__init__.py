"""Registry of pruning methods: feeds the CLI choices and the UI dropdowns."""

from __future__ import annotations

from .base import MethodSpec
from . import dtop, exit_all, lvtp, matp, tome
from .baselines import EVIT, NONE, RANDOM

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (NONE, RANDOM, EVIT, lvtp.SPEC, dtop.SPEC, matp.SPEC, tome.SPEC, exit_all.SPEC)}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def make_params(spec: MethodSpec, **values):
    """Build the method's frozen params from the given values, ignoring those it does not take."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(spec.params_cls)}
    return spec.params_cls(**{k: v for k, v in values.items() if k in names and v is not None})
