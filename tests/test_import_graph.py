"""The package's import graph: no module imports itself back through others (imports inside functions count, typing-only
imports under `if TYPE_CHECKING:` do not), no module imports fused_diffusion.testing (the references the tests and
benches compare against), and no two modules share a name (one name, one meaning)."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fused_diffusion"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_imports(tree: ast.AST):
    """Import statements outside `if TYPE_CHECKING:` blocks, at any depth."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for branch in node.orelse for n in _runtime_imports(ast.Module([branch], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.module == "__future__":
                    continue
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in known and "." in target:
                    target = target.rpartition(".")[0]
                # a module importing the package it is in reads what that package has already defined
                if target in known and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_tests_and_benches_import_the_testing_references():
    # fused_diffusion.testing says what the library is compared against; the library itself must not lean on it
    importers = {name for name, targets in import_graph().items()
                 if not name.startswith("fused_diffusion.testing")
                 and any(target.startswith("fused_diffusion.testing") for target in targets)}
    assert importers == set()


def test_no_two_modules_share_a_name():
    # ops/kernels/<op>.py holds the Triton kernels of ops/<op>.py: the one mirror by design (OpSpec.triton finds them
    # by the op's name)
    names = Counter(name.rpartition(".")[2] for name in modules()
                    if "." in name and not name.startswith("fused_diffusion.ops.kernels."))
    assert sorted(name for name, count in names.items() if count > 1) == []
