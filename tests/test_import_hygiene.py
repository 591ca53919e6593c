"""The package's structure (issue #17): no import cycle in backbones/ (function-level imports counted), timm's private
symbols imported in backbones/_timm.py only, no function over 100 lines. Static (reads the sources): < 1 s."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'backbones'


def _modules():
    for path in sorted(PKG.rglob('*.py')):
        parts = path.relative_to(PKG.parent).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        yield name, path, ast.parse(path.read_text(encoding='utf-8'))


def _imports(name: str, path: Path, tree: ast.AST):
    """Every backbones module ``name`` imports, at any depth of the file (``from . import x`` counts x and the
    package it comes from: importing a name from a package runs that package)."""
    package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = '.'.join(package[:len(package) - node.level + 1] + [node.module] if node.module else
                            package[:len(package) - node.level + 1]) if node.level else (node.module or '')
            if base.startswith('backbones'):
                yield base
                yield from (f'{base}.{a.name}' for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith('backbones'))


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    mods = {name: (path, tree) for name, path, tree in _modules()}
    graph = {name: {d for d in _imports(name, path, tree) if d in mods and d != name}
             for name, (path, tree) in mods.items()}
    assert _cycles(graph) == []


def test_a_cycle_is_found():  # the checker itself: a two-module cycle and a self-contained chain
    assert _cycles({'a': {'b'}, 'b': {'a'}, 'c': {'a'}}) == [['a', 'b']]


def test_timm_private_symbols_in_one_module():
    def private(node) -> bool:  # from timm.models._registry import x / from timm.x import _y
        return isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'timm' and (
            any(part.startswith('_') for part in node.module.split('.')) or any(a.name.startswith('_')
                                                                                for a in node.names))
    users = sorted({str(p.relative_to(PKG)) for _, p, tree in _modules() for n in ast.walk(tree) if private(n)})
    assert users == ['_timm.py']


def test_no_function_over_100_lines():
    long = [f'{p.relative_to(PKG)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})'
            for _, p, tree in _modules() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 100]
    assert long == []
