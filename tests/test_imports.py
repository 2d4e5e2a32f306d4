"""Import rules of the house (spec/adapters.md, "Public surface"): no module imports
another module's private name, the import graph of tilespec, tilespec_torch and
tilespec_tf has no circle, and an adapter uses only the reference names
spec/adapters.md lists.

Everything here reads the source with ``ast``; nothing is imported, so the test
needs neither torch nor TensorFlow.

Which imports make the graph (for (b)): every import that runs when a module is
imported (module level, including inside a top-level ``if``/``try``), in every
package; and in the two adapter packages also the imports inside functions. The
reference defers some imports into functions on purpose (a dataset building its
loaders, a normalizer handing a tensor to an adapter's kernels, the CLI and audit
tools), and those are not counted; an adapter has no such need, so a deferred
import there still counts. ``importlib.import_module`` calls with computed names
are not seen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tilespec": ROOT / "reference",
            "tilespec_torch": ROOT / "adapters_torch" / "tilespec_torch",
            "tilespec_tf": ROOT / "adapters_tf" / "tilespec_tf"}
ADAPTERS = ("tilespec_torch", "tilespec_tf")

#: Private names one adapter module may take from another module of the same
#: adapter (none today; each entry would say why).
ALLOWED_PRIVATE: set = set()

#: Import circles that may remain, as sorted tuples of their modules (none today).
ALLOWED_CIRCLES: set = set()


def _modules() -> dict:
    """{dotted module name: path} of every .py file of the three packages."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _house(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PACKAGES


class _Imports(ast.NodeVisitor):
    """The imports of one module: (line, imported module, imported name or None,
    bound alias, at module level?), and which aliases name house modules."""

    def __init__(self, module: str, path: Path):
        self.module = module
        self.package = module.split(".") if path.name == "__init__.py" else \
            module.split(".")[:-1]
        self.found: list = []
        self.module_aliases: dict = {}   # alias -> house module it names
        self.depth = 0

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.package[:len(self.package) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node):
        for a in node.names:
            if _house(a.name):
                self.found.append((node.lineno, a.name, None, self.depth == 0))
                if a.asname:
                    self.module_aliases[a.asname] = a.name
                else:
                    self.module_aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])

    def visit_ImportFrom(self, node):
        mod = self._resolve(node)
        if not _house(mod):
            return
        for a in node.names:
            sub = f"{mod}.{a.name}"
            if sub in MODULES:
                self.found.append((node.lineno, sub, None, self.depth == 0))
                self.module_aliases[a.asname or a.name] = sub
            else:
                self.found.append((node.lineno, mod, a.name, self.depth == 0))


def _parse(module: str):
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = _Imports(module, path)
    imports.visit(tree)
    return tree, imports


PARSED = {m: _parse(m) for m in MODULES}


def _where(module: str, line: int) -> str:
    path = MODULES[module]
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


def _reference_private_attributes() -> set:
    """Private attribute and method names the reference's classes define: an adapter
    reading one of them off an object (not ``self``) reaches into a reference class."""
    names = set()
    for module, (tree, _) in PARSED.items():
        if not module.startswith("tilespec.") and module != "tilespec":
            continue
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                        _is_private(node.name):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                        isinstance(node.value, ast.Name) and node.value.id == "self" and \
                        _is_private(node.attr):
                    names.add(node.attr)
    return names


def private_uses() -> list:
    """(module, what, file:line) for every private name a module takes from another."""
    ref_private = _reference_private_attributes()
    out = []
    for module, (tree, imports) in PARSED.items():
        for line, mod, name, _ in imports.found:
            if name is not None and _is_private(name) and mod != module:
                out.append((module, f"{mod}.{name}", _where(module, line)))
        aliases = {a: m for a, m in imports.module_aliases.items() if m != module}
        adapter = module.split(".")[0] in ADAPTERS
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in aliases:
                out.append((module, f"{aliases[base.id]}.{node.attr}",
                            _where(module, node.lineno)))
            elif adapter and node.attr in ref_private and not (
                    isinstance(base, ast.Name) and base.id in ("self", "cls")):
                out.append((module, f"{ast.unparse(base)}.{node.attr}",
                            _where(module, node.lineno)))
    return out


def test_no_module_imports_another_modules_private_name():
    found = [(m, what, where) for m, what, where in private_uses()
             if (m, what) not in ALLOWED_PRIVATE]
    assert not found, "private names used across modules:\n" + "\n".join(
        f"  {where}: {m} uses {what}" for m, what, where in found)


