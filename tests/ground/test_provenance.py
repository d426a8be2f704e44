"""The ledger of real runs: the latest record per cell, written atomically, read back whatever else is in the
folder; a cell's provenance is the strongest evidence for it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.provenance import LEDGER_FORMAT, Evidence, Kind, latest, provenance_of, record


def _ev(kind: Kind, profile: str = "suspend-bit", agrees: bool = True, machine: str = "uml") -> Evidence:
    return Evidence(kind, "uml-linux6.12" if kind is Kind.UML else "qemu10.0-linux6.12", profile, "S3", machine,
                    agrees, detail="x", when="2026-11-30T00:00:00+00:00")


def test_the_latest_record_of_a_cell_replaces_the_older(tmp_path: Path) -> None:
    record(_ev(Kind.UML, agrees=False), tmp_path)
    path = record(_ev(Kind.UML), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    got, problems = latest(tmp_path)
    assert got == [_ev(Kind.UML)] and not problems
    assert json.loads(path.read_text())["format"] == LEDGER_FORMAT


def test_files_that_are_not_records_are_named_and_skipped(tmp_path: Path) -> None:
    record(_ev(Kind.UML), tmp_path)
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    (tmp_path / "bad.json").write_text(json.dumps({"format": LEDGER_FORMAT, "kind": "uml", "stack": 1}))
    (tmp_path / "kind.json").write_text(json.dumps({"format": LEDGER_FORMAT, "kind": "nope", "stack": "s",
                                                   "profile": "p", "sleep": "S3", "machine": "m", "agrees": True}))
    got, problems = latest(tmp_path)
    assert len(got) == 1
    assert sorted(p.split(":")[0] for p in problems) == ["bad.json", "junk.json", "kind.json", "other.json"]
    assert latest(tmp_path / "missing") == ([], [])


def test_a_cell_is_as_real_as_its_strongest_evidence() -> None:
    ev = [_ev(Kind.UML), _ev(Kind.QEMU, machine="q35"), _ev(Kind.UML, profile="freeze-mode")]
    kind, runs = provenance_of(ev, "suspend-bit", "S3")
    assert kind is Kind.QEMU and [r.kind for r in runs] == [Kind.QEMU, Kind.UML]
    assert provenance_of(ev, "suspend-bit", "S4") == (Kind.MODEL, [])
    assert "/" not in _ev(Kind.UML, profile="a/b").key()


def test_pm_matrix_real_adds_what_each_cell_was_checked_against(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    record(_ev(Kind.UML), ledger)
    record(Evidence(Kind.QEMU, "qemu10.0-linux6.12", "suspend-bit", "s2idle", "q35", False), ledger)
    (ledger / "junk.json").write_text("[]")
    r = CliRunner().invoke(main, ["pm", "matrix", "--profile", "suspend-bit", "--out", str(tmp_path / "o"),
                                  "--real-runs", str(ledger)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "checked against" in r.output and "UML 6.12" in r.output and "model only" in r.output
    assert "DIFFERS" in r.output
    meta = json.loads((tmp_path / "o" / "report.json").read_text())["meta"]["provenance"]
    assert meta["suspend-bit/S3"]["kind"] == "uml" and meta["suspend-bit/S4"] == {"kind": "model", "runs": []}
    assert meta["suspend-bit/s2idle"]["runs"][0]["agrees"] is False
