"""The real VM's adapter of :mod:`pyvirtio.timeline`: a cell's QEMU trace windows as timeline events.

Contract: :func:`real_events` turns parsed trace records (:mod:`pyvirtio.vm.statustrace`, with the ``pid@sec.usec:``
prefix that ``-msg timestamp=on`` gives on both stacks) into the same :class:`~pyvirtio.timeline.TimelineEvent`
list the model produces, so both render alike: status writes (``virtio_set_status``, named through the device
mapping), D-state changes (``pci_pm_transition``), BARs unmapped and mapped again (``pci_update_mappings_*``,
QEMU 10 unmaps a function's BARs in D3hot), device resets (``resettable_phase_hold_exec``), work the device did
(``virtio_rng_pushed``, ``virtio_gpu_cmd_*``: used-buffer ticks) and machine events (S3 wake-up, CPU reset) on
every lane. A record without a time takes the previous one's (the picture then shows trace order). Several windows
(S4: one per boot) follow each other, the next starting where the previous ended, marked "new machine".
"""

from __future__ import annotations

from collections.abc import Sequence

from pyvirtio.timeline import ALL, DEVICES, EventKind, TimelineEvent
from pyvirtio.vm.statustrace import RESET_EVENT, TraceRecord

#: Same-label markers of one device closer than this (ns) are one marker.
BURST_NS = 1_000_000
#: Machine-wide trace events and how the picture names them.
_MACHINE = {"system_wakeup_request": "wake", "guest_cpu_reset": "cpu reset", "cpu_reset": "cpu reset"}


def _one(r: TraceRecord, mapping: dict[str, str], devices: Sequence[str], t: int) -> list[TimelineEvent]:
    if r.event in _MACHINE:
        return [TimelineEvent(ALL, t, EventKind.PM, label=_MACHINE[r.event])]
    if r.event == "virtio_set_status" and r.vdev in mapping and r.value is not None:
        name = mapping[r.vdev]
        return [TimelineEvent(name, t, EventKind.STATUS, value=r.value)] if name in devices else []
    if r.device is None or r.device not in devices:
        owner = mapping.get(r.vdev or "")
        if owner is not None and owner in devices:
            if r.event == "virtio_rng_pushed":
                return [TimelineEvent(owner, t, EventKind.USED, value=0)]
            if r.event == "virtio_rng_request":
                return [TimelineEvent(owner, t, EventKind.KICK, value=0)]
        if r.event.startswith("virtio_gpu_cmd_") and "gpu" in devices:
            return [TimelineEvent("gpu", t, EventKind.USED, value=0)]
        return []
    dev = r.device
    if r.event == "pci_pm_transition":
        to = r.text.rsplit("->", 1)[-1].strip()
        return [TimelineEvent(dev, t, EventKind.D_STATE, label="D3hot" if to.startswith("D3") else to)]
    if r.event == "pci_update_mappings_del":
        return [TimelineEvent(dev, t, EventKind.PM, label="BARs unmapped")]
    if r.event == "pci_update_mappings_add":
        return [TimelineEvent(dev, t, EventKind.PM, label="BARs mapped")]
    if r.event == RESET_EVENT:  # a reset puts the function back in D0 (QEMU logs no PM transition for it)
        return [TimelineEvent(dev, t, EventKind.PM, label="reset"), TimelineEvent(dev, t, EventKind.D_STATE,
                                                                                  label="D0")]
    return []


def real_events(windows: Sequence[tuple[Sequence[TraceRecord], dict[str, str]]],
                devices: Sequence[str] = DEVICES) -> list[TimelineEvent]:
    """The timeline events of ``windows`` (each: the records of one trace window and its pointer -> name
    mapping), times in ns from the first record, consecutive labels of one device deduplicated (QEMU logs one
    ``pci_update_mappings_*`` per BAR)."""
    out: list[TimelineEvent] = []
    last: dict[tuple[str, EventKind], tuple[str, int]] = {}
    offset = 0
    for k, (records, mapping) in enumerate(windows):
        times = [r.time_ns for r in records if r.time_ns is not None]
        t0 = times[0] if times else 0
        if k > 0:
            out.append(TimelineEvent(ALL, offset, EventKind.PM, label="new machine"))
        t = t0
        for r in records:
            t = r.time_ns if r.time_ns is not None else t
            for e in _one(r, mapping, devices, offset + t - t0):
                key = (e.device, e.kind)
                if e.kind is EventKind.D_STATE and last.get(key, ("", -1))[0] == e.label:
                    continue  # no D-state "change" to the same state
                if e.kind is EventKind.PM and last.get(key, ("", -1))[0] == e.label and \
                        e.time_ns - last[key][1] <= BURST_NS:
                    continue  # one marker per burst (QEMU logs a line per BAR)
                last[key] = (e.label, e.time_ns)
                out.append(e)
        offset += (t - t0) + 1_000_000
    return out


__all__ = ["real_events"]
