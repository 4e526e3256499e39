"""keyveil's modules import each other without cycles, counting imports inside functions too.

A function-level import hides a cycle from Python (it works at run time) but
not from a reader: the layering DESIGN.md §1 draws must hold for every
``import`` statement anywhere in a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import keyveil

ROOT = Path(keyveil.__file__).parent

MAX_LINES = 450  # models/ and attacks/: one concept per file


def module_names(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` file under ``root``."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any ``import``/``from`` statement, at any depth).

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg``; a package importing its own submodules (its
    ``__init__`` re-exporting them) is not counted.
    """
    mods = module_names(root)
    top = root.name

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level - 1 packages
                    pkg = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    pkg = node.module or ""
                subs = [f"{pkg}.{a.name}" for a in node.names if f"{pkg}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [pkg, *subs]
            else:
                continue
            for t in targets:
                r = resolve(t) if t.split(".")[0] == top else None
                if r is not None and r != mod and not r.startswith(mod + "."):
                    graph[mod].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (pkg / "c.py").write_text("import toy.b\n")
    graph = import_graph(pkg)
    assert graph == {"toy": set(), "toy.a": {"toy.b"}, "toy.b": {"toy.a"}, "toy.c": {"toy.b"}}
    assert cycles(graph) == [{"toy.a", "toy.b"}]


def test_no_import_cycles_anywhere():
    found = cycles(import_graph(ROOT))
    assert not found, f"import cycles (counting function-level imports): {[sorted(c) for c in found]}"


def test_model_and_attack_files_are_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for folder in ("models", "attacks") for p in (ROOT / folder).rglob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
