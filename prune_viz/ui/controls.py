"""Parameter controls generated from each method's params dataclass, and the values they send
back, typed. A new method's parameters appear without touching this module; entries in
``KNOWN_CONTROLS`` only refine them (range, label, help)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import ParamError, echo
from ..methods import METHODS


# kind: slider | int | float | choice | text | bool.
KNOWN_CONTROLS: dict[tuple[str, str], dict[str, Any]] = {
    ("lvtp", "q1"): dict(kind="slider", minimum=1.05, maximum=4.0, step=0.05, label="q1 — saliency index (> 1)",
                         info="Tsallis index that emphasises a token's strongest channels."),
    ("lvtp", "q2"): dict(kind="slider", minimum=0.05, maximum=0.95, step=0.05, label="q2 — detail index (0..1)",
                         info="Tsallis index that emphasises weak channels (fine detail)."),
    ("lvtp", "k"): dict(kind="slider", minimum=2, maximum=16, step=1, label="k — clusters (1st pass)",
                        info="Tokens are grouped into k clusters; high-entropy clusters are kept."),
    ("lvtp", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of pending tokens pruned",
                           info="Of the tokens left undecided, this fraction (weakest edges first) is removed."),
    ("lvtp", "drop"): dict(kind="slider", minimum=0.0, maximum=0.5, step=0.025, label="drop — low-entropy clusters removed outright",
                           info="Fraction of the 1st-pass clusters (lowest entropy) removed without a second chance."),
    ("lvtp", "k2"): dict(kind="slider", minimum=2, maximum=8, step=1, label="k2 — clusters (2nd pass)", advanced=True),
    ("lvtp", "iters"): dict(kind="int", minimum=1, maximum=50, label="k-means iterations", advanced=True),
    ("lvtp", "entropy"): dict(label="entropy (ablation: mtsallis = the paper's)", advanced=True),
    ("lvtp", "second"): dict(label="second pass (ablation: sobel = the paper's)", advanced=True),
    ("random", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of tokens removed"),
    ("evit", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of tokens removed"),
    ("tome", "rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="rate — share of tokens merged away",
                           info="Each merge folds a token into its most similar partner; the group is decoded as one."),
    ("dtop", "threshold"): dict(kind="slider", minimum=0.5, maximum=1.0, step=0.01, label="threshold — exit confidence",
                                info="A token whose top-class probability reaches this leaves with its early prediction."),
    ("dtop", "k"): dict(kind="slider", minimum=0, maximum=20, step=1, label="k — context tokens kept per class"),
    ("matp", "alpha"): dict(kind="slider", minimum=0.1, maximum=2.0, step=0.05, label="alpha — adaptive threshold factor",
                            info="Prune tokens scoring below alpha x this image's mean score."),
    ("matp", "beta"): dict(kind="slider", minimum=0.1, maximum=3.0, step=0.1, label="beta — entropy cap (bits)",
                           info="Never prune a token whose prediction entropy is beta bits or more."),
    ("matp", "k"): dict(kind="slider", minimum=0, maximum=10, step=1, label="k — relation tokens kept per class"),
    ("matp", "criterion"): dict(label="criterion (adaptive = the paper's)"),
    ("matp", "fixed_threshold"): dict(kind="slider", minimum=0.0, maximum=1.0, step=0.01,
                                      label="fixed threshold (criterion = fixed)", advanced=True),
    ("matp", "topk_rate"): dict(kind="slider", minimum=0.0, maximum=0.95, step=0.05, label="top-k rate (criterion = topk)", advanced=True),
    ("matp", "weights"): dict(label="facet weights: entropy, 1 - confidence, atypicality", advanced=True),
}


@dataclass(frozen=True)
class ParamControl:
    """One method parameter as a UI control, derived from the params dataclass."""

    method: str
    name: str
    kind: str  # slider | int | float | choice | text | bool
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    info: str = ""
    advanced: bool = False
    is_int: bool = False
    is_tuple: bool = False


def _control_for(method: str, f: dataclasses.Field, hint: Any) -> ParamControl:
    origin = typing.get_origin(hint)
    default = f.default if f.default is not dataclasses.MISSING else None
    base: dict[str, Any] = dict(label=f.name, default=default)
    if origin is typing.Literal:
        base.update(kind="choice", choices=tuple(typing.get_args(hint)))
    elif hint is bool:
        base.update(kind="bool")
    elif hint is int:
        base.update(kind="int", is_int=True)
    elif hint is float:
        base.update(kind="float")
    elif origin in (tuple, list):
        base.update(kind="text", is_tuple=True, default=", ".join(str(v) for v in (default or ())))
    else:
        base.update(kind="text")
    override = dict(KNOWN_CONTROLS.get((method, f.name), {}))
    if override.get("kind") == "slider" and base.get("is_int"):
        override.setdefault("step", 1)
    base.update(override)
    known = (method, f.name) in KNOWN_CONTROLS
    base.setdefault("advanced", not known)
    return ParamControl(method=method, name=f.name, **base)


MAX_PARAMS_JSON = 2000  # characters: every parameter of a method, spelled out, takes ~200


def param_controls() -> list[ParamControl]:
    """Every parameter of every registered method, in registry and field order."""
    out = []
    for name, spec in METHODS.items():
        try:
            hints = typing.get_type_hints(spec.params_cls)
        except Exception:  # unresolvable annotations: fall back to the default's type
            hints = {}
        for f in dataclasses.fields(spec.params_cls):
            hint = hints.get(f.name, type(f.default) if f.default is not dataclasses.MISSING else str)
            out.append(_control_for(name, f, hint))
    return out


def values_for(method: str, controls: list[ParamControl], values: list[Any]) -> dict[str, Any]:
    """The chosen method's raw control values -> typed parameter values (ValueError)."""
    out: dict[str, Any] = {}
    for c, v in zip(controls, values):
        if c.method != method or v is None:
            continue
        if c.is_tuple:
            try:
                v = tuple(float(x) for x in str(v).replace("(", "").replace(")", "").split(",") if x.strip())
            except ValueError:
                raise ParamError(f"{c.name} must be numbers separated by commas, got '{v}'") from None
        elif c.is_int:
            if isinstance(v, float) and not v.is_integer():
                raise ParamError(f"{c.name} must be a whole number, got {v}")
            v = int(v)
        elif c.kind in ("slider", "float"):
            v = float(v)
        out[c.name] = v
    return out


