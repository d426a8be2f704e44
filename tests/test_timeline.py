"""The timeline picture: the model adapter, the lanes, and deterministic PNG bytes."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from pyvirtio.cli import main
from pyvirtio.timeline import (
    ALL,
    GAP_NS,
    GAP_WIDTH_NS,
    EventKind,
    TimelineEvent,
    figure,
    from_trace,
    initial,
    render,
)
from pyvirtio.trace import Kind, Trace

ROOT = Path(__file__).resolve().parent.parent

E = EventKind


class _Clock:
    """A hand-moved clock: ``now`` in ns."""

    def __init__(self) -> None:
        self.now = 0

    def advance(self, ns: int) -> None:
        self.now += ns


def _small_trace() -> Trace:
    clock = _Clock()
    tr = Trace(clock)
    tr.record(Kind.PM, "guest", event="notifier", what="PM_SUSPEND_PREPARE")  # not drawn
    tr.record(Kind.PM, "guest", event="suspend_devices", state="S3")
    tr.record(Kind.STATUS, "gpu", status=0x1F)
    tr.record(Kind.PM, "gpu", event="suspend_requested")
    clock.advance(1000)
    tr.record(Kind.INTERRUPT, "gpu", vector=1, why="queue0")
    tr.record(Kind.INTERRUPT, "gpu", why="queue1", dropped="NO_VECTOR")
    tr.record(Kind.PM, "gpu", event="suspended")
    tr.record(Kind.PM, "gpu", event="power_state", frm="D0", to="D3hot")
    tr.record(Kind.STATUS, "net", status=0xF)  # not a lane
    tr.record(Kind.PM, "machine", event="sleep", state="S3")
    clock.advance(2000)
    tr.record(Kind.PM, "machine", event="system_reset", kind="wakeup")
    tr.record(Kind.RESET, "gpu", kind="wakeup", skipped="No_Soft_Reset in D3hot")
    tr.record(Kind.RESET, "rng", kind="wakeup")
    tr.record(Kind.BAR_WRITE, "rng", bar=4, offset=0x3000, size=2, value=0)  # kick queue 0
    tr.record(Kind.BAR_WRITE, "rng", bar=4, offset=0x3004, size=2, value=1, unmapped=True)  # not delivered
    tr.record(Kind.BAR_WRITE, "rng", bar=4, offset=0x0014, size=1, value=0xF)  # common cfg, no kick
    tr.record(Kind.CONFIG_READ, "rng", offset=0, size=4, value=0)
    tr.record(Kind.INTERRUPT, "gpu", vector=0, why="config")
    return tr


def test_adapter_maps_a_small_trace() -> None:
    """Status, D-state, device and machine PM steps, resets, interrupts, used buffers and kicks, nothing else."""
    got = from_trace(_small_trace(), offset_ns=10)
    assert got == [
        TimelineEvent(ALL, 10, E.PM, label="suspend"),
        TimelineEvent("gpu", 10, E.STATUS, value=0x1F),
        TimelineEvent("gpu", 10, E.PM, label="suspend requested"),
        TimelineEvent("gpu", 1010, E.INTERRUPT, label="queue0"),
        TimelineEvent("gpu", 1010, E.USED, value=0),
        TimelineEvent("gpu", 1010, E.INTERRUPT, label="queue1"),  # dropped: an interrupt tick, no used tick
        TimelineEvent("gpu", 1010, E.PM, label="quiesced"),
        TimelineEvent("gpu", 1010, E.D_STATE, label="D3hot"),
        TimelineEvent(ALL, 1010, E.PM, label="sleep S3"),
        TimelineEvent(ALL, 3010, E.PM, label="wakeup reset"),
        TimelineEvent("gpu", 3010, E.PM, label="reset skipped (NSR)"),
        TimelineEvent("rng", 3010, E.PM, label="reset"),
        TimelineEvent("rng", 3010, E.KICK, value=0),
        TimelineEvent("gpu", 3010, E.INTERRUPT, label="config"),
    ]


def test_initial_state() -> None:
    """Every lane starts with its status byte and power state."""
    assert initial(5, {"gpu": 0xF}) == [TimelineEvent("gpu", 5, E.STATUS, value=0xF),
                                       TimelineEvent("gpu", 5, E.D_STATE, label="D0")]


def _events() -> list[TimelineEvent]:
    return initial(0, {"gpu": 0xF, "rng": 0xF}) + from_trace(_small_trace()) + [
        TimelineEvent("rng", 2 * GAP_NS, E.STATUS, value=0)]


def test_one_lane_per_device() -> None:
    """One axes per device, in the given order, named by the device; machine-wide events go on every lane."""
    fig = figure(_events(), devices=("gpu", "rng"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["gpu", "rng"]
    for ax in fig.axes:
        assert any("sleep S3" in t.get_text() for t in ax.texts)
    assert [ax.get_ylabel() for ax in figure([TimelineEvent("rng", 0, E.STATUS, value=1)]).axes] == ["rng"]


def test_idle_stretch_is_compressed() -> None:
    """A gap longer than GAP_NS is drawn GAP_WIDTH_NS wide and labelled with its real length."""
    fig = figure(_events(), devices=("gpu", "rng"))
    lo, hi = fig.axes[-1].get_xlim()
    assert hi < (2 * GAP_NS) / 1e6  # not drawn to scale
    assert hi >= (3010 + GAP_WIDTH_NS) / 1e6
    assert any(re.fullmatch(r"\d+ ms idle", t.get_text()) for t in fig.axes[0].texts)


def test_png_is_deterministic(tmp_path: Path) -> None:
    """Same events, same bytes; the file carries no software tag or time."""
    a = Path(render(_events(), tmp_path / "a.png", title="t", devices=("gpu", "rng")))
    b = Path(render(_events(), tmp_path / "sub" / "b.png", title="t", devices=("gpu", "rng")))
    data = a.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == b.read_bytes()
    assert b"Software" not in data and b"tIME" not in data


def test_pm_run_writes_the_timeline(tmp_path: Path) -> None:
    """``pm run --out DIR`` writes DIR/<profile>-<sleep>-timeline.png and names it in the report."""
    r = CliRunner().invoke(main, ["pm", "run", "--profile", "suspend-bit", "--sleep", "S3", "--resources", "0",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    png = tmp_path / "suspend-bit-S3-timeline.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in (tmp_path / "report.json").read_text()


def test_matplotlib_only_in_timeline() -> None:
    """The plotting library is imported by pyvirtio/timeline.py alone."""
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "pyvirtio").rglob("*.py")
             if re.search(r"^\s*(import|from) matplotlib", p.read_text(), re.M)]
    assert users == ["pyvirtio/timeline.py"]
