"""The stack stays a stack: every lmforge import points down the layers of ../shared/DESIGN.md, and
no two modules import each other, directly or round a loop (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lmforge

# Bottom first. A module may import its own package and any package in an earlier layer.
LAYERS = [
    "errors",
    "paths",
    "device",
    "tokenizers",
    "data",
    "models",
    "embeddings",
    "checkpoints",
    "generation",
    "evaluation",  # the one evaluator: the trainer scores its validation split with it
    "training",
    "serve",
    "api",
    "__init__",  # `import lmforge`: the public surface
    "bench",
    "cli",
    "__main__",
]


def imports_of(root: Path, package: str = "lmforge") -> dict[str, set[str]]:
    """module -> the package's modules it imports, at module level or inside functions."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((package, *parts))
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from package import module` imports that module
                found = [f"{node.module}.{a.name}" for a in node.names]
                found = [m if m in modules else node.module for m in found]
            else:
                continue
            targets |= {m for m in found if m == package or m.startswith(package + ".")}
        graph[name] = {t for t in targets if t != name}
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    top = "cli" if top.startswith("cli") else top
    if top not in LAYERS:
        raise AssertionError(f"{module} is in no layer; add its package to LAYERS in {__file__}")
    return LAYERS.index(top)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} -> {dst}"
        for src, targets in graph.items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


PACKAGE = Path(lmforge.__file__).parent


def test_every_import_points_down_the_stack():
    upward = upward_imports(imports_of(PACKAGE))
    assert not upward, "imports that point up the stack:\n" + "\n".join(upward)


def test_no_module_imports_round_a_loop():
    loops = cycles(imports_of(PACKAGE))
    assert not loops, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in loops)


@pytest.mark.parametrize(
    ("source", "expect_upward", "expect_cycle"),
    [
        ("from lmforge.errors import ConfigError\n", False, False),
        ("def f():\n    from lmforge.serve import app\n", True, False),  # hidden in a function
        ("from lmforge.data import corpus\n", False, True),  # corpus imports tokens back
        ("import lmforge.models.gpt\n", True, True),  # gpt imports tokens: up, and a loop
    ],
)
def test_the_checks_catch_what_they_claim_to(tmp_path, source, expect_upward, expect_cycle):
    """The checker itself, on a made-up package: an upward import and a loop are reported."""
    root = tmp_path / "lmforge"
    for module in ("errors", "serve/app", "models/gpt", "data/tokens", "data/corpus"):
        path = root / f"{module}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (root / "models/gpt.py").write_text("from lmforge.data import tokens\n")
    (root / "data/corpus.py").write_text("def read():\n    from lmforge.data.tokens import f\n")
    (root / "data/tokens.py").write_text(source)
    graph = imports_of(root)
    assert bool(upward_imports(graph)) == expect_upward
    assert bool(cycles(graph)) == expect_cycle