def parse_params_json(text: str | dict | None) -> dict[str, Any]:
    """The API's params argument: a JSON object like {"rate": 0.5} (empty = defaults), at most
    MAX_PARAMS_JSON characters and one level of nesting (a list value, e.g. MATP's weights).

    Checked before parsing: deeply nested JSON exhausts the parser's recursion, and a 1 MB value
    would come back in the error message."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    if isinstance(text, dict):
        text = json.dumps(text)
    if not isinstance(text, str):
        raise ParamError(f'params must be a JSON object like {{"rate": 0.5}}, got {type(text).__name__}')
    if len(text) > MAX_PARAMS_JSON:
        raise ParamError(f'params: at most {MAX_PARAMS_JSON:,} characters of JSON, got {len(text):,}')
    depth = deepest = 0
    for ch in text:  # nesting depth, counted without parsing (brackets inside strings count too: harmless)
        depth += ch in "[{"
        depth -= ch in "]}"
        deepest = max(deepest, depth)
    if deepest > 2:
        raise ParamError('params must be a flat JSON object like {"rate": 0.5, "weights": [0.5, 0.25, 0.25]}')
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamError(f'params must be a JSON object like {{"rate": 0.5}}; could not parse it ({exc.msg})') from None
    if not isinstance(obj, dict):
        raise ParamError(f'params must be a JSON object like {{"rate": 0.5}}, got {type(obj).__name__}')
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
