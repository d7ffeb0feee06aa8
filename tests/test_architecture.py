"""The shape of the package (docs/architecture.md): dependencies point one way.

Every import of every module under dsv/ is read (also those inside functions and under
TYPE_CHECKING); the test fails on an import into a higher layer and on any cycle, even
within one layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dsv"

# Lowest first. A module may import its own layer and the layers below, never above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"dsv.errors", "dsv.model", "dsv.reports", "dsv.faults", "dsv.fileio",
                     "dsv.hashing", "dsv.chunking", "dsv.jsonio", "dsv.reporting", "dsv.paths",
                     "dsv.native"}),
    ("storage", {"dsv.lock", "dsv.objects", "dsv.index", "dsv.tree", "dsv.records"}),
    ("views and remotes", {"dsv.worktree", "dsv.monitor", "dsv.ignore", "dsv.refs", "dsv.remotes", "dsv.remotes.base",
                           "dsv.remotes.layout", "dsv.remotes.fs", "dsv.remotes.s3",
                           "dsv.remotes.memory", "dsv.remotes.cache", "dsv.remotes.connect"}),
    ("core", {"dsv.core", "dsv.state"}),
    ("operations", {"dsv.datasets", "dsv.settings", "dsv.versions", "dsv.checkout", "dsv.merge",
                    "dsv.maintenance", "dsv.verify", "dsv.inputs", "dsv.jobs", "dsv.imports", "dsv.remotecheck",
                    "dsv.sync", "dsv.sync.remote", "dsv.sync.policy", "dsv.sync.download",
                    "dsv.sync.fetch", "dsv.sync.push", "dsv.sync.pull", "dsv.sync.maintain", "dsv.sync.gc",
                    "dsv.sync.reader", "dsv.mounting"}),
    ("facade", {"dsv.store", "dsv", "dsv.fs", "dsv.mount"}),
    ("cli", {"dsv.cli", "dsv.__main__"}),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dsv modules `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module:  # `from . import x` imports x, not the package's own code
                targets.append(module)
            targets += [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def _layer_of(name: str) -> int:
    if name.startswith("dsv.cli."):
        name = "dsv.cli"
    for rank, (_label, members) in enumerate(LAYERS):
        if name in members:
            return rank
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/architecture.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        _layer_of(name)


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for name, deps in _graph().items():
        for dep in deps:
            if _layer_of(dep) > _layer_of(name):
                upward.append(f"{name} ({LAYERS[_layer_of(name)][0]}) imports {dep} "
                              f"({LAYERS[_layer_of(dep)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ is reached by importing any of its modules; edges into it
    # from its own submodules would be spurious, so only real imports count (above).
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from .b import x\n", {"dsv.b"}),
    ("def f():\n    from . import b\n", {"dsv.b"}),
    ("import dsv.b\n", {"dsv.b"}),
    ("from ..c import y\n", set()),    # outside dsv/: not a dsv module
])
def test_imports_are_read_everywhere(tmp_path: Path, source: str, expected: set[str]) -> None:
    """The reader itself: imports inside functions count, relative ones resolve."""
    path = tmp_path / "a.py"
    path.write_text(source)
    assert _imports("dsv.a", path, {"dsv.a", "dsv.b"}) == expected


def test_the_python_api_is_typed_and_documented() -> None:
    """Every public method of `dsv.Store` has a docstring and a precise return type."""
    import inspect
    import typing

    import dsv.reports
    from dsv.remotes.base import RemoteSpec
    from dsv.store import Store

    problems = []
    for name, fn in inspect.getmembers(Store, inspect.isfunction) + \
            inspect.getmembers(Store, inspect.ismethod):
        if name.startswith("_"):
            continue
        # names the facade imports for type checkers only (start-up) are resolved here
        hints = typing.get_type_hints(fn, localns={**vars(dsv.reports), "RemoteSpec": RemoteSpec})
        if not inspect.getdoc(fn):
            problems.append(f"{name}: no docstring")
        if "return" not in hints:
            problems.append(f"{name}: no return type")
        elif hints["return"] is typing.Any:
            problems.append(f"{name}: returns Any")
    assert len([n for n in vars(Store) if not n.startswith("_")]) > 40
    assert not problems, problems
