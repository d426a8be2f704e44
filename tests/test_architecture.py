"""The architecture rules of issue 8, checked on the source so they stay true.

* every module under ``pyvirtio/`` says its contract in a module docstring, and every public class, function,
  method and property has a docstring;
* nothing picks a class by name at run time (``importlib``, ``__import__``, ``import_module``,
  ``getattr(<module>, name)``, ``sys.modules``, ``globals()``), and no module mutates what another module owns at
  import time (a module-level call or assignment through a name it imported);
* the import contracts in ``pyproject.toml`` hold (``lint-imports``, also run by the test command on its own);
* the architecture picture in ``README.md`` names only modules and packages that exist.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pyvirtio"


def _module_paths() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- docstrings ---------------------------------------------------------------------------------------------------


def _is_setter_or_overload(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A property setter/deleter shares the getter's docstring; an ``@overload`` stub shares the implementation's."""
    for d in node.decorator_list:
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "overload"):
            return True
        if isinstance(d, ast.Name) and d.id == "overload":
            return True
    return False


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import time: the body and the branches of module-level ``if``/``try``/``with``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body)
            for h in node.handlers:
                yield from _module_level(h.body)
            yield from _module_level(node.orelse)
            yield from _module_level(node.finalbody)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def undocumented(path: Path) -> list[str]:
    """``file:line name`` of the module (no docstring) and of every public definition without a docstring."""
    tree = _tree(path)
    missing: list[str] = []
    if ast.get_docstring(tree) is None:
        missing.append(f"{_rel(path)}:1 (module docstring)")

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):  # private, and dunders such as __init__
                continue
            if isinstance(node, ast.ClassDef):
                if ast.get_docstring(node) is None:
                    missing.append(f"{_rel(path)}:{node.lineno} class {prefix}{node.name}")
                visit(node.body, f"{prefix}{node.name}.")
            elif not _is_setter_or_overload(node) and ast.get_docstring(node) is None:
                missing.append(f"{_rel(path)}:{node.lineno} {prefix}{node.name}")

    visit(list(_module_level(tree.body)), "")
    return missing


def test_every_module_and_public_name_has_a_docstring() -> None:
    """Issue 8: module docstrings say each module's contract; public functions, classes, methods have docstrings."""
    missing = [m for p in _module_paths() for m in undocumented(p)]
    assert not missing, "missing docstrings:\n  " + "\n  ".join(missing)


# -- no classes picked by name, no import-time mutation of another module -----------------------------------------

_MODULE_NAMES = frozenset(_dotted(p) for p in _module_paths())


@cache
def _is_module(dotted: str) -> bool:
    if dotted.split(".")[0] == "pyvirtio":
        return dotted in _MODULE_NAMES
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """Names bound by any import in the file, and the subset of them that are modules."""
    names: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                bound = a.asname or a.name.split(".")[0]
                names.add(bound)
                modules.add(bound)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                bound = a.asname or a.name
                names.add(bound)
                if _is_module(f"{base}.{a.name}"):
                    modules.add(bound)
    return names, modules


def _root(expr: ast.expr) -> str | None:
    """The name an attribute/item/call chain starts from: ``a`` for ``a.b[c].d(e)``."""
    while isinstance(expr, (ast.Attribute, ast.Subscript, ast.Call)):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else None


_PICKER_MODULES = ("importlib", "importlib.util", "importlib.machinery", "pkgutil")


def _picks(node: ast.AST, modules: set[str]) -> bool:
    """Whether ``node`` reaches a module or class through a run-time name."""
    if isinstance(node, ast.Import):
        return any(a.name in _PICKER_MODULES for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.module in _PICKER_MODULES or (
            node.module == "importlib" and any(a.name not in ("metadata", "resources") for a in node.names)
        )
    if isinstance(node, ast.Name):
        return node.id in ("__import__", "import_module")
    if isinstance(node, ast.Attribute):
        owner = node.value.id if isinstance(node.value, ast.Name) else None
        return (
            node.attr in ("import_module", "__import__")
            or (node.attr == "modules" and owner == "sys")
            or (node.attr == "__dict__" and owner in modules)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        first = node.args[0] if node.args else None
        return node.func.id == "globals" or (
            node.func.id in ("getattr", "vars") and isinstance(first, ast.Name) and first.id in modules
        )
    return False


def picks_by_name(path: Path) -> list[str]:
    """``file:line code`` of every way to reach a module or class by a run-time name."""
    tree = _tree(path)
    _, modules = _imported_names(tree, _dotted(path), path.name == "__init__.py")
    return [
        f"{_rel(path)}:{getattr(node, 'lineno', 0)} {ast.unparse(node)[:100]}"
        for node in ast.walk(tree)
        if _picks(node, modules)
    ]


def mutates_at_import(path: Path) -> list[str]:
    """``file:line code`` of module-level statements that change something another module owns.

    That is a call statement, an assignment target or a decorator method reached through a name the module
    imported: ``other.register(X)``, ``register(X)``, ``other.TABLE[k] = v``, ``imported_group.add_command(c)``,
    ``@imported_group.command()``. Calling or decorating with an imported *module's* function or class
    (``@dataclass``, ``@click.option(...)``) builds something new and is fine. ``if __name__ == "__main__"`` does
    not run at import.
    """
    tree = _tree(path)
    names, modules = _imported_names(tree, _dotted(path), path.name == "__init__.py")
    found: list[str] = []

    def hit(node: ast.AST, code: str) -> None:
        found.append(f"{_rel(path)}:{getattr(node, 'lineno', 0)} {code[:100]}")

    body = [
        n
        for n in tree.body
        if not (isinstance(n, ast.If) and ast.unparse(n.test).replace("'", '"') == '__name__ == "__main__"')
    ]
    for node in _module_level(body):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            if _root(node.value.func) in names:
                hit(node, ast.unparse(node))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)) and _root(sub) in names:
                        hit(node, ast.unparse(node))
                        break
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in node.decorator_list:
                fn = d.func if isinstance(d, ast.Call) else d
                root = _root(fn)
                if isinstance(fn, ast.Attribute) and root in names and root not in modules:
                    hit(d, f"@{ast.unparse(d)} on {node.name}")
    return found


