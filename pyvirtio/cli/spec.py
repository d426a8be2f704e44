"""``pyvirtio spec``: how much of virtio 1.4 pyvirtio implements and tests by name, per spec section.

It reads only the shipped inventory (:func:`pyvirtio.spec.normative.load_inventory`, package data), so it works
from an installed package. ``implemented`` counts the applicable statements some code names with a ``# spec:``
tag, ``tested`` those some test names with ``@pytest.mark.spec``; ``scripts/sync_normative.py`` keeps both in
the file, and ``tests/spec/test_inventory_coverage.py`` is the gate that fails below 100%.

Contract: a report, not a check: the exit status is 0 whatever the numbers. ``--json FILE`` is written
atomically; a FILE that cannot be written is the one-line error of :mod:`pyvirtio.cli.common` (status 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.cli.common import out
from pyvirtio.errors import UserInputError
from pyvirtio.spec.normative import Inventory, SectionCoverage, Side, Statement, coverage_by_section, load_inventory

#: ``--side`` choices.
SIDE_CHOICE = click.Choice([s.value for s in Side])


def short_title(section: str) -> str:
    """The last two parts of a section's title path (the full path is in ``--json``)."""
    return " / ".join(section.split(" / ")[-2:])


def _pct(done: int, applicable: int) -> str:
    return f"{100.0 * done / applicable:.0f}%" if applicable else "n/a"


def missing_statements(inventory: Inventory) -> list[Statement]:
    """The applicable statements lacking an implementing reference or a naming test, in inventory order."""
    return [s for s in inventory if s.missing]


def report(inventory: Inventory, side: Side | None) -> dict[str, object]:
    """Everything the command shows, as JSON-able data (what ``--json`` writes)."""
    rows = coverage_by_section(inventory)
    total = SectionCoverage.total(rows)

    def row(r: SectionCoverage) -> dict[str, object]:
        return {"clause": r.clause, "section": r.section, "statements": r.statements, "applicable": r.applicable,
                "implemented": r.implemented, "tested": r.tested,
                "implemented_pct": round(r.implemented_pct, 1), "tested_pct": round(r.tested_pct, 1)}

    return {
        "spec": {"revision": inventory.spec.revision, "commit": inventory.spec.commit},
        "side": side.value if side else "all",
        "sections": [row(r) for r in rows],
        "total": row(total),
        "missing": [{"id": s.id, "clause": s.clause, "level": s.level.value, "summary": s.summary,
                     "missing": list(s.missing)} for s in missing_statements(inventory)],
        "contradictions": [{"id": c.id, "where": c.where, "note": c.note} for c in inventory.contradictions],
    }


def _coverage_table(inventory: Inventory, title: str) -> Table:
    rows = coverage_by_section(inventory)
    t = Table(title=title, title_justify="left", show_footer=True)
    total = SectionCoverage.total(rows)
    t.add_column("clause", footer="")
    t.add_column("section", footer="total")
    t.add_column("applicable", justify="right", footer=f"{total.applicable}/{total.statements}")
    t.add_column("implemented", justify="right", footer=_pct(total.implemented, total.applicable))
    t.add_column("tested", justify="right", footer=_pct(total.tested, total.applicable))
    for r in rows:
        t.add_row(r.clause, escape(short_title(r.section)), f"{r.applicable}/{r.statements}",
                  _pct(r.implemented, r.applicable), _pct(r.tested, r.applicable))
    return t


def _missing_table(inventory: Inventory) -> Table:
    t = Table(title="Applicable statements lacking code or a test", title_justify="left")
    for name in ("id", "clause", "level", "summary", "missing"):
        t.add_column(name)
    for s in missing_statements(inventory):
        t.add_row(s.id, s.clause, s.level.value, escape(s.summary), " + ".join(s.missing))
    return t


def _contradictions(inventory: Inventory) -> None:
    if not inventory.contradictions:
        out.print("Known contradictions: none")
        return
    t = Table(title=f"Known contradictions: {len(inventory.contradictions)}", title_justify="left")
    for name in ("id", "where", "note"):
        t.add_column(name)
    for c in inventory.contradictions:
        t.add_row(c.id, escape(c.where), escape(c.note))
    out.print(t)


@click.command("spec")
@click.option("--missing", is_flag=True, help="List each applicable statement that lacks code or a named test.")
@click.option("--side", type=SIDE_CHOICE, default=None, help="Only the statements binding the device or the driver.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the numbers (and the missing list) to this JSON file, atomically.")
def spec(missing: bool, side: str | None, json_path: Path | None) -> None:
    """Normative coverage of virtio 1.4: per spec section, the applicable statements pyvirtio implements and
    tests by name, the totals and the known contradictions.

    A report: the exit status is 0 whatever the coverage (the test suite is the gate).
    """
    inventory = load_inventory()
    chosen = Side(side) if side else None
    if chosen is not None:
        inventory = inventory.only(chosen)
    if json_path is not None:
        text = json.dumps(report(inventory, chosen), indent=2) + "\n"
        try:
            write_text_atomic(json_path, text)
        except OSError as e:
            raise UserInputError(f"--json {json_path}: cannot write: {e.strerror or e}") from None
    if missing:
        out.print(_missing_table(inventory))
        out.print(f"{len(missing_statements(inventory))} applicable statements lack code or a test")
        return
    which = f"{chosen.value} statements" if chosen else "device and driver statements"
    title = f"{inventory.spec.revision} ({inventory.spec.commit[:7]}): {which}"
    out.print(_coverage_table(inventory, title))
    _contradictions(inventory)
