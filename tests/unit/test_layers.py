"""The package's modules form layers: no import circle, and imports inside functions
only where they keep a heavy or optional module out of a light import, saying so.

Read from the source with `ast` and `tokenize`: nothing of the package is imported,
so no TensorFlow either.
"""

import ast
import io
import pathlib
import tokenize
from typing import Dict, List, Set, Tuple

import pytest

pytestmark = pytest.mark.unit

PACKAGE = "export_archive"
SOURCE = pathlib.Path(__file__).resolve().parents[2] / "src" / PACKAGE
# The bottom TensorFlow layer: of this package it may import only these (see its
# docstring: the serving check's process imports it too).
SAVED_MODEL_IO_MAY_IMPORT = {"constants", "errors"}


def _modules() -> Dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(SOURCE.glob("*.py"))}


def _targets(node: ast.AST, modules: Set[str]) -> Set[str]:
    """The package's modules that an import statement imports."""
    names: List[str] = []
    if isinstance(node, ast.Import):
        names = [a.name.split(".")[1] for a in node.names
                 if a.name.startswith(PACKAGE + ".")]
    elif isinstance(node, ast.ImportFrom):
        if node.level == 1:   # from . import x / from .x import y
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        elif node.module == PACKAGE:
            names = [a.name for a in node.names]
        elif node.module and node.module.startswith(PACKAGE + "."):
            names = [node.module.split(".")[1]]
    return {n for n in names if n in modules}


def _function_imports(tree: ast.Module) -> List[ast.stmt]:
    """The import statements inside functions (at any depth)."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in found:
                    found.append(node)
    return sorted(found, key=lambda n: n.lineno)


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= _targets(node, set(modules)) - {name}
    return graph


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _uncommented(source: str) -> List[Tuple[int, str]]:
    """(line, statement) of each import inside a function with no comment on its
    line(s) or the line before; an import right below an explained one (a group of
    imports) shares its comment."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0] for t in tokens if t.type == tokenize.COMMENT}
    explained: Dict[int, bool] = {}   # end line of an inner import -> explained
    out = []
    for node in _function_imports(ast.parse(source)):
        ok = any(line in comments for line in range(node.lineno - 1, node.end_lineno + 1)) \
            or explained.get(node.lineno - 1, False)
        explained[node.end_lineno] = ok
        if not ok:
            out.append((node.lineno, ast.get_source_segment(source, node)))
    return out


def test_the_modules_import_each_other_without_a_circle():
    """Counting imports inside functions too: a circle hidden in a function is one."""
    circles = _circles(_graph())
    assert not circles, (
        "import circles in src/export_archive (strongly connected components, counting "
        f"imports inside functions): {circles}; move what both sides need to a module "
        "below them")


def test_every_import_inside_a_function_says_why():
    missing = [(path.stem, line, text) for path in sorted(SOURCE.glob("*.py"))
               for line, text in _uncommented(path.read_text())]
    assert not missing, (
        "imports inside functions without a comment on their line or the line before "
        "(an import inside a function must keep TensorFlow, TFX, KFP or another heavy or "
        "optional module out of a light import, and say so; otherwise import it at the "
        "top): " + "; ".join(f"{m}.py:{line}: {text}" for m, line, text in missing))


def test_saved_model_io_is_the_bottom_tensorflow_layer():
    assert _graph()["saved_model_io"] <= SAVED_MODEL_IO_MAY_IMPORT


def test_the_checks_find_what_they_look_for():
    """The helpers above on made-up code: a circle through a function-level import
    is found, and so is an import inside a function without a comment."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
    source = ("import os  # top level: no comment needed\n"
              "def f():\n    import b\n\n\n"
              "def g():\n    # why\n    import c\n    import d\n\n"
              "    x = 1\n    import e\n"
              "    import f  # why\n")
    assert [line for line, _ in _uncommented(source)] == [3, 12]
    assert _targets(ast.parse("from export_archive import a, z").body[0], {"a"}) == {"a"}
    assert _targets(ast.parse("import export_archive.b as x").body[0], {"b"}) == {"b"}
