#!/usr/bin/env python3
"""Write the inventory's ``implemented_in`` and ``tests`` fields from the code tags and the test markers (issue 9).

Usage (from the repository root)::

    scripts/sync_normative.py            # rewrite pyvirtio/spec/normative.toml (atomically; byte-stable)
    scripts/sync_normative.py --check    # exit 1 and list the differences when the file is out of date
    scripts/sync_normative.py --tags     # print every code tag and the reference it maps to

Where the references come from
    Code: a comment ``# spec: <id>[, <id>...]`` in any ``pyvirtio/**/*.py`` (found with :mod:`tokenize`, so a
    ``# spec:`` inside a string is not one). Each id may carry a remark in parentheses, and the list may end
    with a remark after a dash: ``# spec: dev:pci/isr#2 (bit 1), dev:pci/isr#3 — before the interrupt``.
    The reference is ``module:qualname`` of the innermost class or function whose lines (decorators included)
    hold the comment, found with :mod:`ast`; a function nested in a function counts as the outer one (so every
    reference can be imported and looked up with ``getattr``). A comment on its own line(s) directly above a
    ``def``/``class`` (or its decorators), with no blank line between, belongs to that definition. A tag outside
    every class and function maps to the module (``pyvirtio.spec.constants``).

    Tests: ``@pytest.mark.spec(<id>, ...)``, read from pytest's own collection of ``tests/`` (``pytest
    --collect-only`` in a subprocess with this module as a plugin: nothing runs; real-VM tests are collected too).
    The reference is the node id ``tests/path.py::test_name``; a parametrized test whose every case carries the id
    is listed once without its ``[...]``, otherwise the cases that carry it are listed.

What is written
    For every statement both lists, sorted, replacing what was there; every other byte of the file is kept. The
    result is parsed again and compared field by field before the file is replaced. A tag or marker naming an
    unknown id is an error (exit status 2, each one listed with its place).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import tokenize
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's pyvirtio, when run as a script
from pyvirtio.atomicio import write_text_atomic
from pyvirtio.spec.normative import INVENTORY_FILE, Inventory, format_field, parse_inventory

#: The repository root (this file is ``scripts/sync_normative.py``).
ROOT = Path(__file__).resolve().parents[1]
#: The inventory, relative to the root.
INVENTORY = Path("pyvirtio/spec") / INVENTORY_FILE
#: Where code tags are looked for, relative to the root.
PACKAGE = "pyvirtio"
#: Where tests are collected from, relative to the root.
TESTS = "tests"
#: Environment variable naming the JSON file the collection plugin writes.
OUT_ENV = "PYVIRTIO_SPEC_COLLECT_OUT"

_ID = r"(?:dev|drv):[a-z0-9]+(?:[-/][a-z0-9]+)*#[1-9][0-9]*"
_NOTE = r"\s*\((?:[^()]|\([^()]*\))*\)"  # "(a remark)", one level of nested parentheses allowed
_ITEM = rf"{_ID}(?:{_NOTE})?"
#: "# spec: <id> [(note)][, <id> [(note)]...] [— note]": ids, each with an optional remark in parentheses, and an
#: optional trailing remark after a dash, "--" or ";"
_TAG_RE = re.compile(rf"#\s*spec:\s*(?P<ids>{_ITEM}(?:\s*,\s*{_ITEM})*)\s*(?:(?:—|–|--|-|;)(?P<note>.*))?$")
_TAG_START_RE = re.compile(r"#\s*spec:")
_ID_RE = re.compile(_ID)
_PARAM_RE = re.compile(r"^(?P<base>.*?)(?P<param>\[.*\])?$", re.S)
_REF_FIELDS = ("implemented_in", "tests")


class SyncError(Exception):
    """The tags, the markers or the inventory cannot be brought in line; the message lists every problem."""


@dataclass(frozen=True)
class Tag:
    """One ``# spec:`` comment: where it is and the reference it maps to."""

    path: str  # relative to the root, e.g. "pyvirtio/host/device.py"
    line: int
    ids: tuple[str, ...]
    ref: str  # "module:qualname" or "module"


