"""The layout's rules (docs/architecture.md), checked on the source: every import statement of
every module, those inside functions included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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
               "easel.orchestration", "easel.tasks", "easel.flows", "easel.cli",
               "prefect")  # fmt: skip
    for module, imports in graph().items():
        if within(module, "easel.models.engine"):
            wrong = sorted(i for i in imports if within(i, *outside))
            assert not wrong, f"{module} imports {wrong}"


def test_only_the_tracking_module_talks_to_mlflow():
    for module, imports in graph().items():
        talks = sorted(i for i in imports if within(i, "mlflow", "pytorch_lightning.loggers"))
        assert module == "easel.tracking" or not talks, f"{module} imports {talks}"
    assert "mlflow" in graph()["easel.tracking"]


# Each layer, and the layers above it that it may not import (the package's own order:
# cli > flows > tasks > orchestration > models > data).
ABOVE = {
    "easel.data": ("easel.models", "easel.orchestration", "easel.tasks", "easel.flows",
                   "easel.cli", "easel.tracking", "prefect"),
    "easel.models": ("easel.orchestration", "easel.tasks", "easel.flows", "easel.cli", "prefect"),
    "easel.orchestration": ("easel.tasks", "easel.flows", "easel.cli"),
    "easel.tasks": ("easel.flows", "easel.cli"),
    "easel.flows": ("easel.cli",),
}  # fmt: skip


@pytest.mark.parametrize("layer", ABOVE)
def test_each_layer_stays_below_those_above_it(layer):
    for module, imports in graph().items():
        if within(module, layer):
            wrong = sorted(i for i in imports if within(i, *ABOVE[layer]))
            assert not wrong, f"{module} imports {wrong}"


def test_flows_hold_only_flows_and_their_parameters():
    """A module of `easel/flows/` defines a flow, or is a flow's parameters (no CLI
    function, no task); `easel/orchestration/` defines neither tasks nor flows."""
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
        decorators = {ast.unparse(d).split("(")[0] for f in functions for d in f.decorator_list}
        if within(name, "easel.flows") and name != "easel.flows":
            parameters = name.endswith("_parameters")
            assert "flow" in decorators or parameters, f"{name} defines no flow"
            commands = sorted(f.name for f in functions if f.name.endswith("_command"))
            assert not commands, f"{name}: {commands}"
        if within(name, "easel.orchestration"):
            assert not decorators & {"flow", "task"}, f"{name} defines a flow or a task"


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["dreambooth", "--help"]])
def test_the_command_line_answers_help_without_torch(argv):
    """`python -m easel.cli ... --help` imports no torch (nor Prefect): the parsers are
    light, each command's module is imported only once it runs."""
    check = "\n".join([
        "import runpy, sys", f"sys.argv = ['easel', *{argv!r}]", "try:",
        "    runpy.run_module('easel.cli', run_name='__main__')", "except SystemExit as end:",
        "    assert end.code == 0, end.code",
        "heavy = {'torch', 'prefect'} & {m.split('.')[0] for m in sys.modules}",
        "assert not heavy, heavy",
    ])  # fmt: skip
    found = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("usage: easel"), found.stdout


def test_the_checker_sees_imports_inside_functions():
    """The walk counts a function-level import (else a circle could hide there)."""
    imports = graph()["easel.tasks.dreambooth"]
    assert "easel.models.dreambooth.training" in imports  # imported inside train_task
