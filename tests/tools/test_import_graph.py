"""The torchkiln package has no import circles (DESIGN.md section 2), lazy and TYPE_CHECKING imports included.

The graph is read from the source (every ``import`` statement anywhere in a module, so an import inside a
function or under ``if TYPE_CHECKING:`` counts: a circle that only works because one side imports late is still
a circle). ``from a import b`` is an edge to the module ``a.b`` when there is one, else to ``a``. A submodule's
implicit import of its parent package is not an edge: every package ``__init__`` that re-exports would
otherwise be a circle with its own children.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules(src: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every module of ``package`` under ``src``."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _nearest(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its body)."""
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(t for a in node.names if (t := _nearest(a.name, modules)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    hit = submodule if submodule in modules else _nearest(target, modules)
                    if hit:
                        edges.add(hit)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_torchkiln_has_no_import_cycles() -> None:
    graph = import_graph(SRC, "torchkiln")
    assert "torchkiln.store.lease" in graph and "torchkiln.compat.registry" in graph  # the scan saw the tree
    assert cycles(graph) == []


def test_the_store_and_compat_layers_point_one_way() -> None:
    graph = import_graph(SRC, "torchkiln")
    # The lease knows the Leasable protocol (and its ttl setting), not a backend; fixes know their record only.
    assert graph["torchkiln.store.lease"] <= {"torchkiln.errors", "torchkiln.settings", "torchkiln.store.base"}
    assert "torchkiln.store.remote" not in graph["torchkiln.store.objects"]
    fix_modules = [name for name in graph if name.startswith("torchkiln.compat.fixes.")]
    assert fix_modules
    for name in fix_modules:
        assert "torchkiln.compat.registry" not in graph[name], name
        assert not {dep for dep in graph[name] if dep.startswith("torchkiln.compat.fixes.")}, name


def test_the_checker_sees_cycles_through_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg import a\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.sub import b\n")  # into the cycle, not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
