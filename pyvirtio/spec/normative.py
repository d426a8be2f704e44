"""The normative inventory: the virtio 1.4 statements pyvirtio implements, as typed data (issue 9).

The data is ``normative.toml`` next to this module, generated from the spec's LaTeX sources (tag ``v1.4-cs01``) by
``scripts/extract_normative.py`` and then hand-filled. One :class:`Statement` per MUST / MUST NOT / SHALL /
REQUIRED / SHOULD / SHOULD NOT / RECOMMENDED sentence of the device and driver requirement blocks (and the
"Legacy Interface" sections) of the parts pyvirtio implements: device status, feature bits, reset, device
configuration space, virtqueue reset, split virtqueues, device initialisation and cleanup, Device Suspend, reserved
feature bits, the virtio-PCI transport, entropy and GPU.

Ids are ``<side>:<block>#<n>`` (``dev:pci/common-cfg#3`` = the third device statement of the common configuration
block); a test names the statement it checks by that id. The spec's own sentences are not stored, only
pyvirtio's ``summary`` and a ``digest`` of the sentence (see the script for the exact rules).

Where a statement is implemented and which tests check it are not typed in by hand: code names a statement with a
comment tag ``# spec: <id>[, <id>...]`` on or right above the implementing line, a test with
``@pytest.mark.spec(<id>, ...)``, and ``scripts/sync_normative.py`` writes the ``implemented_in``
(``module:qualname`` of the enclosing function or class, or ``module`` for a tag outside both) and ``tests``
(``tests/path.py::test_name``) fields from them; ``tests/spec/test_inventory_coverage.py`` fails when the file is
out of date. A statement the code is known to contradict is listed in a ``[[contradiction]]`` table (none is the
goal).

Contract: :func:`load_inventory` validates every field of every record and raises :class:`InventoryError` (a
:class:`ValueError`; the spec layer imports nothing of pyvirtio, so it is defined here) with a one-line message
naming the record and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

#: Package data file holding the inventory.
INVENTORY_FILE = "normative.toml"
#: Longest accepted ``summary`` (the authoring guideline is about 110 characters).
SUMMARY_MAX = 120

_ID_RE = re.compile(r"(dev|drv):([a-z0-9]+(?:[-/][a-z0-9]+)*)#([1-9][0-9]*)")
_CLAUSE_RE = re.compile(r"[0-9A-Z]+(?:\.[0-9]+)*")
_DIGEST_RE = re.compile(r"[0-9a-f]{16}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_PY_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``module:qualname`` (a function, method or class), or ``module`` alone for a tag outside any of them.
_IMPL_RE = re.compile(rf"{_PY_NAME}(?:\.{_PY_NAME})*(?::{_PY_NAME}(?:\.{_PY_NAME})*)?")
_TEST_RE = re.compile(rf"tests/[A-Za-z0-9_/]+\.py::{_PY_NAME}(?:::{_PY_NAME})*(?:\[[^\]\n]*\])?")
_FILE_RE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\.tex")
_E = TypeVar("_E", bound=StrEnum)


class InventoryError(ValueError):
    """A record of the normative inventory is malformed; the message names the record and the field."""


class Side(StrEnum):
    """Which half a statement binds."""

    DEVICE = "device"
    DRIVER = "driver"

    @property
    def prefix(self) -> str:
        """The id prefix of this side (``dev`` / ``drv``)."""
        return "dev" if self is Side.DEVICE else "drv"


class Level(StrEnum):
    """The strongest RFC 2119 keyword of a statement."""

    MUST = "MUST"
    MUST_NOT = "MUST NOT"
    SHALL = "SHALL"
    SHALL_NOT = "SHALL NOT"
    REQUIRED = "REQUIRED"
    SHOULD = "SHOULD"
    SHOULD_NOT = "SHOULD NOT"
    RECOMMENDED = "RECOMMENDED"
    NOT_RECOMMENDED = "NOT RECOMMENDED"

    @property
    def absolute(self) -> bool:
        """An absolute requirement (MUST family), as opposed to a recommendation (SHOULD family)."""
        return self in (Level.MUST, Level.MUST_NOT, Level.SHALL, Level.SHALL_NOT, Level.REQUIRED)


@dataclass(frozen=True)
class Statement:
    """One normative sentence of the spec and where pyvirtio honours and tests it."""

    id: str
    side: Side
    level: Level
    clause: str  # section number of the requirement heading, e.g. "4.1.4.3.1"
    section: str  # title path of the topic, e.g. "Virtio Transport Options / ... / ISR status capability"
    file: str  # spec file at the tagged commit, relative to the spec checkout
    line: int  # 1-based line where the sentence starts
    digest: str  # sha256 (16 hex) of the whitespace-normalised sentence source
    summary: str  # pyvirtio's paraphrase (never the spec's wording)
    applies: bool
    reason: str  # why not, when ``applies`` is false
    implemented_in: tuple[str, ...]  # "module:qualname"
    tests: tuple[str, ...]  # "tests/path.py::test_name"

    @property
    def block(self) -> str:
        """The block slug of the id (``pci/common-cfg`` for ``dev:pci/common-cfg#3``)."""
        return self.id.split(":", 1)[1].rsplit("#", 1)[0]

    @property
    def ordinal(self) -> int:
        """The statement's number within its block and side."""
        return int(self.id.rsplit("#", 1)[1])

    @property
    def implemented(self) -> bool:
        """Some code names this statement (``implemented_in`` is not empty)."""
        return bool(self.implemented_in)

    @property
    def tested(self) -> bool:
        """Some test names this statement (``tests`` is not empty)."""
        return bool(self.tests)

    @property
    def missing(self) -> tuple[str, ...]:
        """What an applicable statement still lacks: ``"code"`` and/or ``"test"`` (nothing when it does not apply)."""
        if not self.applies:
            return ()
        return tuple(what for what, have in (("code", self.implemented), ("test", self.tested)) if not have)


@dataclass(frozen=True)
class SpecSource:
    """The spec revision the inventory was extracted from."""

    revision: str
    commit: str
    repository: str


@dataclass(frozen=True)
class Contradiction:
    """A known place where pyvirtio does the opposite of a statement (a ``[[contradiction]]`` table)."""

    id: str  # the statement contradicted
    where: str  # "module:qualname" (or "module") of the offending code
    note: str  # what the code does instead, one line


@dataclass(frozen=True)
class Inventory:
    """All statements, in spec order, with lookup by id, and the known contradictions (none is the goal)."""

    spec: SpecSource
    statements: tuple[Statement, ...]
    by_id: Mapping[str, Statement]
    contradictions: tuple[Contradiction, ...] = ()

    def __getitem__(self, statement_id: str) -> Statement:
        return self.by_id[statement_id]

    def __contains__(self, statement_id: object) -> bool:
        return statement_id in self.by_id

    def __iter__(self) -> Iterator[Statement]:
        return iter(self.statements)

    def __len__(self) -> int:
        return len(self.statements)

    def only(self, side: Side) -> Inventory:
        """The statements binding ``side`` (and the contradictions of those), as an inventory of their own."""
        kept = tuple(s for s in self.statements if s.side is side)
        return Inventory(self.spec, kept, MappingProxyType({s.id: s for s in kept}),
                         tuple(c for c in self.contradictions if self.by_id[c.id].side is side))


@dataclass(frozen=True)
class SectionCoverage:
    """Counts for one spec section (the device and driver blocks of one topic together)."""

    clause: str
    section: str
    statements: int
    applicable: int
    implemented: int  # applicable statements with an implementing code reference
    tested: int  # applicable statements with a test naming them

    @property
    def implemented_pct(self) -> float:
        """Share of the applicable statements that are implemented, in percent (100 when none applies)."""
        return 100.0 * self.implemented / self.applicable if self.applicable else 100.0

    @property
    def tested_pct(self) -> float:
        """Share of the applicable statements that a test names, in percent (100 when none applies)."""
        return 100.0 * self.tested / self.applicable if self.applicable else 100.0

    @staticmethod
    def total(rows: tuple[SectionCoverage, ...] | list[SectionCoverage]) -> SectionCoverage:
        """The sum of ``rows`` (clause ``""``, section ``"total"``)."""
        return SectionCoverage("", "total", sum(r.statements for r in rows), sum(r.applicable for r in rows),
                               sum(r.implemented for r in rows), sum(r.tested for r in rows))


# ------------------------------------------------------------------------------------------------------------------
# Loading and validation
# ------------------------------------------------------------------------------------------------------------------

_RECORD_FIELDS = ("id", "side", "level", "clause", "section", "file", "line", "digest", "summary", "applies",
                  "reason", "implemented_in", "tests")
_SPEC_FIELDS = ("revision", "commit", "repository")
_CONTRADICTION_FIELDS = ("id", "where", "note")


class _Record:
    """Field access with one-line errors naming the record and the field."""

    def __init__(self, source: str, where: str, data: object) -> None:
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise InventoryError(f"{source}: {where}: not a table")
        self.data: dict[str, object] = data

    def fail(self, name: str, why: str) -> InventoryError:
        return InventoryError(f"{self.source}: {self.where}: field {name!r}: {why}")

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for k in self.data:
            if k not in allowed:
                raise self.fail(k, "unknown field")
        for k in allowed:
            if k not in self.data:
                raise self.fail(k, "missing")

    def text(self, name: str, pattern: re.Pattern[str] | None = None, *, empty: bool = False) -> str:
        v = self.data[name]
        if not isinstance(v, str):
            raise self.fail(name, f"expected a string, got {type(v).__name__}")
        if not empty and not v.strip():
            raise self.fail(name, "empty")
        if "\n" in v or "\r" in v:
            raise self.fail(name, "must be one line")
        if pattern is not None and not pattern.fullmatch(v):
            raise self.fail(name, f"{_short(v)} does not have the expected form")
        return v

    def flag(self, name: str) -> bool:
        v = self.data[name]
        if not isinstance(v, bool):
            raise self.fail(name, f"expected true or false, got {type(v).__name__}")
        return v

    def positive(self, name: str) -> int:
        v = self.data[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.fail(name, f"expected a positive integer, got {_short(v)}")
        return v

    def names(self, name: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
        v = self.data[name]
        if not isinstance(v, list):
            raise self.fail(name, f"expected a list, got {type(v).__name__}")
        out: list[str] = []
        for i, item in enumerate(v):
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.fail(name, f"entry {i} ({_short(item)}) does not have the expected form")
            if item in out:
                raise self.fail(name, f"entry {i} ({_short(item)}) is listed twice")
            out.append(item)
        return tuple(out)

    def choice(self, name: str, enum: type[_E]) -> _E:
        v = self.data[name]
        try:
            if not isinstance(v, str):
                raise ValueError(v)
            return enum(v)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise self.fail(name, f"{_short(v)} is not one of {allowed}") from None


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _statement(source: str, index: int, data: object) -> Statement:
    ident = data.get("id") if isinstance(data, dict) else None
    where = f"statement {ident!r}" if isinstance(ident, str) else f"statement #{index + 1}"
    r = _Record(source, where, data)
    r.check_keys(_RECORD_FIELDS)
    sid = r.text("id", _ID_RE)
    side = r.choice("side", Side)
    if not sid.startswith(side.prefix + ":"):
        raise r.fail("side", f"{side.value!r} does not match the id prefix of {sid!r}")
    applies = r.flag("applies")
    reason = r.text("reason", empty=True)
    if not applies and not reason.strip():
        raise r.fail("reason", "required when applies is false")
    summary = r.text("summary")
    if len(summary) > SUMMARY_MAX:
        raise r.fail("summary", f"{len(summary)} characters, at most {SUMMARY_MAX}")
    return Statement(
        id=sid,
        side=side,
        level=r.choice("level", Level),
        clause=r.text("clause", _CLAUSE_RE),
        section=r.text("section"),
        file=r.text("file", _FILE_RE),
        line=r.positive("line"),
        digest=r.text("digest", _DIGEST_RE),
        summary=summary,
        applies=applies,
        reason=reason,
        implemented_in=r.names("implemented_in", _IMPL_RE),
        tests=r.names("tests", _TEST_RE),
    )


def _contradiction(source: str, index: int, data: object, by_id: Mapping[str, Statement]) -> Contradiction:
    r = _Record(source, f"contradiction #{index + 1}", data)
    r.check_keys(_CONTRADICTION_FIELDS)
    sid = r.text("id", _ID_RE)
    if sid not in by_id:
        raise r.fail("id", f"{sid!r} is not a statement of the inventory")
    return Contradiction(sid, r.text("where", _IMPL_RE), r.text("note"))


def parse_inventory(text: str, source: str = INVENTORY_FILE) -> Inventory:
    """Parse and validate inventory TOML. Raises :class:`InventoryError` on the first bad record or field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"{source}: not valid TOML: {e}") from None
    for key in data:
        if key not in ("spec", "statement", "contradiction"):
            raise InventoryError(f"{source}: unknown top-level key {key!r}")
    spec = _Record(source, "[spec]", data.get("spec"))
    spec.check_keys(_SPEC_FIELDS)
    source_info = SpecSource(spec.text("revision"), spec.text("commit", _COMMIT_RE), spec.text("repository"))
    raw = data.get("statement")
    if not isinstance(raw, list) or not raw:
        raise InventoryError(f"{source}: no [[statement]] records")
    statements = tuple(_statement(source, i, d) for i, d in enumerate(raw))
    by_id: dict[str, Statement] = {}
    for s in statements:
        if s.id in by_id:
            raise InventoryError(f"{source}: statement {s.id!r}: field 'id': duplicate id")
        by_id[s.id] = s
    raw_c = data.get("contradiction", [])
    if not isinstance(raw_c, list):
        raise InventoryError(f"{source}: 'contradiction' must be an array of tables ([[contradiction]])")
    contradictions = tuple(_contradiction(source, i, d, by_id) for i, d in enumerate(raw_c))
    return Inventory(source_info, statements, MappingProxyType(by_id), contradictions)


@cache
def load_inventory() -> Inventory:
    """The inventory shipped with pyvirtio (package data ``pyvirtio/spec/normative.toml``), validated once."""
    text = Path(__file__).with_name(INVENTORY_FILE).read_text(encoding="utf-8")  # package data, beside this file
    return parse_inventory(text)


# ------------------------------------------------------------------------------------------------------------------
# Writing the reference fields (scripts/sync_normative.py and scripts/extract_normative.py share this format)
# ------------------------------------------------------------------------------------------------------------------

#: Longest line :func:`format_field` writes on one line; longer lists get one entry per line.
LINE_MAX = 120


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string (quotes, backslashes and control characters escaped)."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def format_field(key: str, values: tuple[str, ...] | list[str]) -> str:
    """``key = [...]`` as the inventory writes it: on one line when it fits in :data:`LINE_MAX` characters,
    else one entry per line (indented four spaces, trailing comma). No trailing newline."""
    one = f"{key} = [" + ", ".join(toml_string(v) for v in values) + "]"
    if len(one) <= LINE_MAX or not values:
        return one
    return "\n".join([f"{key} = [", *(f"    {toml_string(v)}," for v in values), "]"])


# ------------------------------------------------------------------------------------------------------------------
# Coverage
# ------------------------------------------------------------------------------------------------------------------


def _clause_key(clause: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 1000 + ord(p[0]) for p in clause.split("."))


def _common_clause(clauses: list[str]) -> str:
    parts = [c.split(".") for c in clauses]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return ".".join(common) or clauses[0]


def coverage_by_section(inventory: Inventory | None = None) -> tuple[SectionCoverage, ...]:
    """Per-section counts (all, applicable, implemented, tested), in spec order; for tests and ``pyvirtio spec``.

    Implemented and tested only count applicable statements, so 100% means every applicable statement has an
    implementing code reference (or a naming test).
    """
    inv = inventory if inventory is not None else load_inventory()
    groups: dict[str, list[Statement]] = {}
    for s in inv:
        groups.setdefault(s.section, []).append(s)
    out = []
    for section, members in groups.items():
        applicable = [s for s in members if s.applies]
        clauses = sorted({s.clause for s in members}, key=_clause_key)
        out.append(SectionCoverage(
            clause=clauses[0] if len(clauses) == 1 else _common_clause(clauses),
            section=section,
            statements=len(members),
            applicable=len(applicable),
            implemented=sum(1 for s in applicable if s.implemented),
            tested=sum(1 for s in applicable if s.tested),
        ))
    out.sort(key=lambda c: _clause_key(c.clause))
    return tuple(out)


__all__ = [
    "INVENTORY_FILE",
    "LINE_MAX",
    "SUMMARY_MAX",
    "Contradiction",
    "Inventory",
    "InventoryError",
    "Level",
    "SectionCoverage",
    "Side",
    "SpecSource",
    "Statement",
    "coverage_by_section",
    "format_field",
    "load_inventory",
    "parse_inventory",
    "toml_string",
]
