"""A cell's timeline as a picture: one lane per device, from a small typed list of events.

The input is a list of :class:`TimelineEvent` (device, virtual time in ns, kind, value or label), so the model
(:func:`from_trace` converts its :class:`~pyvirtio.trace.Trace`) and a real VM (status lines with times) feed the
same picture. Each lane shows the device status byte (virtio 1.4 §2.1) as a step plot with hex labels where it
changes, the PCI power state (D0/D3hot) as a band, PM events as vertical markers (machine-wide ones on every
lane), and interrupts, queue kicks and used-buffer notifications as ticks. Long idle stretches (the machine
asleep) are compressed and labelled with their real length.

Contract: :func:`render` is deterministic (fixed size and dpi, no timestamp or software tag in the PNG: the same
events give the same bytes). matplotlib is imported here only, lazily, with the Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from pyvirtio.spec.constants import (
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFF_MULTIPLIER,
    QEMU_NOTIFY_OFFSET,
    QEMU_REGION_SIZE,
)
from pyvirtio.trace import Kind, TraceEvent

T = TypeVar("T")

#: The device name of an event that concerns the whole machine (drawn on every lane).
ALL = "*"
#: The lanes of a PM cell, top to bottom.
DEVICES = ("gpu", "rng")
#: An idle stretch longer than this (ns) is drawn compressed to :data:`GAP_WIDTH_NS`.
GAP_NS = 5_000_000
GAP_WIDTH_NS = 2_000_000


class EventKind(Enum):
    """What a :class:`TimelineEvent` says."""

    STATUS = "status"  # value: the device status byte now presented
    D_STATE = "d_state"  # label: "D0" or "D3hot"
    PM = "pm"  # label: suspend requested, quiesced, sleep, wake reset, resumed, power off, new machine...
    INTERRUPT = "interrupt"  # label: why (config, queueN)
    KICK = "kick"  # value: the queue the driver notified
    USED = "used"  # value: the queue whose used buffers the device signalled


@dataclass(frozen=True)
class TimelineEvent:
    """One point of a timeline: ``device`` (or :data:`ALL`), virtual time in ns, kind, value or label."""

    device: str
    time_ns: int
    kind: EventKind
    value: int | None = None
    label: str = ""


#: Device-side PM trace events and how the picture names them.
_DEVICE_PM = {"suspend_requested": "suspend requested", "suspended": "quiesced", "resume_requested": "resume",
              "resumed": "resumed", "freeze_mode": "freeze mode", "gpu_freezing": "gpu freezing"}
#: Machine and guest PM trace events drawn on every lane.
_MACHINE_PM = {"sleep": "sleep", "wake": "wake", "power_off": "power off", "suspend_devices": "suspend",
               "suspend_aborted": "suspend aborted", "freeze_aborted": "freeze aborted"}


def _kick_queue(e: TraceEvent) -> int | None:
    """The queue a BAR write notified (QEMU layout, §4.1.4.4), or None if it was no notification."""
    d = e.detail
    if d.get("bar") != QEMU_MODERN_BAR or d.get("unmapped") or d.get("size") != 2:
        return None
    off = int(d.get("offset", 0))
    if off // QEMU_REGION_SIZE * QEMU_REGION_SIZE < QEMU_NOTIFY_OFFSET:
        return None
    queue, rem = divmod(off - QEMU_NOTIFY_OFFSET, QEMU_NOTIFY_OFF_MULTIPLIER)
    return None if rem else queue


def _one(e: TraceEvent, devices: Sequence[str], t: int) -> list[TimelineEvent]:
    ev = str(e.detail.get("event", ""))
    if e.kind is Kind.PM and e.src in ("machine", "guest"):
        if e.src == "machine" and ev == "system_reset":
            return [TimelineEvent(ALL, t, EventKind.PM, label=f"{e.detail.get('kind', '')} reset")]
        label = _MACHINE_PM.get(ev)
        if label and ev == "sleep":
            label = f"sleep {e.detail.get('state', '')}".strip()
        dev = str(e.detail.get("dev", ""))
        if label is None and dev in devices:
            return [TimelineEvent(dev, t, EventKind.PM, label=ev.replace("_", " "))]
        return [] if label is None else [TimelineEvent(ALL, t, EventKind.PM, label=label)]
    if e.src not in devices:
        return []
    if e.kind is Kind.STATUS:
        return [TimelineEvent(e.src, t, EventKind.STATUS, value=int(e.detail["status"]))]
    if e.kind is Kind.PM:
        if ev == "power_state":
            return [TimelineEvent(e.src, t, EventKind.D_STATE, label=str(e.detail.get("to", "")))]
        return [TimelineEvent(e.src, t, EventKind.PM, label=_DEVICE_PM.get(ev, ev.replace("_", " ")))]
    if e.kind is Kind.RESET:
        label = "reset skipped (NSR)" if e.detail.get("skipped") else "reset"
        return [TimelineEvent(e.src, t, EventKind.PM, label=label)]
    if e.kind is Kind.INTERRUPT:
        why = str(e.detail.get("why", ""))
        out = [TimelineEvent(e.src, t, EventKind.INTERRUPT, label=why)]
        if why.startswith("queue") and why[5:].isdigit() and not e.detail.get("dropped"):
            out.append(TimelineEvent(e.src, t, EventKind.USED, value=int(why[5:])))
        return out
    if e.kind is Kind.BAR_WRITE:
        q = _kick_queue(e)
        return [] if q is None else [TimelineEvent(e.src, t, EventKind.KICK, value=q)]
    return []


def from_trace(events: Iterable[TraceEvent], devices: Sequence[str] = DEVICES, *,
               offset_ns: int = 0) -> list[TimelineEvent]:
    """The model adapter: the timeline events of a slice of a model trace (times shifted by ``offset_ns``).

    Status changes, power-state changes, device PM steps, resets (a skipped No_Soft_Reset one says so),
    interrupts (a ``queueN`` one that went out is also a used-buffer tick) and queue notifications (16-bit BAR4
    writes in the notify region) of ``devices``; machine and guest PM steps become :data:`ALL` events.
    """
    return [x for e in events for x in _one(e, devices, e.t + offset_ns)]


def initial(time_ns: int, status: dict[str, int], d_state: str = "D0") -> list[TimelineEvent]:
    """The state each device starts a timeline in (its status byte and power state at ``time_ns``)."""
    return [TimelineEvent(d, time_ns, k, value=status[d] if k is EventKind.STATUS else None,
                          label="" if k is EventKind.STATUS else d_state)
            for d in status for k in (EventKind.STATUS, EventKind.D_STATE)]


class _Axis:
    """Virtual time -> x (ms), with every idle stretch longer than :data:`GAP_NS` drawn :data:`GAP_WIDTH_NS` wide."""

    def __init__(self, times: Sequence[int], gap_ns: int = GAP_NS) -> None:
        ts = sorted(set(times)) or [0]
        self.t0 = ts[0]
        self.gaps: list[tuple[int, int]] = [(a, b) for a, b in pairwise(ts) if b - a > gap_ns]
        self.end = self.x(ts[-1])

    def x(self, t: int) -> float:
        cut = sum(b - a - GAP_WIDTH_NS for a, b in self.gaps if t >= b)
        return (t - self.t0 - cut) / 1e6


# lane rows (data y): D-state band, ticks, then the status step plot above
_Y_D, _Y_IRQ, _Y_KICK, _Y_USED, _Y_STATUS = 0.15, 0.55, 0.85, 1.15, 1.6
_STATUS_H = 1.2
_Y_TOP = 5.0
_D_COLOUR = {"D0": "#9fd89f", "D3hot": "#f0b27a"}


def render(events: Sequence[TimelineEvent], path: Path, *, title: str = "",
           devices: Sequence[str] | None = None, clock: str = "virtual time", gap_ns: int = GAP_NS) -> str:
    """Draw ``events`` (:func:`figure`) as a PNG at ``path`` and return the path as a string.

    The same events give the same bytes: fixed size and dpi, no software tag or time in the file.
    """
    fig = figure(events, title=title, devices=devices, clock=clock, gap_ns=gap_ns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    return str(path)


def figure(events: Sequence[TimelineEvent], *, title: str = "", devices: Sequence[str] | None = None,
           clock: str = "virtual time", gap_ns: int = GAP_NS) -> Any:
    """The timeline as a matplotlib ``Figure`` (Agg canvas): one lane (axes) per device, ``devices`` fixing the
    lanes and their order (by default the devices in order of first appearance); ``clock`` names the time axis
    (the model's virtual time, a real VM's wall-clock time); idle stretches longer than ``gap_ns`` are
    compressed (a real VM's trace is sparse at the model's scale: give it a larger one)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lanes = list(devices) if devices is not None else list(dict.fromkeys(
        e.device for e in events if e.device != ALL)) or ["-"]
    ev = sorted(events, key=lambda e: e.time_ns)
    ax_t = _Axis([e.time_ns for e in ev], gap_ns)
    end = ax_t.end + 0.5
    fig = Figure(figsize=(12, 1.0 + 2.6 * len(lanes)), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(lanes), 1, squeeze=False)[:, 0]
    for ax, dev in zip(axes, lanes, strict=True):
        _lane(ax, dev, [e for e in ev if e.device in (dev, ALL)], ax_t, end)
    for a, b in ax_t.gaps:
        for ax in axes:
            ax.axvspan(ax_t.x(a), ax_t.x(a) + GAP_WIDTH_NS / 1e6, color="#eeeeee", zorder=0)
            ax.text(ax_t.x(a) + GAP_WIDTH_NS / 2e6, _Y_STATUS - 0.2, f"{(b - a) / 1e6:.0f} ms idle", ha="center",
                    va="top", fontsize=7, color="#666666")
    axes[-1].set_xlabel(f"{clock} (ms from the first event; grey: idle stretches compressed)")
    for ax in axes:  # the lanes share one x range; only the bottom one is labelled
        ax.set_xlim(-0.02 * end, end)
        ax.set_xticks(_ticks(end) if ax is axes[-1] else [])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9 if title else 0.95, bottom=0.12, hspace=0.35)
    return fig


