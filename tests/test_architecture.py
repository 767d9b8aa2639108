"""The package's floors: no import circles, no import upwards, no task-name branching outside ``tasks``.

Every ``import`` in ``lorun_peft`` (module level or inside a function: an upward arrow is one either
way) is read with ``ast``; the unit of a module is its top-level package or module under
``lorun_peft`` (``lorun_peft.physics.cs`` -> ``physics``). docs/architecture.md draws the same floors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lorun_peft"

#: Bottom to top. A unit may import units of its own floor or below; within a floor, no circles.
FLOORS: list[set[str]] = [
    {"_torchvision_compat", "io", "help", "integrity", "metrics", "pretrained_io"},
    {"physics", "denoisers"},
    {"tuners"},
    {"hub"},  # files and cards; it never imports the model: LoRunModel.push_* call into it
    {"training"},
    {"unfolding"},
    {"data"},
    {"tasks"},
    {"evaluation", "figures", "pretrained", "recipes"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges() -> dict[tuple[str, str], str]:
    """``{(unit, imported unit): "file:line"}`` over every import statement of the package."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                targets.append(target)
                if target == "lorun_peft":
                    targets += [f"lorun_peft.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            for target in targets:
                if target.startswith("lorun_peft.") and _unit(module) not in ("__init__", _unit(target)):
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    edges.setdefault((_unit(module), _unit(target)), where)
    return edges


def _floor(unit: str) -> int:
    for index, floor in enumerate(FLOORS):
        if unit in floor:
            return index
    raise AssertionError(f"lorun_peft.{unit} has no floor in tests/test_architecture.py: add it to FLOORS")


def test_every_unit_has_a_floor():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    for unit in units:
        _floor(unit)


def test_no_import_goes_up_a_floor():
    upward = [f"{a} -> {b} ({where})" for (a, b), where in import_edges().items() if _floor(b) > _floor(a)]
    assert not upward, "imports up a floor:\n" + "\n".join(upward)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for a, b in import_edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, unit, nxt]))
            if nxt not in state:
                visit(nxt, [*path, unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


_TASK_NAMES = "cs|sr|cassi|inpainting|denoising"
_COMPARISON = re.compile(
    rf"""(==|!=|\bin\s*[\(\[{{]|\bnot in\s*[\(\[{{])[^#\n]*["']({_TASK_NAMES})["']"""
    rf"""|["']({_TASK_NAMES})["']\s*(==|!=)"""
)


def test_no_task_name_comparisons_outside_tasks():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "tasks":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _COMPARISON.search(code) and "protocol" not in code:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not found, "branching on a task name outside lorun_peft/tasks:\n" + "\n".join(found)


def test_the_checks_see_what_they_look_for():
    """The walk sees imports inside functions, and the pattern sees the branching it forbids."""
    edges = import_edges()
    assert ("recipes", "evaluation") in edges  # imported inside a function of recipes/steps.py
    assert ("unfolding", "hub") in edges  # at module level in unfolding/model.py
    for line in ('if task == "cassi":', "if args.task != 'sr':", 'if task in ("cs", "sr"):', '"cs" == task'):
        assert _COMPARISON.search(line), line
    assert not _COMPARISON.search('load_pretrained("cs", "ratio-25")')