@dataclass(frozen=True)
class Collection:
    """pytest's collection: every node id, with the statement ids its ``spec`` markers name (possibly none)."""

    items: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync` found: the references, the file's current and new text, and their differences."""

    tags: tuple[Tag, ...]
    collection: Collection
    refs: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]  # id -> (implemented_in, tests)
    old_text: str
    new_text: str
    differences: tuple[str, ...]

    @property
    def in_sync(self) -> bool:
        """The file already says what the tags and markers say."""
        return self.old_text == self.new_text


# ------------------------------------------------------------------------------------------------------------------
# Code tags
# ------------------------------------------------------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    """``pyvirtio/host/device.py`` -> ``pyvirtio.host.device``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class _Scope:
    qualname: str
    start: int  # first line, decorators included
    def_line: int
    end: int


def _scopes(tree: ast.Module) -> list[_Scope]:
    """Classes and functions with a ``getattr``-able qualname (nothing nested inside a function)."""
    out: list[_Scope] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                q = f"{prefix}{child.name}"
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append(_Scope(q, start, child.lineno, child.end_lineno or child.lineno))
                if isinstance(child, ast.ClassDef):
                    visit(child, q + ".")
            elif not isinstance(child, ast.expr):
                visit(child, prefix)  # if/try/with blocks at module or class level

    visit(tree, "")
    return out


def tags_in_source(source: str, path: str, module: str) -> list[Tag]:
    """The ``# spec:`` tags of one module's source. Raises :class:`SyncError` on a malformed tag."""
    tree = ast.parse(source, filename=path)
    scopes = _scopes(tree)
    lines = source.splitlines()
    starts = {s.start: s for s in scopes}
    problems: list[str] = []
    out: list[Tag] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        if not _TAG_START_RE.match(tok.string):
            continue
        line = tok.start[0]
        m = _TAG_RE.fullmatch(tok.string.rstrip())
        if m is None:
            problems.append(f"{path}:{line}: malformed tag {tok.string!r} (expected "
                            "'# spec: dev:block#n [(remark)], drv:block#n ... [— remark]')")
            continue
        ids = tuple(dict.fromkeys(_ID_RE.findall(re.sub(_NOTE, "", m.group("ids")))))
        scope = _scope_of(line, lines, scopes, starts, own_line=not lines[line - 1][: tok.start[1]].strip())
        out.append(Tag(path, line, ids, f"{module}:{scope.qualname}" if scope else module))
    if problems:
        raise SyncError("\n".join(problems))
    return out


def _scope_of(line: int, lines: list[str], scopes: list[_Scope], starts: Mapping[int, _Scope],
              own_line: bool) -> _Scope | None:
    if own_line:  # a comment block directly above a definition belongs to it
        n = line + 1
        while n <= len(lines) and lines[n - 1].lstrip().startswith("#"):
            n += 1
        if n in starts:
            return starts[n]
    inside = [s for s in scopes if s.start <= line <= s.end]
    return max(inside, key=lambda s: s.start) if inside else None


def scan_tags(root: Path = ROOT) -> list[Tag]:
    """Every tag under ``root/pyvirtio``, in file and line order."""
    out: list[Tag] = []
    problems: list[str] = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        try:
            out += tags_in_source(path.read_text(encoding="utf-8"), rel, module_name(path, root))
        except SyncError as e:
            problems.append(str(e))
        except (SyntaxError, tokenize.TokenError) as e:
            problems.append(f"{rel}: cannot parse: {e}")
    if problems:
        raise SyncError("\n".join(problems))
    return out


# ------------------------------------------------------------------------------------------------------------------
# Test markers (pytest collection)
# ------------------------------------------------------------------------------------------------------------------


def pytest_collection_finish(session: object) -> None:
    """pytest hook (this module is loaded with ``-p sync_normative``): write every collected node id and the ids
    of its ``spec`` markers to the file named by :data:`OUT_ENV`."""
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    items: dict[str, list[str]] = {}
    for item in getattr(session, "items", []):
        ids: list[str] = []
        for mark in item.iter_markers("spec"):
            ids += [a for a in mark.args if isinstance(a, str) and a not in ids]
        items[item.nodeid] = ids
    Path(out).write_text(json.dumps(items, sort_keys=True), encoding="utf-8")


def collect_markers(root: Path = ROOT, *, python: str = sys.executable) -> Collection:
    """Run pytest's collection of ``root/tests`` in a subprocess (nothing is executed) and return it.

    Raises :class:`SyncError` with pytest's output when the collection fails (an unknown statement id in a
    marker fails it: see ``tests/conftest.py``).
    """
    with tempfile.TemporaryDirectory(prefix="pyvirtio-spec-") as tmp:
        out = Path(tmp) / "collection.json"
        env = dict(os.environ)
        env[OUT_ENV] = str(out)
        paths = [str(root), str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        cmd = [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "sync_normative",
               "-o", "addopts=", TESTS]
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0 or not out.is_file():
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-30:])
            raise SyncError(f"pytest collection failed (status {res.returncode}):\n{tail}")
        data = json.loads(out.read_text(encoding="utf-8"))
    return Collection({str(k): tuple(str(x) for x in v) for k, v in sorted(data.items())})


def marker_references(collection: Collection) -> dict[str, list[str]]:
    """Statement id -> the node ids naming it; a parametrized test whose every case names it is listed once."""
    cases: dict[str, list[str]] = defaultdict(list)
    for nodeid in collection.items:
        cases[_PARAM_RE.match(nodeid).group("base")].append(nodeid)  # type: ignore[union-attr]
    out: dict[str, set[str]] = defaultdict(set)
    for base, nodeids in cases.items():
        named: dict[str, list[str]] = defaultdict(list)
        for nodeid in nodeids:
            for sid in collection.items[nodeid]:
                named[sid].append(nodeid)
        for sid, carrying in named.items():
            out[sid].update([base] if len(carrying) == len(nodeids) else carrying)
    return {sid: sorted(v) for sid, v in out.items()}


# ------------------------------------------------------------------------------------------------------------------
# The inventory file
# ------------------------------------------------------------------------------------------------------------------


def references(tags: Iterable[Tag], collection: Collection,
               inventory: Inventory) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Statement id -> (sorted implementing references, sorted tests), for every statement of ``inventory``.

    Raises :class:`SyncError` listing every tag or marker that names an id the inventory does not have.
    """
    impl: dict[str, set[str]] = defaultdict(set)
    unknown: list[str] = []
    for t in tags:
        for sid in t.ids:
            if sid in inventory:
                impl[sid].add(t.ref)
            else:
                unknown.append(f"{t.path}:{t.line}: unknown statement id {sid!r}")
    tests = marker_references(collection)
    unknown += [f"{nodeid}: unknown statement id {sid!r}" for sid, nodeids in tests.items() if sid not in inventory
                for nodeid in nodeids]
    if unknown:
        raise SyncError("\n".join(unknown))
    return {s.id: (tuple(sorted(impl.get(s.id, ()))), tuple(tests.get(s.id, ()))) for s in inventory}


def rewrite(text: str, refs: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> str:
    """``text`` (the inventory) with each statement's two reference fields replaced by ``refs``; every other
    line is kept byte for byte. Raises :class:`SyncError` if a record lacks a field or the result is not the
    same inventory apart from those fields."""
    old = parse_inventory(text)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    current: str | None = None
    in_statement = False
    seen: dict[str, set[str]] = defaultdict(set)
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("["):
            in_statement = stripped == "[[statement]]"
            current = None
        elif in_statement and stripped.startswith("id") and "=" in stripped and current is None:
            current = str(tomllib.loads(stripped)["id"])
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else ""
        if in_statement and current is not None and key in _REF_FIELDS:
            j = i
            while True:  # the value may span lines
                try:
                    tomllib.loads("".join(lines[i : j + 1]))
                    break
                except tomllib.TOMLDecodeError:
                    j += 1
                    if j >= len(lines):
                        raise SyncError(f"{INVENTORY}: statement {current!r}: field {key!r} never ends") from None
            impl, tests = refs[current]
            out.append(format_field(key, impl if key == "implemented_in" else tests) + "\n")
            seen[current].add(key)
            i = j + 1
            continue
        out.append(line)
        i += 1
    missing = [f"{s.id}: {k}" for s in old for k in _REF_FIELDS if k not in seen[s.id]]
    if missing:
        raise SyncError(f"{INVENTORY}: fields not found: " + ", ".join(missing))
    new_text = "".join(out)
    new = parse_inventory(new_text)
    expect = [replace(s, implemented_in=refs[s.id][0], tests=refs[s.id][1]) for s in old]
    if list(new.statements) != expect or new.spec != old.spec or new.contradictions != old.contradictions:
        raise SyncError(f"{INVENTORY}: the rewritten file is not the same inventory (bug in the rewriter)")
    return new_text


def differences(old: Inventory, refs: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    """One line per added or removed reference, per statement, in inventory order."""
    out: list[str] = []
    for s in old:
        for key, have, want in (("implemented_in", s.implemented_in, refs[s.id][0]),
                                ("tests", s.tests, refs[s.id][1])):
            out += [f"{s.id}: {key}: + {r}" for r in want if r not in have]
            out += [f"{s.id}: {key}: - {r}" for r in have if r not in want]
    return out


def sync(root: Path = ROOT, *, check: bool = False, collection: Collection | None = None) -> SyncResult:
    """Compute the inventory the tags and markers call for; write it unless ``check`` (or nothing changed).

    ``collection`` skips running pytest's collection (a test that already has it passes it in).
    """
    path = root / INVENTORY
    old_text = path.read_text(encoding="utf-8")
    inventory = parse_inventory(old_text, str(INVENTORY))
    tags = scan_tags(root)
    coll = collection if collection is not None else collect_markers(root)
    refs = references(tags, coll, inventory)
    new_text = rewrite(old_text, refs)
    result = SyncResult(tuple(tags), coll, refs, old_text, new_text, tuple(differences(inventory, refs)))
    if not check and not result.in_sync:
        write_text_atomic(path, new_text)
    return result


def main(argv: list[str] | None = None) -> int:
    """The command line; see the module docstring."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the inventory is out of date")
    ap.add_argument("--tags", action="store_true", help="print every code tag with its reference and stop")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = ap.parse_args(argv)
    try:
        if args.tags:
            for t in scan_tags(args.root):
                print(f"{t.path}:{t.line}: {t.ref}: {', '.join(t.ids)}")
            return 0
        result = sync(args.root, check=args.check)
    except SyncError as e:
        print(f"sync_normative: error: {e}", file=sys.stderr)
        return 2
    for line in result.differences:
        print(line)
    implemented = sum(1 for v in result.refs.values() if v[0])
    tested = sum(1 for v in result.refs.values() if v[1])
    state = "in sync" if result.in_sync else ("OUT OF DATE" if args.check else "updated")
    print(f"{INVENTORY}: {state}; {len(result.tags)} code tags, "
          f"{sum(1 for v in result.collection.items.values() if v)} marked tests; "
          f"{implemented} statements with code, {tested} with tests")
    return 1 if args.check and not result.in_sync else 0


if __name__ == "__main__":
    sys.exit(main())
