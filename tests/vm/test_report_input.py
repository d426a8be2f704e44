"""Issue 9 defect 14: ``vm compare --real FILE`` with a hostile report.

A report file is user input: not UTF-8, nested deeper than the recursion limit, wrong types, unhashable values
where a key is expected, huge numbers, NaN, rich markup in its strings. Reading it is one
:class:`~pyvirtio.errors.UserInputError` line naming the field (``vm compare``: that line on stderr, exit
status 2), never a traceback; whatever strings it may hold are printed as they are, never as markup.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.cli import main
from pyvirtio.errors import UserInputError
from pyvirtio.fidelity import compare, model_cell
from pyvirtio.report import MAX_REPORT_BYTES, CellResult, Report, Source


@pytest.fixture(scope="module")
def model() -> CellResult:
    return model_cell("S3", "q35")


@pytest.fixture(scope="module")
def real_doc(model: CellResult) -> dict[str, Any]:
    """A valid report document holding one real-vm cell (the model's S3/q35 cell, relabelled)."""
    cell = copy.deepcopy(model)
    cell.source = Source.REAL_VM
    return json.loads(json.dumps(Report(cells=[cell], meta={"qemu": "7.2"}).to_dict()))


def _compare(tmp_path: Path, real: Path) -> Any:
    return CliRunner().invoke(main, ["vm", "compare", "--sleep", "S3", "--machine", "q35", "--real", str(real),
                                     "--out", str(tmp_path / "out")])


def _one_line_error(r: Any) -> str:
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.stdout == "" and r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert len(r.stderr) < 1200
    return str(r.stderr)


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    node: Any = d
    *parents, last = path.split(".")
    for k in parents:
        node = node[int(k) if k.isdigit() else k]
    node[int(last) if last.isdigit() else last] = value
    return d


DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE_TEXT: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b'{"format": "pyvirtio-pm-report", "meta": "\xff"}', "is not UTF-8"),
    "not JSON": (b"{", "is not JSON"),
    "NaN": (b"NaN", "is not JSON"),
    "empty": (b"", "is not JSON"),
    "nested 100000 deep": (DEEP.encode(), "nested deeper than"),
    "deep inside a valid report": (b'{"format": "pyvirtio-pm-report", "version": 1, "cells": [], "meta": '
                                   + DEEP.encode() + b"}", "nested deeper than"),
    "nested 65 deep": (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
    "integer of 5000 digits": (b'{"version": ' + b"9" * 5000 + b"}", "is not JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TEXT))
def test_hostile_report_bytes_are_one_line(tmp_path: Path, case: str) -> None:
    """Issue 9 defect 14: not UTF-8, not JSON, nested beyond the recursion limit: one line, exit status 2."""
    data, needle = HOSTILE_TEXT[case]
    p = tmp_path / "real.json"
    p.write_bytes(data)
    assert needle in _one_line_error(_compare(tmp_path, p))


BAD_FIELDS: dict[str, tuple[str, object, str]] = {
    "cells not a list": ("cells", {"a": 1}, "cells = {'a': 1}: not a list"),
    "cell not an object": ("cells.0", "S3", "cells[0] = 'S3': not an object"),
    "unhashable machine type": ("cells.0.machine_type", ["q35"], "cells[0].machine_type = ['q35']: not a string"),
    "unhashable sleep": ("cells.0.sleep", {"S3": 1}, "cells[0].sleep = {'S3': 1}: not one of"),
    "status byte a string": ("cells.0.devices.gpu.status_sequence", ["0f"], "status_sequence[0] = '0f'"),
    "status byte huge": ("cells.0.devices.gpu.status_sequence", [2**70], "not a status byte"),
    "bool for a status byte": ("cells.0.devices.rng.status_sequence", [True], "not a status byte"),
    "devices a list": ("cells.0.devices", [1, 2], "cells[0].devices = [1, 2]: not an object"),
    "flag a string": ("cells.0.display_restored", "[red]yes[/]", "not true, false or null"),
    "duration a string": ("cells.0.suspend_ms", "fast", "not a finite duration"),
    "duration huge": ("cells.0.resume_ms", 10**400, "not a finite duration"),
    "duration negative": ("cells.0.resume_ms", -1.0, "not a finite duration"),
    "count negative": ("cells.0.config_events_after_resume", -1, "not a count"),
    "notes not strings": ("cells.0.notes", [1], "cells[0].notes = [1]: not a list of strings"),
    "images not strings": ("cells.0.images", {"before": 1}, "not an object of strings"),
    "unknown cell field": ("cells.0.class_path", "os.system", "unknown field(s) ['class_path']"),
    "unknown device field": ("cells.0.devices.gpu.extra", 1, "unknown field(s) ['extra']"),
    "version a list": ("version", [1], "unsupported report version [1]"),
    "version a bool": ("version", True, "unsupported report version True"),
    "meta a list": ("meta", [], "meta = []: not an object"),
    "long value is cut short": ("cells.0.profile", ["x" * 10_000], "..."),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_wrong_types_are_one_line_naming_the_field(tmp_path: Path, real_doc: dict[str, Any], case: str) -> None:
    """Issue 9 defect 14: a field of the wrong type, out of range, unknown, or unhashable where a key is wanted
    is one line naming the field by its path, its value cut short; vm compare exits 2."""
    path, value, needle = BAD_FIELDS[case]
    doc = _set(real_doc, path, value)
    with pytest.raises(UserInputError) as e:
        Report.from_dict(doc)
    assert needle in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)
    p = tmp_path / "real.json"
    p.write_text(json.dumps(doc))
    assert needle in _one_line_error(_compare(tmp_path, p))


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """Issue 9 defect 14: at most MAX_REPORT_BYTES are read (``--real /dev/zero`` must not eat the memory)."""
    p = tmp_path / "huge.json"
    with open(p, "wb") as f:
        f.truncate(MAX_REPORT_BYTES + 1)
    assert "larger than" in _one_line_error(_compare(tmp_path, p))


def test_a_report_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    """A directory where the file should be, or a file that vanished, is one line, exit status 2."""
    with pytest.raises(UserInputError, match="cannot read report"):
        Report.read(tmp_path)
    with pytest.raises(UserInputError, match="cannot read report"):
        Report.read(tmp_path / "missing.json")


def test_markup_in_a_report_is_printed_as_text(tmp_path: Path, real_doc: dict[str, Any]) -> None:
    """Issue 9 defect 14: strings from a file are data: ``[red]`` and an unbalanced ``[/x]`` are printed as
    they are (rich would colour the first and raise on the second) and ``--out`` containing brackets too."""
    hostile = "[bold red]pwn[/] [/x] [link=file:///etc/passwd]x[/link]"
    doc = _set(real_doc, "cells.0.notes", [hostile])
    doc["cells"][0]["profile"] = hostile
    doc["cells"][0]["devices"]["rng"]["status_sequence"].append(0x40)  # a difference: the lines are printed
    p = tmp_path / "real.json"
    p.write_text(json.dumps(doc))
    out = tmp_path / "[bold]out[/]"
    r = CliRunner().invoke(main, ["vm", "compare", "--sleep", "S3", "--machine", "q35", "--real", str(p),
                                  "--out", str(out)])
    assert r.exit_code == 1, r.output  # a difference, not an error
    assert f"details in {out / 'compare.json'}" in r.stdout
    assert Report.read(out / "report.json").cells[1].notes == [hostile]


# -- property: any edit of a valid report is read or refused in one line, and compare never raises -------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**64, -(2**70), 10**400]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["S3", "S4", "q35", "real-vm", "ok", "kept", "[red]x[/]", "[/]"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_edit_of_a_report_is_read_or_one_line(real_doc: dict[str, Any], model: CellResult,
                                                  data: st.DataObject) -> None:
    """Issue 9 defect 14 (property): replace, delete or add any field of a valid report with any JSON value:
    :meth:`Report.from_dict` either accepts it, and then :func:`compare` works on every cell it holds, or
    raises one UserInputError line; no other exception."""
    doc: Any = copy.deepcopy(real_doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        kind = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if kind == "replace":
            parent[path[-1]] = data.draw(values)
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(values)
        else:
            parent.append(data.draw(values))
    doc = json.loads(json.dumps(doc))  # what a file can hold
    try:
        report = Report.from_dict(doc)
    except UserInputError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        return
    for cell in report.cells:
        assert {(cell.sleep, cell.machine_type): cell}  # hashable key
        for check in compare(model, cell):
            assert isinstance(check.model, str) and isinstance(check.real, str)
