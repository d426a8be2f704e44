"""The real VM's timeline adapter: QEMU trace lines (with ``-msg timestamp=on`` prefixes) to timeline events."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pyvirtio.timeline import ALL, EventKind, render, side_by_side
from pyvirtio.vm.statustrace import identify_devices, parse_trace
from pyvirtio.vm.timeline import real_events

TRACE = """\
100@1000.000000:resettable_phase_hold_exec obj=0xa(virtio-gpu-device) cb=0x1 type=0
100@1000.000010:resettable_phase_hold_exec obj=0xb(virtio-rng-device) cb=0x1 type=0
100@1000.000100:virtio_set_status vdev 0xa val 15
100@1000.000200:virtio_set_status vdev 0xb val 15
100@1000.001000:virtio_rng_pushed rng 0xc: 64 bytes pushed
100@1000.002000:pci_pm_transition virtio-rng-pci 02:00.0 PM transition D0->D3
100@1000.002001:pci_update_mappings_del virtio-rng-pci 02:00.0 1,0xfe000000+0x1000
100@1000.002002:pci_update_mappings_del virtio-rng-pci 02:00.0 4,0xfe600000+0x4000
100@1000.500000:system_wakeup_request reason=0
100@1000.600000:pci_pm_transition virtio-rng-pci 02:00.0 PM transition D3->D0
not a trace line
virtio_gpu_cmd_res_flush res 0x1
"""


def test_trace_lines_carry_their_time_and_pci_device() -> None:
    recs = parse_trace(TRACE)
    assert recs[0].time_ns == 1000 * 10**9 and recs[4].time_ns == 1000 * 10**9 + 1_000_000
    pm = [r for r in recs if r.event == "pci_pm_transition"]
    assert [r.device for r in pm] == ["rng", "rng"]
    assert recs[-1].time_ns is None  # QEMU 10 without -msg timestamp=on


def test_real_events() -> None:
    recs = parse_trace(TRACE)
    mapping = identify_devices(recs, ("gpu", "rng"))
    assert mapping == {"0xa": "gpu", "0xb": "rng"}
    ev = real_events([(recs, mapping)])
    status = [(e.device, e.time_ns, e.value) for e in ev if e.kind is EventKind.STATUS]
    assert status == [("gpu", 100_000, 15), ("rng", 200_000, 15)]
    d_states = [(e.device, e.time_ns, e.label) for e in ev if e.kind is EventKind.D_STATE]
    assert d_states == [("gpu", 0, "D0"), ("rng", 10_000, "D0"),  # a reset puts a function in D0
                        ("rng", 2_000_000, "D3hot"), ("rng", 600_000_000, "D0")]
    # one marker for the two BARs; the wake on every lane; a gpu command without a time takes the last one's
    assert [e.label for e in ev if e.kind is EventKind.PM and e.device == "rng"] == ["reset", "BARs unmapped"]
    assert [e.label for e in ev if e.device == ALL] == ["wake"]
    assert [(e.device, e.time_ns) for e in ev if e.kind is EventKind.USED][-1] == ("gpu", 600_000_000)


def test_two_windows_follow_each_other(tmp_path: Path) -> None:
    recs = parse_trace(TRACE)
    mapping = identify_devices(recs, ("gpu", "rng"))
    ev = real_events([(recs, mapping), (recs, mapping)])
    marks = [e for e in ev if e.label == "new machine"]
    assert len(marks) == 1 and marks[0].time_ns == 601_000_000
    assert max(e.time_ns for e in ev) == 601_000_000 + 600_000_000
    a = render(ev, tmp_path / "a.png", clock="wall-clock time")
    b = render(ev[:5], tmp_path / "b.png")
    pair = side_by_side(Path(a), Path(b), tmp_path / "pair.png")
    with Image.open(a) as ia, Image.open(b) as ib, Image.open(pair) as ip:
        assert ip.size == (ia.width + ib.width, max(ia.height, ib.height))
