"""The package's import structure: no cycles, and the product never imports the toy lab."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rlhflab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """rlhflab modules imported at module level, and those imported inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, inner = set(), set()

    def names(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.module is None:
            return []
        # `from rlhflab.x import y` may import the submodule rlhflab.x.y
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                target = inner if in_function else top
                target.update(n for n in names(child) if n == "rlhflab" or n.startswith("rlhflab."))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return top, inner


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        top, inner = _imports(path)
        graph[name] = ({m for m in top if m in modules}, {m for m in inner if m in modules})
    return graph


def test_no_import_cycles_even_through_function_level_imports():
    graph = _graph()
    edges = {m: top | inner for m, (top, inner) in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(edges[m]):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own submodules
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_product_never_imports_the_toy_lab():
    """Only the entry layer reaches the toy lab (``rlhflab toy``); the library never does."""
    offenders = {
        m: sorted(n for n in top | inner if n.startswith("rlhflab.toy"))
        for m, (top, inner) in _graph().items()
        if not m.startswith("rlhflab.toy") and m not in ("rlhflab.cli", "rlhflab.commands.toy")
    }
    assert not {m: v for m, v in offenders.items() if v}


def test_rlhflab_modules_are_imported_at_module_level():
    """Function-level imports are for heavy third-party libraries; the package's own modules are
    imported at the top, which is only possible because there are no cycles."""
    late = {m: sorted(inner) for m, (_, inner) in _graph().items() if inner}
    assert not late, late


ENTRY_PACKAGE = "rlhflab.commands"
# The modules directly under src/rlhflab/: the command table and the leaves every package may use.
TOP_LEVEL = {"cli", "config", "errors", "files", "seeds", "progress", "hardware"}


def _is_entry(module: str) -> bool:
    return module == ENTRY_PACKAGE or module.startswith(ENTRY_PACKAGE + ".")


def test_only_the_command_table_imports_the_entry_layer():
    """``rlhflab.commands`` is the entry layer (one function per command, the presets): ``cli``
    imports it and nothing outside it does, so the library below never depends on a command."""
    offenders = {
        m: sorted(n for n in top | inner if _is_entry(n))
        for m, (top, inner) in _graph().items()
        if not _is_entry(m) and m != "rlhflab.cli"
    }
    assert not {m: v for m, v in offenders.items() if v}


def test_the_top_level_holds_only_the_command_table_and_the_leaves():
    """Every other module lives in the package of its concept (commands, data, feedback, rewards,
    models, losses, sampling, decoding, train, evaluation, toy, app)."""
    flat = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert flat == TOP_LEVEL, sorted(flat ^ TOP_LEVEL)


def test_the_leaves_import_no_other_rlhflab_module_but_leaves():
    leaves = {f"rlhflab.{name}" for name in TOP_LEVEL - {"cli"}} | {"rlhflab"}
    offenders = {
        m: sorted(n for n in top | inner if n not in leaves) for m, (top, inner) in _graph().items() if m in leaves
    }
    assert not {m: v for m, v in offenders.items() if v}


def test_the_python_api_is_the_only_other_door_to_the_entry_layer_and_every_name_resolves():
    """``import rlhflab`` exposes the training entry points lazily (``rlhflab._API``), the one
    place besides ``cli`` that names ``rlhflab.commands``; no other module reaches it through
    ``importlib`` where the import graph above cannot see."""
    import importlib

    import rlhflab

    for name, (module, attribute) in rlhflab._API.items():
        assert getattr(importlib.import_module(module), attribute) is getattr(rlhflab, name), name
    dynamic = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p != PACKAGE / "__init__.py" and 'import_module("rlhflab.commands' in p.read_text()
    )
    assert not dynamic, dynamic