def _lane(ax: Any, dev: str, ev: Sequence[TimelineEvent], axis: _Axis, end: float) -> None:
    ax.set_ylim(-0.1, _Y_TOP)
    ax.set_yticks([])  # row names as plain text (cheaper to draw than ticks)
    for y, name in ((_Y_D, "D-state"), (_Y_IRQ, "irq"), (_Y_KICK, "kick"), (_Y_USED, "used"),
                    (_Y_STATUS + _STATUS_H / 2, "status")):
        ax.text(-0.005, y, name, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=8)
    ax.set_ylabel(dev, fontsize=11, fontweight="bold", labelpad=38)
    ax.tick_params(axis="x", labelsize=8)
    # status byte: step plot, hex label at every change
    st = [(axis.x(e.time_ns), int(e.value or 0)) for e in ev if e.kind is EventKind.STATUS]
    if st:
        top = max(0x1F, max(v for _, v in st))
        xs = [x for x, _ in st] + [end]
        ys = [_Y_STATUS + _STATUS_H * v / top for _, v in st]
        ax.step(xs, ys + ys[-1:], where="post", color="#1f4e9a", linewidth=1.5)
        for i, (x, vals) in enumerate(_groups(st)):
            y = _Y_STATUS + _STATUS_H * vals[-1] / top + 0.08 + 0.3 * (i % 2)
            ax.text(x, y, "›".join(f"{v:#04x}" for v in _dedup(vals)), fontsize=7, color="#1f4e9a")
    # power state band
    ds = [(axis.x(e.time_ns), e.label) for e in ev if e.kind is EventKind.D_STATE]
    for i, (x, label) in enumerate(ds):
        x_end = ds[i + 1][0] if i + 1 < len(ds) else end
        if x_end <= x:
            continue  # superseded at the same instant
        ax.broken_barh([(x, max(x_end - x, 0.0))], (_Y_D - 0.12, 0.24), facecolors=_D_COLOUR.get(label, "#cccccc"))
        if i == 0 or label != ds[i - 1][1] or ds[i - 1][0] == x:
            ax.text(x + 0.05, _Y_D, label, fontsize=7, va="center")
    # ticks
    for kind, y, colour in ((EventKind.INTERRUPT, _Y_IRQ, "#b03a2e"), (EventKind.KICK, _Y_KICK, "#117a65"),
                            (EventKind.USED, _Y_USED, "#7d3c98")):
        xs = [axis.x(e.time_ns) for e in ev if e.kind is kind]
        if xs:
            ax.vlines(xs, y - 0.1, y + 0.1, colors=colour, linewidth=1)
    # PM markers: a vertical line each; coincident labels are one stacked text
    pm = [(axis.x(e.time_ns), e) for e in ev if e.kind is EventKind.PM]
    for x, e in pm:
        colour = "#444444" if e.device == ALL else "#c0392b"
        ax.axvline(x, color=colour, linestyle="--" if e.device == ALL else ":", linewidth=0.8)
    for x, labels in _groups([(x, e.label) for x, e in pm], 0.25):
        ax.text(x + 0.03, _Y_TOP - 0.08, "\n".join(dict.fromkeys(labels)), fontsize=6.5,
                color="#333333", va="top", linespacing=1.0)


