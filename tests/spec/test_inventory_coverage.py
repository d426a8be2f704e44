"""The inventory cannot drift from the code and the tests (issue 9 "Build").

* the ``implemented_in`` and ``tests`` fields say exactly what the ``# spec:`` tags in pyvirtio/ and the
  ``@pytest.mark.spec`` markers in tests/ say (``scripts/sync_normative.py --check``, run here in-process);
* every applicable statement has at least one implementing reference and at least one test naming it;
* every reference resolves: the code one imports, the test one is collected and carries the marker;
* a statement that does not apply has neither (else the inventory or the tag is wrong: the message says which).
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from types import ModuleType

import pytest

from pyvirtio.spec.normative import Statement, load_inventory

from .conftest import ROOT


def _by_section(statements: list[Statement], what: dict[str, str]) -> str:
    groups: dict[tuple[str, str], list[Statement]] = defaultdict(list)
    for s in statements:
        groups[(s.clause, s.section)].append(s)
    lines = []
    for (clause, section), members in groups.items():
        lines.append(f"  §{clause} {section}:")
        lines += [f"    {s.id} [{what[s.id]}] {s.summary}" for s in members]
    return "\n".join(lines)


def test_inventory_is_in_sync_with_tags_and_markers(sync: ModuleType, collection: object) -> None:
    """``scripts/sync_normative.py --check``: the TOML lists exactly the tagged code and the marked tests."""
    result = sync.sync(ROOT, check=True, collection=collection)
    assert result.in_sync, ("pyvirtio/spec/normative.toml is out of date; run scripts/sync_normative.py:\n  "
                            + "\n  ".join(result.differences))


def test_every_applicable_statement_is_implemented_and_tested() -> None:
    """Issue 9's gate: 100% of the applicable statements have code naming them and a test naming them."""
    missing = [s for s in load_inventory() if s.missing]
    what = {s.id: " + ".join(s.missing) for s in missing}
    if missing:
        pytest.fail(f"{len(missing)} applicable statements lack an implementing '# spec:' tag or a "
                    f"@pytest.mark.spec test (by section):\n{_by_section(missing, what)}", pytrace=False)


def test_every_implementation_reference_resolves() -> None:
    """Each ``implemented_in`` entry imports: ``module`` or ``module:qualname`` (getattr along the dots)."""
    broken: list[str] = []
    for s in load_inventory():
        for ref in s.implemented_in:
            module, _, qualname = ref.partition(":")
            try:
                obj: object = importlib.import_module(module)
                for part in qualname.split(".") if qualname else []:
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                broken.append(f"{s.id}: {ref}: {e}")
    assert not broken, "\n".join(broken)


def test_every_test_reference_is_collected_and_carries_the_marker(sync: ModuleType, collection: object) -> None:
    """Each ``tests`` entry is a collected test (a parametrized one by its base name: then every case) whose
    ``spec`` marker names the statement."""
    items: dict[str, tuple[str, ...]] = collection.items  # type: ignore[attr-defined]
    broken: list[str] = []
    for s in load_inventory():
        for ref in s.tests:
            cases = [n for n in items if n == ref or n.startswith(ref + "[")]
            if not cases:
                broken.append(f"{s.id}: {ref}: not collected")
            broken += [f"{s.id}: {n}: no spec marker naming it" for n in cases if s.id not in items[n]]
    assert not broken, "\n".join(broken)


def test_statements_that_do_not_apply_have_no_code_and_no_test() -> None:
    """A tag or marker on a statement marked ``applies = false`` means one of them is wrong: the statement does
    apply (fix the inventory's ``applies``/``reason``) or the tag/marker names the wrong id."""
    flagged = [f"{s.id} ({s.reason}): code {list(s.implemented_in)}, tests {list(s.tests)}"
               for s in load_inventory() if not s.applies and (s.implemented_in or s.tests)]
    assert not flagged, "statements marked not applicable but tagged or tested:\n  " + "\n  ".join(flagged)


def test_known_contradictions_name_applicable_statements() -> None:
    """A ``[[contradiction]]`` entry is about a statement that applies, at code that exists (none is the goal)."""
    inv = load_inventory()
    for c in inv.contradictions:
        assert inv[c.id].applies, c
        module = c.where.partition(":")[0]
        importlib.import_module(module)
