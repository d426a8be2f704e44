"""The normative inventory (``pyvirtio/spec/normative.toml``): well-formed, stable ids, no copied spec prose.

These tests check the data, not pyvirtio's conformance: that is what the tests naming each statement do.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from importlib import resources

import pytest

from pyvirtio.spec.normative import (
    LINE_MAX,
    SUMMARY_MAX,
    Inventory,
    InventoryError,
    Level,
    SectionCoverage,
    Side,
    coverage_by_section,
    format_field,
    load_inventory,
    parse_inventory,
    toml_string,
)

#: The spec files the inventory was extracted from (scripts/extract_normative.py SCOPE).
SCOPE = {
    "content.tex",
    "split-ring.tex",
    "transport-pci.tex",
    "device-types/entropy/description.tex",
    "device-types/gpu/description.tex",
}
ID_FORM = re.compile(r"(dev|drv):[a-z0-9]+(?:[-/][a-z0-9]+)*#[1-9][0-9]*")


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return load_inventory()


def _digest(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def test_inventory_loads_from_package_data(inv: Inventory) -> None:
    """The TOML ships inside the package and records the spec revision it was extracted from."""
    assert resources.files("pyvirtio.spec").joinpath("normative.toml").is_file()
    assert inv.spec.revision == "virtio-v1.4-cs01"
    assert inv.spec.commit == "15f488c162107f7b52fb2e4d0f36a2349fe9d3a9"
    assert len(inv) >= 200
    assert load_inventory() is inv  # validated once, cached


def test_ids_unique_and_well_formed(inv: Inventory) -> None:
    """Every id is ``dev|drv:<block>#<n>``, unique, with the prefix matching ``side``."""
    ids = [s.id for s in inv]
    assert len(ids) == len(set(ids))
    for s in inv:
        assert ID_FORM.fullmatch(s.id), s.id
        assert s.id.startswith(f"{s.side.prefix}:"), s.id
        assert inv[s.id] is s


def test_ordinals_count_from_one_without_gaps(inv: Inventory) -> None:
    """Within one block and side the ordinals are 1..n in spec order (so ids are derivable, hence stable)."""
    seen: dict[tuple[Side, str], list[int]] = defaultdict(list)
    for s in inv:
        seen[(s.side, s.block)].append(s.ordinal)
    for key, ordinals in seen.items():
        assert ordinals == list(range(1, len(ordinals) + 1)), key


def test_well_known_ids_are_stable(inv: Inventory) -> None:
    """A few ids that tests and issue 9 rely on keep pointing at the same sentence of the tagged spec."""
    expect = {
        "dev:status#1": ("2.1.2", "content.tex", 81, Level.MUST_NOT),
        "dev:vq-reset#1": ("2.6.1.1.1", "content.tex", 416, Level.MUST_NOT),
        "drv:init#5": ("3.1.1", "content.tex", 552, Level.MUST_NOT),
        "dev:pci/common-cfg#11": ("4.1.4.3.1", "transport-pci.tex", 478, Level.MUST),
        "dev:pci/isr#2": ("4.1.4.5.1", "transport-pci.tex", 630, Level.MUST),
        "dev:pci/pci-cfg#2": ("4.1.4.9.1", "transport-pci.tex", 785, Level.MUST),
        "dev:suspend#6": ("3.4.2", "content.tex", 673, Level.MUST),
        "dev:gpu/fencing#1": ("5.7.6.5", "device-types/gpu/description.tex", 178, Level.MUST),
    }
    for sid, (clause, file, line, level) in expect.items():
        s = inv[sid]
        assert (s.clause, s.file, s.line, s.level) == (clause, file, line, level), sid


def test_every_non_applicable_statement_has_a_reason(inv: Inventory) -> None:
    """``applies = false`` always says why (legacy, packed ring, feature not offered, ...)."""
    for s in inv:
        if not s.applies:
            assert s.reason.strip(), s.id


def test_levels_sides_files_and_lines_are_valid(inv: Inventory) -> None:
    """Level and side are enum members; the file is one of the extracted spec files; lines are positive."""
    for s in inv:
        assert isinstance(s.level, Level) and isinstance(s.side, Side), s.id
        assert s.file in SCOPE, s.id
        assert s.line > 0, s.id
        assert re.fullmatch(r"[0-9a-f]{16}", s.digest), s.id
        assert re.fullmatch(r"\d+(\.\d+)*", s.clause), s.id


def test_summaries_are_present_short_and_not_the_spec_sentence(inv: Inventory) -> None:
    """Each statement has pyvirtio's own paraphrase: non-empty, short, and not the spec sentence it digests."""
    for s in inv:
        assert s.summary.strip(), s.id
        assert len(s.summary) <= SUMMARY_MAX, s.id
        assert _digest(s.summary) != s.digest, f"{s.id}: summary is the spec's sentence verbatim"
        assert "\\field" not in s.summary and "\\ref" not in s.summary, f"{s.id}: LaTeX copied into the summary"
        # A copied sentence carries the spec's upper-case keywords; a paraphrase says "must"/"should"/"never".
        assert not re.search(r"\b(MUST|SHOULD|SHALL|REQUIRED|RECOMMENDED|MAY)\b", s.summary), s.id


