"""The package's layers, as imports: the wire contract (eagleeye.api) at the bottom, then what the
services and the client share (common), then the client library, the worker and the router, each
knowing only the layers below it, never one another; the harness (local processes for the demo,
tests and bench) on top. No module imports one that imports it back.

Read from the source with `ast` (every import, lazy ones included, except those only for type
checking), so a new import that breaks a layer fails here with its file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each top-level folder (installed as eagleeye.NAME) and the ones it may import.
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "scenes": set(),
    "common": {"api"},
    "client": {"api", "common", "scenes"},
    "detector": {"api", "common", "scenes"},
    "router": {"api", "common"},
    "harness": {"api", "common", "client"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "eagleeye." + ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module or module.name) for every eagleeye import in `path`, except type-checking-only ones."""
    def visit(node: ast.AST) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    yield from visit(other)
                continue
            if isinstance(child, ast.Import):
                yield from ((child.lineno, a.name) for a in child.names if a.name.startswith("eagleeye."))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("eagleeye"):
                yield child.lineno, child.module
                yield from ((child.lineno, f"{child.module}.{a.name}") for a in child.names)
            yield from visit(child)

    yield from visit(ast.parse(path.read_text(), str(path)))


def sources() -> dict[str, Path]:
    return {_module_name(p): p for top in ALLOWED for p in (ROOT / top).rglob("*.py")
            if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, path in sources().items():
        top = module.split(".")[1]
        for line, name in imports(path):
            other = name.split(".")[1] if name.count(".") else ""
            if other and other != top and other not in ALLOWED[top]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {name} ({top} may import only "
                             f"{', '.join(sorted(ALLOWED[top])) or 'nothing of eagleeye'})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = sources()
    graph = {m: {n for _, n in imports(p) if n in modules and n != m} for m, p in modules.items()}
    # Tarjan's strongly connected components, iteratively: a component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in graph:
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
                    circles.append(sorted(component))
    assert not circles, circles


def test_the_client_library_loads_no_worker_router_or_harness_code() -> None:
    code = ("import sys\n"
            "from eagleeye.client import AsyncDetector, Detector, Tls\n"
            "with Detector('127.0.0.1:9', timeout=1.0):\n"
            "    pass\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('eagleeye.detector', 'eagleeye.router', "
            "'eagleeye.harness', 'torch', 'eagleeye.client.load', 'eagleeye.client.video')))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], done.stdout
