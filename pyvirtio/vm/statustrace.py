"""Parse QEMU's ``-trace`` log (log backend, ``-D file``) into per-device status-byte sequences.

``virtio_set_status`` names a device only by its ``VirtIODevice`` pointer. Pointers are mapped to report names
by evidence in the same log: ``virtio_blk_*`` and ``virtio_rng_*`` events carry their device's pointer; the
first ``virtio_gpu_cmd_get_edid``/``get_display_info`` after a device sets DRIVER_OK belongs to the device
that just set it; a single pointer left over is the last unnamed device. Where the log has
``resettable_phase_hold_exec obj=0x...(virtio-gpu-device)`` lines (traced on QEMU 10) the pointer's QOM type
names the device outright and overrides every other evidence. ``qmp_enter_x_query_virtio`` lines
(the harness runs ``x-query-virtio`` at chosen moments) mark windows in the log.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyvirtio.spec.constants import Status
from pyvirtio.trace import dedup

MARKER_EVENT = "qmp_enter_x_query_virtio"

_LINE = re.compile(r"^(?:\d+@(?P<sec>\d+)\.(?P<usec>\d+):)?(?P<event>[a-z0-9_]+)(?P<rest>.*)$")
_PCI_DEV = re.compile(r"^\s*(?P<type>[a-z0-9-]+) ")
_STATUS = re.compile(r"vdev (?P<ptr>0x[0-9a-f]+|\(nil\)) val (?P<val>\d+)")
_BLK = re.compile(r"vdev (?P<ptr>0x[0-9a-f]+)")
_RNG = re.compile(r"rng (?P<ptr>0x[0-9a-f]+)")
_RESET_OBJ = re.compile(r"obj=(?P<ptr>0x[0-9a-f]+)\((?P<type>[a-z0-9-]+)\)")
RESET_EVENT = "resettable_phase_hold_exec"
#: QOM type of each virtio device (the VirtIODevice behind the PCI proxy) -> report name.
DEVICE_TYPES = {"virtio-gpu-device": "gpu", "virtio-blk-device": "blk", "virtio-rng-device": "rng",
                "virtio-keyboard-device": "input"}
#: QOM type of each virtio PCI proxy (named by ``pci_pm_transition`` and ``pci_update_mappings_*``) -> report name.
PCI_TYPES = {"virtio-gpu-pci": "gpu", "virtio-blk-pci": "blk", "virtio-rng-pci": "rng",
             "virtio-keyboard-pci": "input"}
#: PCI events whose first word is the function's QOM type.
PCI_EVENTS = frozenset({"pci_pm_transition", "pci_update_mappings_del", "pci_update_mappings_add"})
#: Commands the Linux driver sends right after it sets DRIVER_OK while probing.
_GPU_PROBE_CMDS = frozenset({"virtio_gpu_cmd_get_display_info", "virtio_gpu_cmd_get_edid"})


@dataclass(frozen=True)
class TraceRecord:
    """One trace line: event name, the device pointer it names (if any), the status value (set_status), and
    the wall-clock time in ns when the line has QEMU's ``pid@sec.usec:`` prefix (``-msg timestamp=on``)."""

    event: str
    vdev: str | None = None
    value: int | None = None
    text: str = ""
    device: str | None = None  # report name from the QOM type (``resettable_phase_hold_exec``, ``pci_*``)
    time_ns: int | None = None


def parse_trace(text: str) -> list[TraceRecord]:
    """Parse the whole log; lines that are not trace events (or are cut off) are skipped."""
    out: list[TraceRecord] = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        event, rest = m.group("event"), m.group("rest")
        t = int(m.group("sec")) * 1_000_000_000 + int(m.group("usec").ljust(6, "0")[:6]) * 1000 \
            if m.group("sec") else None
        if event == "virtio_set_status":
            s = _STATUS.search(rest)
            if not s:
                continue
            out.append(TraceRecord(event, s.group("ptr"), int(s.group("val")), line, time_ns=t))
        elif event.startswith("virtio_blk_"):
            b = _BLK.search(rest)
            out.append(TraceRecord(event, b.group("ptr") if b else None, None, line, time_ns=t))
        elif event.startswith("virtio_rng_"):
            r = _RNG.search(rest)
            out.append(TraceRecord(event, r.group("ptr") if r else None, None, line, time_ns=t))
        elif event == RESET_EVENT:
            o = _RESET_OBJ.search(rest)
            if o and o.group("type") in DEVICE_TYPES:
                out.append(TraceRecord(event, o.group("ptr"), None, line, DEVICE_TYPES[o.group("type")], t))
        elif event in PCI_EVENTS:
            d = _PCI_DEV.match(rest)
            out.append(TraceRecord(event, None, None, line, PCI_TYPES.get(d.group("type")) if d else None, t))
        else:
            out.append(TraceRecord(event, None, None, line, time_ns=t))
    return out


