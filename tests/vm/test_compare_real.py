"""`pyvirtio vm compare` against the real VM: the model configured like this VM (profile baseline, same machine
type) predicts every device-status byte of virtio-gpu and virtio-rng, the lost display and which queues survive,
across S3 and S4 on pc and q35 and s2idle on q35. The real cells are the session's (tests/vm/conftest.py, run once);
the path that boots the VM itself is exercised by the crash test in test_vm_real.py. Never skipped: provisioning
failure fails the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main

pytestmark = pytest.mark.realvm


@pytest.mark.parametrize(("sleeps", "machines"), [(["S3", "S4"], ["pc", "q35"]), (["s2idle"], ["q35"])])
def test_vm_compare_agrees(tmp_path: Path, baseline_report: Path, sleeps: list[str], machines: list[str]) -> None:
    args = ["vm", "compare", "--out", str(tmp_path), "--real", str(baseline_report)]
    for s in sleeps:
        args += ["--sleep", s]
    for m in machines:
        args += ["--machine", m]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert len(summary) == len(sleeps) * len(machines)
    for cell in summary:
        checks = {c["what"]: c for c in cell["checks"]}
        assert all(c["ok"] for c in checks.values())
        assert checks["display restored"]["real"] == "no"  # the real black screen
        assert checks["gpu queues alive"]["real"] == "no" and checks["rng queues alive"]["real"] == "yes"
        assert Path(cell["timelines"]).is_file()  # model | real, side by side