def test_digests_identify_one_sentence(inv: Inventory) -> None:
    """Digests are unique, except for a legacy sentence binding both sides (one record per side, same line)."""
    by_digest: dict[str, list[str]] = defaultdict(list)
    for s in inv:
        by_digest[s.digest].append(s.id)
    for digest, ids in by_digest.items():
        if len(ids) > 1:
            records = [inv[i] for i in ids]
            assert len(ids) == 2 and {r.side for r in records} == {Side.DEVICE, Side.DRIVER}, ids
            assert len({(r.file, r.line) for r in records}) == 1, ids
            assert all(r.block.endswith("legacy") for r in records), (digest, ids)


def test_legacy_statements_do_not_apply_except_for_modern_only_drivers(inv: Inventory) -> None:
    """pyvirtio is modern-only: transitional (legacy) statements are marked not applicable with the reason."""
    for s in inv:
        if s.block.endswith("/legacy") and s.applies:
            assert s.id.startswith("drv:pci/layout-detection/legacy#"), s.id
    assert inv["drv:pci/layout-detection/legacy#4"].applies  # a non-transitional driver fails gracefully


def test_code_and_test_references_are_well_formed(inv: Inventory) -> None:
    """``implemented_in`` holds ``pyvirtio...:qualname`` (or a module) and ``tests`` holds ``tests/...py::name``."""
    for s in inv:
        for ref in s.implemented_in:
            assert re.fullmatch(r"pyvirtio(\.\w+)*(:\w+(\.\w+)*)?", ref), (s.id, ref)
        for ref in s.tests:
            assert ref.startswith("tests/") and "::" in ref, (s.id, ref)


def test_coverage_by_section_counts(inv: Inventory) -> None:
    """Per-section counts add up to the inventory; implemented/tested never exceed applicable."""
    rows = coverage_by_section(inv)
    assert sum(r.statements for r in rows) == len(inv)
    assert sum(r.applicable for r in rows) == sum(1 for s in inv if s.applies)
    assert len({r.section for r in rows}) == len(rows)
    for r in rows:
        assert 0 <= r.tested <= r.applicable <= r.statements
        assert 0 <= r.implemented <= r.applicable
        assert 0.0 <= r.implemented_pct <= 100.0 and 0.0 <= r.tested_pct <= 100.0
    assert coverage_by_section() == rows  # default: the shipped inventory


# ---------------------------------------------------------------------------------------------------------------
# Validation of malformed inventories: one line naming the record and the field
# ---------------------------------------------------------------------------------------------------------------

GOOD_SPEC = """
[spec]
revision = "virtio-v1.4-cs01"
commit = "15f488c162107f7b52fb2e4d0f36a2349fe9d3a9"
repository = "https://github.com/oasis-tcs/virtio-spec"
"""

GOOD_RECORD = {
    "id": '"dev:status#1"',
    "side": '"device"',
    "level": '"MUST NOT"',
    "clause": '"2.1.2"',
    "section": '"Basic Facilities of a Virtio Device / Device Status Field"',
    "file": '"content.tex"',
    "line": "81",
    "digest": '"0123456789abcdef"',
    "summary": '"Device uses no buffer before DRIVER_OK"',
    "applies": "true",
    "reason": '""',
    "implemented_in": "[]",
    "tests": "[]",
}


def _toml(**changes: str | None) -> str:
    fields = dict(GOOD_RECORD)
    for k, v in changes.items():
        if v is None:
            fields.pop(k)
        else:
            fields[k] = v
    return GOOD_SPEC + "\n[[statement]]\n" + "\n".join(f"{k} = {v}" for k, v in fields.items()) + "\n"


