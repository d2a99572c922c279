"""The house has floors: no module imports from a floor above its own (README "Layout")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flashvlm_export"

# README's layout, bottom to top. Shared utilities stand on the ground floor with selector and models.
FLOORS = [
    {"errors", "artifacts", "limits", "progress", "device", "selector", "models", "__init__"},
    {"export", "plugin", "trt"},
    {"parity", "bench", "runtime"},
    {"cli"},
]


def floor_of(part: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if part in names)


def imports_of(path: Path):
    """Every flashvlm_export module a file imports, lazily imported ones included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flashvlm_export"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("flashvlm_export"))


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_runs_from_a_lower_floor_back_up():
    arrows = []
    for path in PACKAGE.rglob("*.py"):
        here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in imports_of(path):
            if floor_of(top(module)) > floor_of(here):
                arrows.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert arrows == []


def test_the_checker_sees_an_arrow_back_up(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("def f():\n    from flashvlm_export.parity.run import run_parity\n")
    modules = list(imports_of(planted))
    assert modules == ["flashvlm_export.parity.run"] and floor_of(top(modules[0])) > floor_of("selector")