def identify_devices(records: Sequence[TraceRecord], names: Iterable[str]) -> dict[str, str]:
    """Map device pointers to report names (``gpu``, ``blk``, ``rng``, ``input``) from trace evidence.

    Only names in ``names`` are assigned; a pointer with conflicting evidence is left out.
    """
    wanted = set(names)
    typed = {r.vdev: r.device for r in records if r.event == RESET_EVENT and r.vdev and r.device in wanted}
    if typed and len(set(typed.values())) == len(typed):
        return {p: n for p, n in typed.items() if n is not None}
    votes: dict[str, Counter[str]] = {}

    def vote(ptr: str | None, name: str) -> None:
        if ptr and name in wanted:
            votes.setdefault(ptr, Counter())[name] += 1

    last_ok: str | None = None
    for rec in records:
        if rec.event == "virtio_set_status" and rec.value is not None:
            last_ok = rec.vdev if rec.value & Status.DRIVER_OK else last_ok
        elif rec.event.startswith("virtio_blk_"):
            vote(rec.vdev, "blk")
        elif rec.event.startswith("virtio_rng_"):
            vote(rec.vdev, "rng")
        elif rec.event.startswith("virtio_gpu_cmd_"):
            if last_ok is not None and rec.event in _GPU_PROBE_CMDS:
                vote(last_ok, "gpu")
            last_ok = None  # only the first command after a DRIVER_OK counts
    mapping: dict[str, str] = {}
    for ptr, c in votes.items():
        (name, n), *rest = c.most_common()
        if not rest or rest[0][1] < n:
            mapping[ptr] = name
    # One name per pointer: if two pointers claim a name, keep the better-supported one.
    by_name: dict[str, str] = {}
    for ptr, name in sorted(mapping.items(), key=lambda kv: -votes[kv[0]][kv[1]]):
        by_name.setdefault(name, ptr)
    mapping = {ptr: name for name, ptr in by_name.items()}
    seen = [r.vdev for r in records if r.event == "virtio_set_status" and r.vdev and r.vdev != "(nil)"]
    unknown = sorted(set(seen) - set(mapping))
    left = sorted(wanted - set(mapping.values()))
    if len(unknown) == 1 and len(left) == 1:
        mapping[unknown[0]] = left[0]
    return mapping


def marker_indices(records: Sequence[TraceRecord]) -> list[int]:
    """Indices of window markers (``x-query-virtio`` calls)."""
    return [i for i, r in enumerate(records) if r.event == MARKER_EVENT]


def status_sequences(records: Sequence[TraceRecord], mapping: dict[str, str], start: int = 0,
                     end: int | None = None, *, with_initial: bool = True) -> dict[str, list[int]]:
    """Per device name, the status values set in ``records[start:end]`` without repeats.

    With ``with_initial`` each sequence starts with the device's last status before ``start`` (if any).
    """
    stop = len(records) if end is None else end
    seqs: dict[str, list[int]] = {name: [] for name in mapping.values()}
    for i, rec in enumerate(records[:stop]):
        if rec.event != "virtio_set_status" or rec.vdev not in mapping or rec.value is None:
            continue
        name = mapping[rec.vdev]
        if i < start:
            if with_initial:
                seqs[name] = [rec.value]
            continue
        seqs[name].append(rec.value)
    return {k: dedup(v) for k, v in seqs.items()}


#: Machine events shown in annotated sequences.
_ANNOTATE = {"system_wakeup_request": "[wake]", "guest_cpu_reset": None}


def annotated_sequences(records: Sequence[TraceRecord], mapping: dict[str, str], start: int = 0,
                        end: int | None = None) -> dict[str, str]:
    """Per device, every status write in the window (repeats kept) with ``[wake]`` where QEMU woke from S3."""
    out: dict[str, list[str]] = {name: [] for name in mapping.values()}
    for rec in records[start:end]:
        if rec.event == "virtio_set_status" and rec.vdev in mapping and rec.value is not None:
            out[mapping[rec.vdev]].append(f"{rec.value:#04x}")
        elif _ANNOTATE.get(rec.event):
            for seq in out.values():
                seq.append(str(_ANNOTATE[rec.event]))
    return {k: " ".join(v) for k, v in out.items()}


def events_between(records: Sequence[TraceRecord], prefix: str, start: int = 0,
                   end: int | None = None) -> list[str]:
    """Names of events starting with ``prefix`` in ``records[start:end]`` (e.g. ``virtio_gpu_cmd_``)."""
    return [r.event for r in records[start:end] if r.event.startswith(prefix)]


def last_index(records: Sequence[TraceRecord], event: str, start: int = 0, end: int | None = None) -> int | None:
    """Index of the last ``event`` in ``records[start:end]``."""
    stop = len(records) if end is None else end
    for i in range(stop - 1, start - 1, -1):
        if records[i].event == event:
            return i
    return None


def format_sequence(seq: Sequence[int]) -> str:
    """``[15, 11, 0]`` -> ``"0x0f 0x0b 0x00"``."""
    return " ".join(f"{v:#04x}" for v in seq)
