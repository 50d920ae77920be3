"""The layers: deeplab ← experiments ← analysis. deeplab imports neither experiments nor analysis, nor mlflow or
submitit; experiments imports nothing from analysis; mlflow lives in the store package and the engine's tracker,
SQLAlchemy in the store package only. Every import counts: lazy ones inside functions and TYPE_CHECKING ones too."""

from __future__ import annotations

import ast

from tiny import REPO

PACKAGES = ("deeplab", "experiments", "analysis")
FORBIDDEN = {  # what each layer may not import: the layers above it, and for deeplab the machinery around it
    "deeplab": {"experiments", "analysis", "mlflow", "submitit"},
    "experiments": {"analysis"},
    "analysis": set(),
}
# the one home of MLflow I/O (experiments/store/__init__.py) and the tracker the engine talks to
HOMES = {"mlflow": ("experiments/store/", "experiments/mlflow_tracker.py"), "sqlalchemy": ("experiments/store/",)}


def imported(source: str, module: str) -> set[str]:
    """Top-level package names ``module``'s source imports, anywhere in the file; relative imports resolved, and
    ``importlib.import_module("name")`` with a literal name counted too."""
    package = module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            names.add((base or [node.module or ""])[0])
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            names.add(node.args[0].value.split(".")[0])
    return names


def _dynamic_import(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    literal = bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
    return name in ("import_module", "__import__") and literal


def _modules() -> dict[str, set[str]]:
    """Repository-relative path → the packages it imports, for every module of the three packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            module = ".".join(rel.with_suffix("").parts)
            out[rel.as_posix()] = imported(path.read_text(), module)
    return out


def test_each_layer_imports_only_the_layers_below_it() -> None:
    modules = _modules()
    offenders = [
        f"{rel} imports {name}"
        for rel, names in modules.items()
        for name in sorted(names & FORBIDDEN[rel.split("/")[0]])
    ]
    assert not offenders, offenders
    # the scan reads what it should: analysis does import experiments, and lazily too (inside a function)
    assert "experiments" in modules["analysis/plan.py"] and "analysis" in modules["analysis/cli.py"]


def test_mlflow_and_sqlalchemy_are_imported_only_in_their_homes() -> None:
    modules = _modules()
    offenders = [
        f"{rel} imports {name}"
        for rel, names in modules.items()
        for name, homes in HOMES.items()
        if name in names and not rel.startswith(homes)
    ]
    assert not offenders, offenders
    assert "mlflow" in modules["experiments/store/client.py"]  # the scan does see them


def test_the_scan_sees_lazy_typing_relative_and_dynamic_imports() -> None:
    source = """
import os.path
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from analysis.cells import StudyAxes
def later():
    import mlflow.entities
    from . import sibling
    from ..store import read
    importlib.import_module("submitit.helpers")
"""
    names = imported(source, "experiments.store.module")
    assert names == {"os", "typing", "analysis", "mlflow", "experiments", "submitit"}
