"""Registry of pruning methods: feeds the CLI choices and the UI dropdowns."""

from __future__ import annotations

from ..errors import ParamError, echo
from . import dtop, exit_all, lvtp, matp, tome
from .base import MethodSpec
from .baselines import EVIT, NONE, RANDOM

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (NONE, RANDOM, EVIT, lvtp.SPEC, dtop.SPEC, matp.SPEC, tome.SPEC, exit_all.SPEC)}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ParamError(f"unknown method {echo(name)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]

