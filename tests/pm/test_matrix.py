"""What each mechanism really achieves, cell by cell (the behaviour `pyvirtio pm matrix` reports)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.errors import UserInputError
from pyvirtio.guest.kernel import PmEvent, SleepRefused
from pyvirtio.pm import scenario
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import Profile, parse_profile
from pyvirtio.pm.scenario import run_cell
from pyvirtio.pm.system import System, build_system
from pyvirtio.report import Outcome, Report, ResourceFate, SleepState


@pytest.mark.parametrize("sleep", ["S3", "s2idle", "S4"])
def test_baseline_shows_the_black_screen(sleep: str) -> None:
    """baseline: control ring never re-created (queues dead), display lost, new frames never arrive."""
    c = run_cell(parse_profile("baseline"), sleep)
    assert c.outcome == "ok"
    assert c.display_restored is False and c.new_frame_after_resume is False
    assert c.resources == "lost" and c.queues_alive is False


@pytest.mark.parametrize("profile", ["no-soft-reset", "suspend-bit", "no-soft-reset+s4-replay"])
@pytest.mark.parametrize("sleep", ["S3", "s2idle"])
def test_s3_keepers(profile: str, sleep: str) -> None:
    """No_Soft_Reset and SUSPEND keep the gpu across S3/s2idle; the hot-plug is delivered exactly once. The rng
    too, except with No_Soft_Reset alone in s2idle: the hwrng fill thread's notification in D3hot is lost
    (``test_nsr_s2idle_loses_the_rng``)."""
    c = run_cell(parse_profile(profile), sleep)
    rng_lost = sleep == "s2idle" and "suspend-bit" not in profile
    assert (c.display_restored, c.new_frame_after_resume, c.resources) == (True, True, "kept")
    assert c.devices["gpu"].queues_alive is True
    assert c.devices["rng"].queues_alive is not rng_lost and c.queues_alive is not rng_lost
    assert c.inflight_completed is True
    assert c.config_events_after_resume == 1
    assert c.violations == []


def test_suspend_bit_uses_the_status_bit() -> None:
    c = run_cell(parse_profile("suspend-bit"), "S3")
    assert "gpu: suspended by suspend-bit" in c.notes
    assert c.devices["gpu"].status_sequence[-5:] == [0x0F, 0x1F, 0x1B, 0x1F, 0x0F]


@pytest.mark.parametrize("profile", ["gpu-freezing", "freeze-mode"])
def test_2023_proposals_survive_s3_but_not_s4(profile: str) -> None:
    s3 = run_cell(parse_profile(profile), "S3")
    assert (s3.display_restored, s3.resources) == (True, "kept")
    s4 = run_cell(parse_profile(profile), "S4")
    assert s4.display_restored is False and s4.resources != "kept"


@pytest.mark.parametrize("profile", ["no-soft-reset", "suspend-bit"])
def test_s3_only_mechanisms_lose_everything_in_s4(profile: str) -> None:
    c = run_cell(parse_profile(profile), "S4")
    assert (c.display_restored, c.new_frame_after_resume, c.resources) == (False, False, "lost")


def test_s4_replay_recreates_after_hibernation_but_alone_loses_s3() -> None:
    s4 = run_cell(parse_profile("s4-replay"), "S4")
    assert (s4.display_restored, s4.new_frame_after_resume, s4.resources) == (True, True, "re-created")
    assert any("no shared objects" in n for n in s4.notes)
    s3 = run_cell(parse_profile("s4-replay"), "S3")
    assert s3.display_restored is False


def test_s4_refused_while_virgl_objects_exist() -> None:
    """Fault: the Linux 7.3 PM notifier refuses hibernation while virgl objects exist; the guest stays up."""
    from pyvirtio.guest.kernel import PmEvent, SleepRefused
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.system import build_system

    system = build_system(parse_profile("s4-replay"), ScenarioConfig(resources=0))
    system.gpu_drv.objects.add(type(next(iter(system.gpu_drv.objects)))(9999, kind=__import__(
        "pyvirtio.guest.gpu.driver", fromlist=["ObjectKind"]).ObjectKind.VIRGL))
    with pytest.raises(SleepRefused, match="virgl"):
        system.guest.notify(PmEvent.HIBERNATION_PREPARE)
    assert system.gpu_drv.probe_alive()


def test_drain_timeout_aborts_the_freeze() -> None:
    """Fault: a gpu command that never completes: freeze drains with a time-out (ETIMEDOUT) and the guest stays
    awake with a working display."""
    from pyvirtio.guest.kernel import SleepRefused
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.system import build_system

    system = build_system(parse_profile("s4-replay"), ScenarioConfig(resources=0))
    system.gpu_dev.faults.quiesce_never_completes = True
    system.gpu_dev.faults.backend_hangs = True  # the backend hangs on the next command
    system.gpu_drv.submit(0x0100, b"", fence=True)
    system.machine.run_for(1_000_000)
    with pytest.raises(SleepRefused, match="ETIMEDOUT"):
        system.guest.freeze_all()


def test_matrix_cli_writes_report_and_pictures(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["pm", "matrix", "--out", str(tmp_path), "--profile", "baseline",
                                  "--profile", "suspend-bit", "--resources", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report.json").exists()
    pngs = list((tmp_path / "images").glob("*.png"))
    assert len([p for p in pngs if not p.name.endswith("-timeline.png")]) == 12  # before/after of 6 cells
    assert len([p for p in pngs if p.name.endswith("-timeline.png")]) == 6  # one timeline per cell
    assert "suspend-bit" in r.output


def test_cli_bad_profile_is_one_line_error() -> None:
    r = CliRunner().invoke(main, ["pm", "run", "--profile", "nope", "--sleep", "S3"])
    assert r.exit_code == 2 and "unknown profile" in r.output


def test_host_hibernation_failure_after_unref_restores_correctly() -> None:
    """Fault: the driver unreferenced every object on the host while freezing, then writing the image fails.
    Linux thaws the devices: the restore list re-creates each object exactly once and the screen is intact."""
    import numpy as np

    from pyvirtio.guest.kernel import PmEvent
    from pyvirtio.pm import gpu_probe as gpu
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.system import build_system

    system = build_system(parse_profile("s4-replay"), ScenarioConfig(resources=3))
    before = [gpu.scanout_image(system.gpu_dev, i) for i in range(2)]
    keys = gpu.resource_keys(system.gpu_dev)
    system.guest.notify(PmEvent.HIBERNATION_PREPARE)
    system.guest.freeze_all()
    assert system.gpu_dev.resources == {}  # unreferenced on the host before the image would be written
    # ... the host fails to write the image: thaw
    system.guest.restore_all()
    system.guest.notify(PmEvent.POST_HIBERNATION)
    assert gpu.resource_keys(system.gpu_dev) == keys
    assert len(system.gpu_dev.resources) == len(keys)
    after = [gpu.scanout_image(system.gpu_dev, i) for i in range(2)]
    assert all(a is not None and b is not None and np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert system.gpu_drv.probe_alive()


def _with(monkeypatch: pytest.MonkeyPatch, change: Callable[[System], None]) -> None:
    """run_cell builds its system with ``change`` applied after boot."""
    def build(profile: Profile, cfg: ScenarioConfig) -> System:
        system = build_system(profile, cfg)
        change(system)
        return system

    monkeypatch.setattr(scenario, "build_system", build)


def _virgl(system: System) -> None:
    from pyvirtio.guest.gpu.driver import GpuObject, ObjectKind

    system.gpu_drv.objects.add(GpuObject(9999, kind=ObjectKind.VIRGL))


def _hang(system: System) -> None:
    system.gpu_dev.faults.quiesce_never_completes = True
    system.gpu_dev.faults.backend_hangs = True  # the backend hangs on the next command
    system.gpu_drv.submit(0x0100, b"", fence=True)


def _refuse_suspend(system: System) -> None:
    def notifier(event: PmEvent) -> None:
        if event is PmEvent.SUSPEND_PREPARE:
            raise SleepRefused("test notifier: not now")  # no "refus" in it

    system.guest.notifiers.append(notifier)


@pytest.mark.parametrize(("sleep", "change", "outcome"), [
    ("S4", _virgl, Outcome.REFUSED),  # the Linux 7.3 notifier refuses hibernation with virgl objects
    ("S4", _hang, Outcome.ABORTED),  # the freeze's drain times out
    ("S3", _refuse_suspend, Outcome.REFUSED),  # a notifier refuses PM_SUSPEND_PREPARE
    ("S3", _hang, Outcome.ABORTED),  # the S3 freeze's drain times out; the other devices are resumed
])
def test_refused_and_aborted_are_told_by_where_the_sleep_failed(monkeypatch: pytest.MonkeyPatch, sleep: str,
                                                                change: Callable[[System], None],
                                                                outcome: Outcome) -> None:
    """A PM notifier saying no is ``refused``; a device callback failing is ``aborted``. The kernel's message is
    kept as a note; the guest stays awake with its display."""
    _with(monkeypatch, change)
    c = run_cell(parse_profile("s4-replay"), sleep, ScenarioConfig(resources=0))
    assert c.outcome is outcome
    assert c.notes and c.suspend_ms is not None
    assert c.display_restored is True
    assert json.loads(json.dumps(asdict(c)))["outcome"] == outcome.value


def test_cell_enums_serialise_by_value() -> None:
    """report.json holds the values ("S3", "ok", "kept") and reads back as the enums."""
    c = run_cell(parse_profile("suspend-bit"), "S3")
    d = Report(cells=[c]).to_dict()["cells"][0]
    assert (d["source"], d["sleep"], d["outcome"], d["resources"]) == ("model", "S3", "ok", "kept")
    back = Report.from_dict(json.loads(json.dumps(Report(cells=[c]).to_dict()))).cells[0]
    assert back == c and back.resources is ResourceFate.KEPT and back.sleep is SleepState.S3
    with pytest.raises(UserInputError, match=r"malformed report: cells\[0\]\.outcome = 'fine': not one of ok, "):
        Report.from_dict({**Report(cells=[c]).to_dict(), "cells": [{**d, "outcome": "fine"}]})


def test_profile_plan_is_what_the_constructors_take() -> None:
    """The plan of each mechanism, and the one freeze_mode bit check (44..49, default 44)."""
    plan = parse_profile("freeze-mode").plan()
    assert plan.gpu_plug.freeze_mode and plan.gpu_plug.freeze_mode_bit == 44 and not plan.rng_plug.freeze_mode
    assert plan.driver_features == 1 << 44 and plan.gpu_driver.value == "basic-hooks"
    assert parse_profile("freeze-mode", freeze_mode_bit=49).plan().driver_features == 1 << 49
    for bad in (43, 50):
        with pytest.raises(UserInputError, match=r"44\.\.49"):
            parse_profile("freeze-mode", freeze_mode_bit=bad)
    nsr = parse_profile("suspend-bit").plan()
    assert (nsr.gpu_plug.pcie_port, nsr.gpu_plug.no_soft_reset, nsr.rng_plug.no_soft_reset) == (True, True, True)
    assert nsr.kernel.name == "linux-6.8+suspend" and nsr.driver_features == 0
    assert parse_profile("gpu-freezing").plan().gpu_device.offer_freezing
    system = build_system(parse_profile("freeze-mode"), ScenarioConfig(resources=0))
    assert system.freeze_mode is not None and system.freeze_mode.feature_bit == 44
    assert system.gpu_drv.extra_features & (1 << 44) and system.gpu_dev.offer_freezing is False


def test_jobs_2_gives_the_same_report_as_jobs_1(tmp_path: Path) -> None:
    """``pm matrix --jobs N``: the cells run in N worker processes and are merged in cell order, so the report
    (and the pictures) are byte for byte those of one process."""
    from pyvirtio.pm.matrix import run_matrix

    profiles, sleeps = ["baseline", "suspend-bit+s4-replay"], ["S3", "S4"]
    cfg = ScenarioConfig(resources=1, resource_size=4096)
    seen: list[str] = []
    one = run_matrix(profiles, sleeps, cfg, tmp_path, jobs=1)
    data = (tmp_path / "report.json").read_bytes()
    pictures = {p.name: p.read_bytes() for p in (tmp_path / "images").iterdir()}
    two = run_matrix(profiles, sleeps, cfg, tmp_path, progress=seen.append, jobs=2)
    assert (tmp_path / "report.json").read_bytes() == data
    assert one.to_dict() == two.to_dict()
    assert {p.name: p.read_bytes() for p in (tmp_path / "images").iterdir()} == pictures
    assert seen == ["baseline S3", "baseline S4", "suspend-bit+s4-replay S3", "suspend-bit+s4-replay S4"]


@pytest.mark.parametrize("jobs", [0, 65])
def test_jobs_out_of_range(jobs: int) -> None:
    from pyvirtio.pm.matrix import run_matrix

    with pytest.raises(ValueError, match="jobs"):
        run_matrix(["baseline"], ["S3"], jobs=jobs)
    r = CliRunner().invoke(main, ["pm", "matrix", "--jobs", str(jobs)])
    assert r.exit_code == 2 and "--jobs" in r.output and "Traceback" not in r.output