def test_nothing_picks_classes_by_name() -> None:
    """Issue 8: no importlib/__import__/import_module/getattr(module, name): every choice is an explicit table."""
    found = [f for p in _module_paths() for f in picks_by_name(p)]
    assert not found, "classes or modules picked by a run-time name:\n  " + "\n  ".join(found)


def test_no_module_mutates_another_at_import() -> None:
    """Issue 8: no hidden registries: importing a module never fills a table or object another module owns."""
    found = [f for p in _module_paths() for f in mutates_at_import(p)]
    assert not found, "import-time mutation through an imported name:\n  " + "\n  ".join(found)


# -- import contracts ---------------------------------------------------------------------------------------------


def test_import_contracts_hold() -> None:
    """Issue 8: the layers, guest-never-imports-host, spec-imports-nothing, no cycles (pyproject.toml contracts)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, f"lint-imports failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


# -- the README's picture -----------------------------------------------------------------------------------------

#: A module path in the picture: ``host/``, ``guest/gpu/``, ``fidelity.py``, ``host/pci/function.py``.
_PATH_TOKEN = re.compile(r"(?<![\w./-])([A-Za-z_]\w*(?:/[A-Za-z_]\w*)*(?:/|\.py))(?![\w/.-])")


def architecture_picture(readme: str) -> str:
    """The first fenced block under ``## Architecture``; AssertionError if there is none."""
    section = re.search(r"^## Architecture[^\n]*\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section is not None, "README.md has no '## Architecture' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block is not None, "the Architecture section has no fenced picture"
    return block.group(1)


def picture_paths(picture: str) -> list[tuple[str, bool]]:
    """Module-path tokens of the picture, each with whether it starts its line (then it is a top-level entry)."""
    out: list[tuple[str, bool]] = []
    for line in picture.splitlines():
        for m in _PATH_TOKEN.finditer(line):
            out.append((m.group(1), not line[: m.start()].strip()))
    return out


def missing_from_tree(picture: str, pkg: Path = PKG) -> list[str]:
    """Tokens naming nothing under ``pkg``.

    A token with a ``/`` inside (``host/pci/``, ``guest/gpu/driver.py``) and a token that starts its line
    (``machine.py``, ``spec/``) are paths from ``pkg``; any other bare name (``kernel.py`` inside a box) must exist
    somewhere below ``pkg``.
    """
    missing: list[str] = []
    for token, top in picture_paths(picture):
        is_dir = token.endswith("/")
        rel = token.rstrip("/")
        if top or "/" in rel:
            target = pkg / rel
            ok = target.is_dir() if is_dir else target.is_file()
        else:
            ok = any((p.is_dir() if is_dir else p.is_file()) and "__pycache__" not in p.parts for p in pkg.rglob(rel))
        if not ok:
            missing.append(token)
    return list(dict.fromkeys(missing))


def test_readme_picture_names_only_existing_modules() -> None:
    """Issue 8: the README's architecture picture matches the tree."""
    picture = architecture_picture((ROOT / "README.md").read_text(encoding="utf-8"))
    tokens = picture_paths(picture)
    assert len(tokens) >= 5, f"the picture names only {len(tokens)} modules: has its format changed?"
    missing = missing_from_tree(picture)
    assert not missing, f"README architecture picture names modules that do not exist under pyvirtio/: {missing}"


@pytest.mark.parametrize(
    ("picture", "missing"),
    [
        (" spec/    numbers\n machine.py\n", []),
        (" nosuch/  numbers\n", ["nosuch/"]),
        (" │ kernel.py  PM core │  host/pci/function.py  host/pci/nosuch.py\n", ["host/pci/nosuch.py"]),
        (" gpu/ is nested, not top-level; config_read/config_write is prose\n", ["gpu/"]),
        (" x  │ lifecycle.py  nosuch.py │\n", ["nosuch.py"]),
    ],
)
def test_readme_picture_check_itself(picture: str, missing: list[str]) -> None:
    """The picture check finds what is missing (so the README test can fail)."""
    assert missing_from_tree(picture) == missing
