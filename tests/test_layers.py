"""The house has floors: every package and top-level module stands on its own floor, and no module
imports from a floor above its own (lazily imported ones included). Nor does any module import
itself back through others: the import drawing has no circle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flashvlm_export"

# Bottom to top, one name per floor, in the order the real imports run.
FLOORS = [
    "__init__",  # __version__
    "errors",
    "artifact_paths",  # the rule for every path an artifact names (docs/ARTIFACTS.md)
    "limits",
    "progress",
    "device",
    "artifacts",  # file naming, staging, placement, sidecars, step timing
    "selector",
    "models",
    "plugin",
    "openvino_runtime",  # a graph in OpenVINO Runtime, answering the ONNX Runtime session's calls
    "backend",  # the backend interface and the ONNX Runtime session helper
    "export",  # graph metadata, interface, requests, manifest
    "trt",
    "runtime",
    "llm",  # a model's LLM as a GGUF file for llama.cpp (it builds runtime/answer.py's random LLM)
    "serve",  # Triton model repositories of a split (docs/TRITON.md)
    "parity",
    "bench",
    "evaluation",  # flashvlm-export eval: benchmarks, their rules, answers at each budget, the report (docs/EVAL.md)
    "cli",
]


def floor_of(part: str) -> int:
    return FLOORS.index(part)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def imports_of(path: Path):
    """Every flashvlm_export module a file imports, lazily imported ones included (a submodule when named)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flashvlm_export"):
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("flashvlm_export"))


def top(module: str, root: Path) -> str:
    """The package or top-level module `module` is in; a name the package's __init__ holds is on its floor."""
    parts = module.split(".")
    if len(parts) > 1 and ((root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "__init__"


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in root.rglob("*.py")}


def arrows_up(root: Path) -> list[str]:
    """Every import that runs from a floor up to a higher one."""
    arrows = []
    for path in root.rglob("*.py"):
        here = path.relative_to(root).parts[0].removesuffix(".py")
        for module in imports_of(path):
            if floor_of(top(module, root)) > floor_of(here):
                arrows.append(f"{path.relative_to(root)} imports {module}")
    return sorted(arrows)


def circles(root: Path) -> list[list[str]]:
    """Modules that import themselves back through others (strongly connected components of the module graph)."""
    known = modules(root)
    edges = {name: set() for name in known}
    for name, path in known.items():
        for module in imports_of(path):
            while module not in known and "." in module:  # `from pkg.mod import name` -> pkg.mod
                module = module.rsplit(".", 1)[0]
            if module in known and module != name:
                edges[name].add(module)
    order, low, stack, found = {}, {}, [], []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(edges):
        if name not in order:
            visit(name)
    return found


def test_every_package_and_module_has_a_floor_of_its_own():
    names = {
        path.name.removesuffix(".py") for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").is_file()
    }
    assert names == set(FLOORS) and len(FLOORS) == len(set(FLOORS))


def test_no_import_runs_from_a_lower_floor_back_up():
    assert arrows_up(PACKAGE) == []


def test_no_module_imports_itself_back():
    assert circles(PACKAGE) == []


def plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "flashvlm_export"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_checker_sees_an_arrow_back_up(tmp_path):
    package = plant(
        tmp_path,
        {
            "runtime/__init__.py": "",
            "runtime/api.py": "def f():\n    from flashvlm_export.parity.run import graph_metadata\n",  # lazily, one floor up
            "parity/__init__.py": "",
            "parity/run.py": "from flashvlm_export.runtime.api import f\n",  # down: allowed
        },
    )
    assert arrows_up(package) == ["runtime/api.py imports flashvlm_export.parity.run.graph_metadata"]


def test_the_checker_sees_a_circle(tmp_path):
    package = plant(
        tmp_path,
        {
            "export/__init__.py": "",
            "export/graphs.py": "from flashvlm_export.export.metadata import stamped\n",
            "export/metadata.py": "def f():\n    from flashvlm_export.export.graphs import ExportRequest\n",
            "export/interface.py": "",
        },
    )
    assert arrows_up(package) == [] and circles(package) == [["flashvlm_export.export.graphs", "flashvlm_export.export.metadata"]]