def test_parse_accepts_a_good_record() -> None:
    inv = parse_inventory(_toml())
    s = inv["dev:status#1"]
    assert s.level is Level.MUST_NOT and s.side is Side.DEVICE and s.line == 81 and s.applies


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"level": '"MAYBE"'}, "level", "is not one of"),
        ({"side": '"driver"'}, "side", "does not match the id prefix"),
        ({"applies": "false"}, "reason", "required when applies is false"),
        ({"applies": '"yes"'}, "applies", "expected true or false"),
        ({"line": "0"}, "line", "positive integer"),
        ({"line": "true"}, "line", "positive integer"),
        ({"id": '"dev:status"'}, "id", "expected form"),
        ({"digest": '"XYZ"'}, "digest", "expected form"),
        ({"summary": '""'}, "summary", "empty"),
        ({"summary": '"' + "x" * (SUMMARY_MAX + 1) + '"'}, "summary", "at most"),
        ({"file": '"/etc/passwd"'}, "file", "expected form"),
        ({"clause": '"two.one"'}, "clause", "expected form"),
        ({"implemented_in": '["not a ref"]'}, "implemented_in", "expected form"),
        ({"tests": '["tests/a.py::t", "tests/a.py::t"]'}, "tests", "listed twice"),
        ({"tests": '"tests/a.py::t"'}, "tests", "expected a list"),
        ({"reason": None}, "reason", "missing"),
        ({"implemnted_in": "[]"}, "implemnted_in", "unknown field"),
    ],
)
def test_parse_rejects_a_bad_field_naming_record_and_field(changes: dict[str, str | None], field: str,
                                                           why: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(_toml(**changes))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"field {field!r}" in msg and why in msg
    assert "statement" in msg
    assert isinstance(e.value, ValueError)


def test_parse_rejects_duplicate_ids_and_broken_files() -> None:
    record = _toml().split("\n[[statement]]\n", 1)[1]
    with pytest.raises(InventoryError, match="duplicate id"):
        parse_inventory(_toml() + "\n[[statement]]\n" + record)
    with pytest.raises(InventoryError, match="not valid TOML"):
        parse_inventory("[[statement]\n")
    with pytest.raises(InventoryError, match="no \\[\\[statement\\]\\] records"):
        parse_inventory(GOOD_SPEC)
    with pytest.raises(InventoryError, match="field 'commit'"):
        parse_inventory(_toml().replace("15f488c162107f7b52fb2e4d0f36a2349fe9d3a9", "15f488c"))
    with pytest.raises(InventoryError, match="unknown top-level key"):
        parse_inventory(_toml() + "\n[extra]\nx = 1\n")


def test_contradictions_parse_and_are_validated() -> None:
    """``[[contradiction]]``: optional; each names an existing statement, the code, a note; bad ones are one line."""
    table = '\n[[contradiction]]\nid = "dev:status#1"\nwhere = "pyvirtio.host.device:VirtioDevice"\nnote = "n"\n'
    inv = parse_inventory(_toml() + table)
    assert [(c.id, c.where, c.note) for c in inv.contradictions] == [("dev:status#1",
                                                                      "pyvirtio.host.device:VirtioDevice", "n")]
    assert parse_inventory(_toml()).contradictions == ()
    with pytest.raises(InventoryError, match=r"contradiction #1: field 'id'.*not a statement"):
        parse_inventory(_toml() + table.replace("dev:status#1", "dev:status#9"))
    with pytest.raises(InventoryError, match="contradiction #1: field 'note': missing"):
        parse_inventory(_toml() + table.replace('note = "n"\n', ""))
    with pytest.raises(InventoryError, match="array of tables"):
        parse_inventory('contradiction = "x"\n' + _toml())


def test_module_only_implementation_reference_is_accepted() -> None:
    """A tag outside any class or function maps to the module: ``pyvirtio.spec.constants``."""
    refs = ("pyvirtio.spec.constants", "pyvirtio.host.device:VirtioDevice.reset")
    inv = parse_inventory(_toml(implemented_in="[" + ", ".join(f'"{r}"' for r in refs) + "]"))
    assert inv["dev:status#1"].implemented_in == refs


def test_missing_side_filter_and_totals(inv: Inventory) -> None:
    """``Statement.missing`` names what an applicable statement lacks; ``Inventory.only`` keeps one side;
    ``SectionCoverage.total`` adds the rows up."""
    for s in inv:
        assert s.missing == (() if not s.applies else tuple(
            w for w, have in (("code", bool(s.implemented_in)), ("test", bool(s.tests))) if not have))
    drv = inv.only(Side.DRIVER)
    assert {s.side for s in drv} == {Side.DRIVER} and len(drv) + len(inv.only(Side.DEVICE)) == len(inv)
    assert all(drv[s.id] is s for s in drv)
    total = SectionCoverage.total(coverage_by_section(inv))
    assert (total.statements, total.applicable) == (len(inv), sum(1 for s in inv if s.applies))


def test_reference_fields_format() -> None:
    """One line when it fits in LINE_MAX, else one entry per line; strings escape what TOML needs."""
    import tomllib

    assert format_field("tests", []) == "tests = []"
    assert format_field("tests", ["tests/a.py::t"]) == 'tests = ["tests/a.py::t"]'
    long = [f"tests/spec/test_{i}.py::test_something_long" for i in range(4)]
    text = format_field("tests", long)
    assert text.splitlines()[0] == "tests = [" and text.splitlines()[-1] == "]"
    assert all(len(line) <= LINE_MAX for line in text.splitlines())
    assert tomllib.loads(text)["tests"] == long
    odd = 'a"b\\c\n\t\x01é'
    assert tomllib.loads("x = " + toml_string(odd))["x"] == odd
