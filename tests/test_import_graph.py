"""The modules of disttrain/ and launchers/ import each other without a cycle, and only the
CLI reaches into launchers/.

Every import statement counts, at module level or inside a function alike: an import moved
into a function still makes the two modules depend on each other, it only hides the cycle
from the interpreter until some call order breaks it. Imports made by name at run time
(entry points, `importlib`) are not statements and are not seen here.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("disttrain", "launchers")
# The one module of disttrain/ that may import launchers/: the CLI picks and runs a launcher.
LAUNCHER_GATEWAY = "disttrain.cli"


@pytest.fixture(autouse=True, scope="module")
def no_garbage_of_earlier_tests() -> None:
    """Collect what earlier tests left before parsing. Python 3.11's `ast.parse` keeps its
    depth count per interpreter: a garbage collection in the middle of a parse that logs a
    traceback (an Azurite outage test's asyncio Task whose exception nobody retrieved) makes
    the log's caret finder parse inside the parse, and this one fails with "SystemError:
    AST constructor recursion depth mismatch" (pytest-dev/pytest#10763)."""
    gc.collect()


def module_files() -> dict[str, Path]:
    """Every module of PACKAGES by dotted name (a package by its own name, not __init__)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """The absolute dotted names the import statements of `module` ask for, anywhere in it.

    `import a.b` asks for a.b; `from a import b` for a.b, which is a submodule or merely a
    name defined in a (`resolve` decides); relative forms are made absolute first.
    """
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names.update(
                f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names
            )
    return names


def _absolute(name: str | None, level: int, package: str) -> str:
    if not level:
        return name or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def resolve(name: str, modules: set[str]) -> str | None:
    """The module `name` lands in: itself, or its longest prefix that is a module (a.b.f
    imports a.b when f is a function); None when it is outside `modules`."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `files` it imports (itself left out)."""
    graph = {}
    for module, path in files.items():
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        targets = {resolve(name, set(files)) for name in names}
        graph[module] = {target for target in targets if target not in (None, module)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts (a, b, a), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        cycle = _cycle_from(start, graph, [], set(), done)
        if cycle:
            return cycle
    return None


def _cycle_from(module, graph, path, on_path, done) -> list[str] | None:
    """Depth first from `module`; `path`/`on_path` hold the modules being visited."""
    if module in on_path:
        return path[path.index(module) :] + [module]
    if module in done:
        return None
    path.append(module)
    on_path.add(module)
    for target in sorted(graph.get(module, ())):
        cycle = _cycle_from(target, graph, path, on_path, done)
        if cycle:
            return cycle
    path.pop()
    on_path.discard(module)
    done.add(module)
    return None


def launcher_imports(files: dict[str, Path]) -> dict[str, set[str]]:
    """Modules of disttrain/ other than the CLI that import launchers/, with what they import."""
    found = {}
    for module, path in files.items():
        if module.split(".")[0] != "disttrain" or module == LAUNCHER_GATEWAY:
            continue
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        reached = {name for name in names if name.split(".")[0] == "launchers"}
        if reached:
            found[module] = reached
    return found


# --- the project -------------------------------------------------------------------------


def test_disttrain_and_launchers_have_no_import_cycle():
    graph = import_graph(module_files())
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_only_the_cli_imports_launchers():
    found = launcher_imports(module_files())
    assert not found, f"only {LAUNCHER_GATEWAY} may import launchers/; also: {found}"


def test_the_graph_holds_both_packages_and_their_function_level_imports():
    graph = import_graph(module_files())
    assert {"disttrain", "disttrain.data.pipeline", "launchers", "launchers.local"} <= set(graph)
    assert "launchers" in graph["disttrain.cli"]  # imported inside the CLI's commands only
    assert "launchers" in graph["launchers.local"]  # `from launchers import Launcher, ...`


# --- the machinery, on made-up modules -----------------------------------------------------


def test_find_cycle_reports_the_modules_of_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_find_cycle_accepts_a_graph_without_one():
    graph = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}
    assert find_cycle(graph) is None


def test_function_level_and_relative_imports_count():
    source = (
        "import pkg.other\n"
        "from . import sibling\n"
        "from .. import top\n"
        "from .sibling import helper\n"
        "from pkg import not_a_module\n"
        "def later():\n"
        "    from pkg.lazy import thing\n"
    )
    modules = {
        "pkg",
        "pkg.other",
        "pkg.top",
        "pkg.lazy",
        "pkg.sub",
        "pkg.sub.mod",
        "pkg.sub.sibling",
    }
    names = imported_names(source, "pkg.sub.mod", is_package=False)
    landed = {resolve(name, modules) for name in names}
    assert landed == {"pkg", "pkg.other", "pkg.sub.sibling", "pkg.top", "pkg.lazy"}


def test_a_package_resolves_relative_imports_against_itself():
    names = imported_names("from . import child\n", "pkg", is_package=True)
    assert {resolve(name, {"pkg", "pkg.child"}) for name in names} == {"pkg.child"}


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import g\n")
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    from pkg import a\n")
    files = {
        "pkg": tmp_path / "pkg" / "__init__.py",
        "pkg.a": tmp_path / "pkg" / "a.py",
        "pkg.b": tmp_path / "pkg" / "b.py",
    }
    assert find_cycle(import_graph(files)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_an_import_of_launchers_outside_the_cli_is_named(tmp_path):
    (tmp_path / "cli.py").write_text("from launchers import get_launcher\n")
    (tmp_path / "task.py").write_text("def run():\n    import launchers.local\n")
    files = {
        "disttrain.cli": tmp_path / "cli.py",
        "disttrain.task": tmp_path / "task.py",
        "launchers.local": tmp_path / "cli.py",  # launchers/ may import itself
    }
    assert launcher_imports(files) == {"disttrain.task": {"launchers.local"}}
