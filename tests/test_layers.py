"""The package's structure: no import cycle, and SQLAlchemy's internals read in one module.

The direction of the layers (integrations > facade > features | wiring > storage > io >
settings) is checked by import-linter's contracts in pyproject.toml (``lint-imports``, run by
``.ci/run``); these tests add what it does not say.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parent.parent / "sqla_redis_cache"

#: SQLAlchemy modules that are not its public API: only ``wiring/_compat.py`` imports them
PRIVATE_SQLALCHEMY = (
    "sqlalchemy.engine.base",
    "sqlalchemy.engine.default",
    "sqlalchemy.engine.result",
    "sqlalchemy.orm.base",
    "sqlalchemy.orm.context",
    "sqlalchemy.orm.instrumentation",
    "sqlalchemy.orm.state",
    "sqlalchemy.orm.unitofwork",
    "sqlalchemy.sql.base",
    "sqlalchemy.sql.compiler",
    "sqlalchemy.util",
    "greenlet",
)
COMPAT = PACKAGE / "wiring" / "_compat.py"


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_among_the_packages_modules() -> None:
    """Every import counts: at module level, inside functions and under TYPE_CHECKING."""
    graph = grimp.build_graph("sqla_redis_cache")
    assert len(graph.modules) > 50  # the whole package was read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert cycles(graph) == []
    graph.add_import(importer="p.c", imported="p.a")  # inside a function, say
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if any(name == p or name.startswith(p + ".") for p in PRIVATE_SQLALCHEMY):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}")
    return found


def _private_getattrs(path: Path) -> list[str]:
    """``getattr(obj, "_private", default)``: how internals used to be read, silently."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")  # dunders are public protocol
        ):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.args[1].value}")
    return found


def test_sqlalchemy_internals_are_read_in_wiring_compat_only() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if p != COMPAT]
    assert [hit for p in modules for hit in _private_imports(p)] == []
    assert [hit for p in modules for hit in _private_getattrs(p)] == []
    assert _private_imports(COMPAT)  # and they are read there