def test_the_private_name_check_sees_each_form(tmp_path):
    """The check itself: each form of reaching a private name is reported."""
    src = ("from tilespec.ops import _check_int\n"
           "from tilespec import ops as _ref\n"
           "def f(dataset):\n"
           "    _ref._resize_size(3)\n"
           "    return dataset._loader_options({})\n")
    module = "tilespec_tf.probe"
    path = tmp_path / "probe.py"
    path.write_text(src)
    MODULES[module] = path
    PARSED[module] = _parse(module)
    try:
        found = {(what, where.rsplit(":", 1)[1]) for m, what, where in private_uses()
                 if m == module}
    finally:
        del MODULES[module], PARSED[module]
    assert found == {("tilespec.ops._check_int", "1"), ("tilespec.ops._resize_size", "4"),
                     ("dataset._loader_options", "5")}


def import_graph() -> dict:
    """{module: {imported module: first line}} by the rule of this file's docstring."""
    graph: dict = {m: {} for m in MODULES}
    for module, (_, imports) in PARSED.items():
        adapter = module.split(".")[0] in ADAPTERS
        for line, mod, name, top in imports.found:
            if not (top or adapter):
                continue
            target = mod if mod in MODULES else None
            if target and target != module:
                graph[module].setdefault(target, line)
    return graph


def circles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

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
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circle():
    graph = import_graph()
    found = [c for c in circles(graph) if c not in ALLOWED_CIRCLES]

    def describe(c):
        return "\n".join(f"    {a} -> {b} ({_where(a, graph[a][b])})"
                         for a in c for b in sorted(graph[a]) if b in c)

    assert not found, "import circles:\n" + "\n".join(
        f"  {' <-> '.join(c)}:\n{describe(c)}" for c in found)


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert circles(graph) == [("a", "b", "c")]
    assert circles({"a": {"b": 1}, "b": {}}) == []


# -- (c) the public surface ---------------------------------------------------------------------

SURFACE_HEADING = "## Public surface"


def public_surface() -> set:
    """``module.name`` entries of spec/adapters.md's "Public surface" section: lines
    ``- `tilespec.module`: `name`, `name`, ...``."""
    text = (ROOT / "spec" / "adapters.md").read_text(encoding="utf-8")
    assert SURFACE_HEADING in text, f"spec/adapters.md has no {SURFACE_HEADING!r} section"
    section = text.split(SURFACE_HEADING, 1)[1].split("\n## ", 1)[0]
    out = set()
    for m in re.finditer(r"^- `(tilespec(?:\.\w+)*)`: (.+)$", section, re.M):
        for name in re.findall(r"`(\w+)`", m.group(2)):
            out.add(f"{m.group(1)}.{name}")
    return out


def adapter_reference_names() -> dict:
    """{``tilespec.module.name``: first file:line} for every reference name an adapter
    imports, or reads as an attribute of an imported reference module."""
    out: dict = {}
    for module, (tree, imports) in PARSED.items():
        if module.split(".")[0] not in ADAPTERS:
            continue
        for line, mod, name, _ in imports.found:
            if mod.split(".")[0] == "tilespec" and name is not None:
                out.setdefault(f"{mod}.{name}", _where(module, line))
        aliases = {a: m for a, m in imports.module_aliases.items()
                   if m.split(".")[0] == "tilespec"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in aliases:
                out.setdefault(f"{aliases[node.value.id]}.{node.attr}",
                               _where(module, node.lineno))
    return out


def test_adapters_use_only_the_listed_public_surface():
    surface = public_surface()
    used = adapter_reference_names()
    unlisted = sorted(n for n in used if n not in surface)
    assert not unlisted, ("reference names an adapter uses that spec/adapters.md, "
                          f"{SURFACE_HEADING!r}, does not list:\n" + "\n".join(
                              f"  {used[n]}: {n}" for n in unlisted))


def test_the_listed_surface_exists_and_is_public():
    """Every listed name is defined (or imported) at the top of its module and public;
    where the module has ``__all__``, it is in it."""
    bad = []
    for entry in sorted(public_surface()):
        module, name = entry.rsplit(".", 1)
        if module not in MODULES:
            bad.append(f"{entry}: no module {module}")
            continue
        tree, _ = PARSED[module]
        defined, all_names = set(), None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [e for t in targets
                         for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
                for t in names:
                    if isinstance(t, ast.Name):
                        defined.add(t.id)
                        if t.id == "__all__":
                            all_names = set(ast.literal_eval(node.value))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        if name not in defined:
            bad.append(f"{entry}: not defined in {MODULES[module].relative_to(ROOT)}")
        elif _is_private(name):
            bad.append(f"{entry}: a private name")
        elif all_names is not None and name not in all_names:
            bad.append(f"{entry}: not in {module}.__all__")
    assert not bad, "spec/adapters.md's public surface:\n" + "\n".join(f"  {b}" for b in bad)


def test_the_surface_section_parses():
    assert {"tilespec.ops.check_int", "tilespec.hookimpl"} <= public_surface()
