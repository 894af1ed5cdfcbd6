"""Dependencies point one way: the layers of DESIGN.md, and no import cycle.

Every module under src/corral is parsed, not imported, and every import counts: at module
level, inside functions, and under `if TYPE_CHECKING`. `from corral.x import y` is an
import of the module corral.x.y when y is one, of corral.x otherwise. Importing a module
runs its packages' `__init__` first anyway, so a module depends on a package's `__init__`
only when it names the package itself (`import corral.x`) or takes a name defined there;
a package `__init__` importing its own submodules is then a cycle only if one of those
submodules takes something back from the `__init__`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "corral"

# (importer's package, packages it must not import)
FORBIDDEN = [
    ("corral.broker", ("corral.service", "corral.cli")),
    ("corral.service", ("corral.cli",)),
    ("corral.store", ("corral.service", "corral.broker", "corral.cli", "corral.backends")),
    ("corral.backends", ("corral.service", "corral.broker", "corral.cli", "corral.store")),
    ("corral.document", ("corral.service", "corral.broker", "corral.cli", "corral.store")),
]


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The package's modules that module `name` imports, wherever in it the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
        else:
            continue
        for target in targets:
            # `import corral.x.y` where y is not a module: the nearest module that is
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append(Import(name, target, node.lineno))
    return found


def _graph() -> tuple[dict[str, set[str]], list[Import]]:
    modules = _modules()
    imports = sorted(
        {i for name, path in modules.items() for i in _imports(name, path, modules)},
        key=lambda i: (i.importer, i.line, i.imported),
    )
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for i in imports:
        graph[i.importer].add(i.imported)
    return graph, imports


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm):
    modules that each import, through the others, all the rest."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per component (a list of modules, the first repeated at the end)."""
    return [_cycle_in(component, graph) for component in _components(graph)]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {component}")


def test_lower_layers_import_no_higher_one():
    _, imports = _graph()
    wrong = [
        f"{i.importer} imports {i.imported} (line {i.line})"
        for i in imports
        for importer, banned in FORBIDDEN
        if _within(i.importer, importer) and any(_within(i.imported, b) for b in banned)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_package_has_no_import_cycle():
    graph, _ = _graph()
    found = [
        f"{' -> '.join(_cycle_in(c, graph))} (and all of: {', '.join(c)})"
        for c in _components(graph)
    ]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    """The reader itself: relative imports, submodules named in `from`, and imports in
    functions and under TYPE_CHECKING all count; names from an `__init__` count for it."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "from .sub import leaf\nVALUE = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.other import Thing\n"
            "def f():\n    from .. import VALUE\n    import pkg.other\n"
        ),
        "pkg/other.py": "from pkg import sub\nfrom . import sub as again\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    modules = {
        "pkg": tmp_path / "pkg/__init__.py",
        "pkg.sub": tmp_path / "pkg/sub/__init__.py",
        "pkg.sub.leaf": tmp_path / "pkg/sub/leaf.py",
        "pkg.other": tmp_path / "pkg/other.py",
    }
    found = {n: {i.imported for i in _imports(n, p, modules)} for n, p in modules.items()}
    assert found == {
        "pkg": {"pkg.sub.leaf"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.other", "pkg"},
        "pkg.other": {"pkg.sub"},
    }
    assert _cycles(found) == [["pkg", "pkg.sub.leaf", "pkg"]]
