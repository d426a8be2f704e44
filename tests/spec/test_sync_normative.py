"""``scripts/sync_normative.py``: tags map to the right code, markers to the right tests, the file is rewritten
byte-stably and only in its two reference fields, ``--check`` reports what is out of date."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pyvirtio.spec.normative import format_field, parse_inventory

from .conftest import ROOT, SYNC_SCRIPT

SOURCE = '''"""A module."""
# spec: dev:status#1
import os


class Device:
    # spec: dev:status#2
    LIMIT = 1

    # spec: dev:reset#1
    @property
    def status(self) -> int:
        return 0  # spec: dev:reset#2

    def work(self) -> None:
        def inner() -> None:
            # spec: drv:status#1, drv:status#2
            pass

        text = "# spec: dev:status#3 is in a string, not a tag"


if os.name:
    def helper() -> None:
        pass  # spec: dev:config-space#1

# spec: dev:status#3

def after_blank() -> None:
    pass
'''


def test_tags_map_to_the_enclosing_definition(sync: ModuleType) -> None:
    """Module, class attribute, decorated method (tag above the decorator), inline tag, nested function
    (counts as the outer method), a string that looks like a tag, a def under ``if``, a tag above a blank line."""
    tags = sync.tags_in_source(SOURCE, "pyvirtio/m.py", "pyvirtio.m")
    got = [(t.ids, t.ref) for t in tags]
    assert got == [
        (("dev:status#1",), "pyvirtio.m"),
        (("dev:status#2",), "pyvirtio.m:Device"),
        (("dev:reset#1",), "pyvirtio.m:Device.status"),
        (("dev:reset#2",), "pyvirtio.m:Device.status"),
        (("drv:status#1", "drv:status#2"), "pyvirtio.m:Device.work"),
        (("dev:config-space#1",), "pyvirtio.m:helper"),
        (("dev:status#3",), "pyvirtio.m"),
    ]
    assert [t.line for t in tags] == [2, 7, 10, 13, 17, 25, 27]


def test_tags_may_carry_remarks(sync: ModuleType) -> None:
    """Each id may have a remark in parentheses (one level of nesting), the list a trailing remark after a dash."""
    src = ("# spec: dev:status#1 (a remark, with a comma), dev:status#2 (nested (yes)) — trailing: note\n"
           "# spec: dev:reset#1 - plain dash\n# spec: dev:reset#2;semicolon\n# spec: dev:reset#2, dev:reset#2\n")
    tags = sync.tags_in_source(src, "pyvirtio/m.py", "pyvirtio.m")
    assert [t.ids for t in tags] == [("dev:status#1", "dev:status#2"), ("dev:reset#1",), ("dev:reset#2",),
                                     ("dev:reset#2",)]


@pytest.mark.parametrize("comment", ["# spec: §4.1.4", "# spec: dev:status#1,", "# spec: dev:status#1 words",
                                     "# spec:", "# spec: dev:status#1 (unclosed"])
def test_malformed_tags_are_errors(sync: ModuleType, comment: str) -> None:
    with pytest.raises(sync.SyncError, match=r"pyvirtio/m.py:1: malformed tag"):
        sync.tags_in_source(f"x = 1  {comment}\n", "pyvirtio/m.py", "pyvirtio.m")


def test_module_names(sync: ModuleType) -> None:
    assert sync.module_name(ROOT / "pyvirtio/host/device.py", ROOT) == "pyvirtio.host.device"
    assert sync.module_name(ROOT / "pyvirtio/host/__init__.py", ROOT) == "pyvirtio.host"


def test_parametrized_tests_are_listed_once_when_every_case_names_the_id(sync: ModuleType) -> None:
    coll = sync.Collection({
        "tests/a.py::test_all[x]": ("dev:status#1",),
        "tests/a.py::test_all[y]": ("dev:status#1", "dev:status#2"),
        "tests/a.py::test_plain": ("dev:status#1",),
        "tests/a.py::TestK::test_m": ("dev:status#2",),
        "tests/a.py::test_none": (),
    })
    refs = sync.marker_references(coll)
    assert refs == {
        "dev:status#1": ["tests/a.py::test_all", "tests/a.py::test_plain"],
        "dev:status#2": ["tests/a.py::TestK::test_m", "tests/a.py::test_all[y]"],
    }


def _tmp_root(tmp_path: Path, source: str = SOURCE) -> Path:
    (tmp_path / "pyvirtio" / "spec").mkdir(parents=True)
    shutil.copy(ROOT / "pyvirtio" / "spec" / "normative.toml", tmp_path / "pyvirtio" / "spec" / "normative.toml")
    (tmp_path / "pyvirtio" / "m.py").write_text(source, encoding="utf-8")
    return tmp_path


def _empty_refs(text: str) -> str:
    """``text`` with every reference field emptied (the rewriter under test is not used to do it)."""
    out = []
    skip = False
    for line in text.splitlines(keepends=True):
        if skip:
            skip = line.strip() != "]"
            continue
        key = line.split("=", 1)[0].strip()
        if key in ("implemented_in", "tests") and line.split("=", 1)[1].strip().startswith("["):
            out.append(f"{key} = []\n")
            skip = not line.rstrip().endswith("]")
            continue
        out.append(line)
    return "".join(out)


COLLECTION = {"tests/a.py::test_x": ("dev:status#1",), "tests/a.py::test_long_name_" + "y" * 90: ("dev:status#1",)}


def test_sync_writes_only_the_two_fields_and_is_byte_stable(sync: ModuleType, tmp_path: Path) -> None:
    """From an inventory with no references: the second run changes nothing; every other line is untouched;
    a list too long for one line is written one entry per line."""
    root = _tmp_root(tmp_path)
    toml = root / "pyvirtio" / "spec" / "normative.toml"
    toml.write_text(_empty_refs(toml.read_text(encoding="utf-8")), encoding="utf-8")
    before = toml.read_text(encoding="utf-8")
    coll = sync.Collection(COLLECTION)
    first = sync.sync(root, collection=coll)
    assert not first.in_sync
    after = toml.read_text(encoding="utf-8")
    inv = parse_inventory(after)
    assert inv["dev:status#1"].implemented_in == ("pyvirtio.m",)
    assert inv["dev:status#1"].tests == tuple(sorted(COLLECTION))
    assert inv["drv:status#1"].implemented_in == ("pyvirtio.m:Device.work",)
    assert format_field("tests", sorted(COLLECTION)).count("\n") == 3  # one entry per line
    assert format_field("tests", sorted(COLLECTION)) in after
    kept = [ln for ln in before.splitlines() if not ln.startswith(("implemented_in", "tests"))]
    assert [ln for ln in after.splitlines() if ln in set(kept)] == kept  # every other line, in order
    second = sync.sync(root, collection=coll)
    assert second.in_sync and second.differences == ()
    assert toml.read_text(encoding="utf-8") == after


def test_check_mode_lists_differences_and_does_not_write(sync: ModuleType, tmp_path: Path) -> None:
    root = _tmp_root(tmp_path)
    toml = root / "pyvirtio" / "spec" / "normative.toml"
    toml.write_text(_empty_refs(toml.read_text(encoding="utf-8")), encoding="utf-8")
    before = toml.read_bytes()
    result = sync.sync(root, check=True, collection=sync.Collection(COLLECTION))
    assert not result.in_sync
    assert "dev:status#1: implemented_in: + pyvirtio.m" in result.differences
    assert "dev:status#1: tests: + tests/a.py::test_x" in result.differences
    assert toml.read_bytes() == before


def test_unknown_ids_are_errors_naming_the_place(sync: ModuleType, tmp_path: Path) -> None:
    root = _tmp_root(tmp_path, "def f() -> None:\n    pass  # spec: dev:nothing#9\n")
    with pytest.raises(sync.SyncError, match=r"pyvirtio/m.py:2: unknown statement id 'dev:nothing#9'"):
        sync.sync(root, check=True, collection=sync.Collection({}))
    root2 = _tmp_root(tmp_path / "b", "")
    with pytest.raises(sync.SyncError, match=r"tests/a.py::t: unknown statement id 'drv:nothing#1'"):
        sync.sync(root2, check=True, collection=sync.Collection({"tests/a.py::t": ("drv:nothing#1",)}))


def test_the_collection_plugin_sees_markers_without_running_tests(sync: ModuleType, collection: object) -> None:
    """The real collection (pytest in a subprocess): a marked parametrized case is there with its ids, an
    unmarked test with none, and the real-VM tests are collected (not run)."""
    items: dict[str, tuple[str, ...]] = collection.items  # type: ignore[attr-defined]
    assert items["tests/spec/test_driver_conformance.py::test_rule_is_flagged[STATUS_CLEARED]"] == ("drv:status#2",)
    assert items["tests/spec/test_sync_normative.py::test_module_names"] == ()
    assert any(n.startswith("tests/vm/test_vm_real.py::") for n in items)


def test_command_line_check_exit_status(tmp_path: Path) -> None:
    """``--check`` exits 0 when in sync (the repository itself), ``--tags`` lists tags; bad roots exit 2."""
    res = subprocess.run([sys.executable, str(SYNC_SCRIPT), "--tags", "--root", str(_tmp_root(tmp_path))],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "pyvirtio/m.py:17: pyvirtio.m:Device.work: drv:status#1, drv:status#2" in res.stdout
    bad = tmp_path / "bad"
    (bad / "pyvirtio").mkdir(parents=True)
    (bad / "pyvirtio" / "x.py").write_text("# spec: nonsense\n", encoding="utf-8")
    res = subprocess.run([sys.executable, str(SYNC_SCRIPT), "--tags", "--root", str(bad)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "malformed tag" in res.stderr
