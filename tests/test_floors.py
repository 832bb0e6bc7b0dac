"""The house's floors, read from the source (ast, nothing imported): each module imports only
from its own floor or the floors below it (docs/architecture.md), ``webapp/`` is the only
importer of gradio, ``ui/`` never imports ``webapp/``, nothing below ``ui/`` imports either,
and no module reaches itself through its imports (no circles)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module's floor is that of its longest matching prefix.
FLOORS: dict[str, int] = {
    "prune_viz.io": 0, "prune_viz.checkpoints": 0, "prune_viz.flops": 0, "prune_viz.cluster": 0,
    "prune_viz.metrics": 0, "prune_viz.data": 0, "prune_viz.errors": 0, "prune_viz.budget": 0, "prune_viz.stats": 0,
    "prune_viz.exits": 0,
    "prune_viz.threads": 0,
    "prune_viz.backbones": 1, "prune_viz.methods": 1,
    "prune_viz.engine": 2, "prune_viz.records": 2, "prune_viz.stages": 2, "prune_viz.viz": 2,
    "prune_viz.analysis": 3, "prune_viz.params": 3, "prune_viz.ood": 3,
    "prune_viz.viz_damage": 2,
    "prune_viz.inspect_set": 3, "prune_viz.inspect_report": 3, "prune_viz.attribution": 3,
    "prune_viz.ui": 4,
    "prune_viz.webapp": 5, "prune_viz.cli": 5, "prune_viz.bench": 5, "prune_viz.bench_suite": 5, "prune_viz.bench_noise": 5,
    "prune_viz.bench_report": 5, "prune_viz.inspect_cli": 5, "prune_viz.train": 5,
    "prune_viz.train_matp": 5, "prune_viz.train_timm_seg": 5, "prune_viz.train_swin": 5, "prune_viz.train_swin_card": 5,
    "prune_viz.__main__": 5, "app": 5,
    "prune_viz": 5,  # the package's own __init__
}


def _modules() -> dict[str, Path]:
    out = {"app": ROOT / "app.py"}
    for path in sorted((ROOT / "prune_viz").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports (function-local and TYPE_CHECKING imports included),
    relative imports resolved to absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if node.module:  # `from .. import viz` imports prune_viz.viz, not (only) the package
                out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _floor(name: str) -> int:
    best = max((p for p in FLOORS if name == p or name.startswith(p + ".")), key=len)
    return FLOORS[best]


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
OURS = {name: sorted(m for m in imported if m in MODULES and m != name) for name, imported in IMPORTS.items()}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_every_module_has_a_floor():
    assert all(_floor(name) is not None for name in MODULES)


def test_only_webapp_imports_gradio():
    offenders = [name for name, imported in IMPORTS.items()
                 if any(_in(m, "gradio") or _in(m, "gradio_client") for m in imported) and not _in(name, "prune_viz.webapp")]
    assert offenders == []


def test_ui_never_imports_webapp_and_nothing_below_ui_imports_either():
    offenders = []
    for name, imported in OURS.items():
        if _in(name, "prune_viz.ui") and any(_in(m, "prune_viz.webapp") for m in imported):
            offenders.append(name)
        if _floor(name) < FLOORS["prune_viz.ui"] and any(_in(m, "prune_viz.ui") or _in(m, "prune_viz.webapp") for m in imported):
            offenders.append(name)
    assert offenders == []


def test_imports_go_down_the_floors():
    upward = [f"{name} -> {m}" for name, imported in OURS.items() for m in imported if _floor(m) > _floor(name)]
    assert upward == []


def test_no_import_circles():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for m in OURS[name]:
            if state.get(m) == 1:
                circles.append(" -> ".join(path[path.index(m):] + [m]))
            elif m not in state:
                visit(m, path + [m])
        state[name] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert circles == []