def _ticks(end: float) -> list[float]:
    """About six round tick positions from 0 to ``end`` (fixed, so matplotlib's locator does not run)."""
    raw = max(end / 6, 1e-3)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(end / step) + 1)]


def _dedup(values: Sequence[int]) -> list[int]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def _groups(points: Sequence[tuple[float, T]], within: float = 0.0) -> list[tuple[float, list[T]]]:
    """Consecutive points closer than ``within`` to their group's first x, as (x, values)."""
    out: list[tuple[float, list[T]]] = []
    for x, v in points:
        if out and x - out[-1][0] <= within:
            out[-1][1].append(v)
        else:
            out.append((x, [v]))
    return out

def side_by_side(left: Path, right: Path, path: Path) -> str:
    """Two timeline PNGs (model, real) next to each other in one PNG at ``path`` (Pillow; white padding where
    one is shorter); returns the path as a string. Deterministic like :func:`render`."""
    from PIL import Image

    with Image.open(left) as a, Image.open(right) as b:
        out = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "white")
        out.paste(a.convert("RGB"), (0, 0))
        out.paste(b.convert("RGB"), (a.width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="png", compress_level=1)
    return str(path)


__all__ = ["ALL", "DEVICES", "EventKind", "TimelineEvent", "figure", "from_trace", "initial", "render",
           "side_by_side"]
