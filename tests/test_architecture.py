"""The layout's rules (docs/architecture.md), checked on the source: every import statement of
every module, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import easel

PACKAGE = Path(easel.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every module `path` imports anywhere in its body; `from P import name` counts as the
    submodule P.name where that is one of easel's modules."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in known else node.module)
    return names


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, set(found)) for name, path in found.items()}


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_no_import_circles():
    edges = {m: {i for i in imports if within(i, "easel")} for m, imports in graph().items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target] if target in trail else [target]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_engine_knows_nothing_of_dreambooth_the_shapes_world_or_orchestration():
    outside = ("easel.models.shapes", "easel.models.dreambooth", "easel.models.testing",
               "easel.tasks", "easel.flows", "prefect")  # fmt: skip
    for module, imports in graph().items():
        if within(module, "easel.models.engine"):
            wrong = sorted(i for i in imports if within(i, *outside))
            assert not wrong, f"{module} imports {wrong}"


def test_only_the_tracking_module_talks_to_mlflow():
    for module, imports in graph().items():
        talks = sorted(i for i in imports if within(i, "mlflow", "pytorch_lightning.loggers"))
        assert module == "easel.tracking" or not talks, f"{module} imports {talks}"
    assert "mlflow" in graph()["easel.tracking"]


def test_data_and_models_stay_below_orchestration():
    for module, imports in graph().items():
        if within(module, "easel.data"):
            wrong = [i for i in imports if within(i, "easel.models", "easel.tasks", "easel.flows",
                                                  "easel.tracking", "prefect")]  # fmt: skip
            assert not wrong, f"{module} imports {wrong}"
        if within(module, "easel.models"):
            wrong = [i for i in imports if within(i, "easel.tasks", "easel.flows", "prefect")]
            assert not wrong, f"{module} imports {wrong}"
        if within(module, "easel.tasks"):
            assert not [i for i in imports if within(i, "easel.flows")], module


def test_the_checker_sees_imports_inside_functions():
    """The walk counts a function-level import (else a circle could hide there)."""
    imports = graph()["easel.tasks.dreambooth"]
    assert "easel.models.dreambooth.training" in imports  # imported inside train_task
