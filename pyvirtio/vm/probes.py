"""Guest-side and QMP-side measurements of the four virtio devices: status, queues, functional probes.

Contract: a probe never raises for a device that does not work; it returns a :class:`ProbeResult` saying so. A
:class:`~pyvirtio.vm.errors.VmError` means the guest shell itself could not be driven (QEMU died, a time-out).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvirtio.spec.constants import Status
from pyvirtio.vm import image
from pyvirtio.vm.disk import SCRATCH, SCRATCH_DEV
from pyvirtio.vm.errors import VmError
from pyvirtio.vm.qmp import Qmp
from pyvirtio.vm.serial import SerialConsole

#: x-query-virtio-status status names -> bits.
_STATUS_NAMES = {
    "VIRTIO_CONFIG_S_ACKNOWLEDGE": Status.ACKNOWLEDGE,
    "VIRTIO_CONFIG_S_DRIVER": Status.DRIVER,
    "VIRTIO_CONFIG_S_DRIVER_OK": Status.DRIVER_OK,
    "VIRTIO_CONFIG_S_FEATURES_OK": Status.FEATURES_OK,
    "VIRTIO_CONFIG_S_NEEDS_RESET": Status.DEVICE_NEEDS_RESET,
    "VIRTIO_CONFIG_S_FAILED": Status.FAILED,
}


def decode_status(raw: Any) -> int:
    """The ``status`` member of ``x-query-virtio-status`` (a list of named bits) as a byte."""
    value = 0
    for s in raw.get("statuses", []) if isinstance(raw, dict) else []:
        value |= int(_STATUS_NAMES.get(str(s).split(":", 1)[0].strip(), 0))
    for u in raw.get("unknown-statuses", []) if isinstance(raw, dict) else []:
        value |= int(u)
    return value


@dataclass(frozen=True)
class QmpQueueStatus:
    """One virtqueue as QEMU reports it (``x-query-virtio-queue-status``)."""

    index: int
    desc: int
    last_avail: int
    used: int

    @property
    def configured(self) -> bool:
        """The driver set the queue up (its descriptor table address is not 0)."""
        return self.desc != 0

    def progressed_since(self, other: QmpQueueStatus) -> bool:
        """The device took or returned a buffer since ``other`` was read."""
        return (self.last_avail, self.used) != (other.last_avail, other.used)


@dataclass(frozen=True)
class DeviceState:
    """Status byte and queues of one device at one moment."""

    status: int
    queues: tuple[QmpQueueStatus, ...]

    def summary(self) -> str:
        """``status=0x0f q0 desc=... avail=... used=...``, for the notes."""
        qs = ", ".join(f"q{q.index} desc={q.desc:#x} avail={q.last_avail} used={q.used}" for q in self.queues)
        return f"status={self.status:#04x} {qs}"


def device_state(qmp: Qmp, path: str) -> DeviceState:
    """Query ``x-query-virtio-status`` and ``x-query-virtio-queue-status`` for every queue of ``path``."""
    st = qmp.execute("x-query-virtio-status", {"path": path})
    queues = []
    for i in range(int(st.get("num-vqs", 0))):
        q = qmp.execute("x-query-virtio-queue-status", {"path": path, "queue": i})
        queues.append(QmpQueueStatus(i, int(q["vring-desc"]), int(q["last-avail-idx"]), int(q["used-idx"])))
    return DeviceState(decode_status(st.get("status")), tuple(queues))


@dataclass
class ProbeResult:
    """Outcome of one functional probe."""

    ok: bool
    detail: str


class GuestShell:
    """The guest's shell on the serial console, and the probes run through it; one instance per cell,
    re-pointed at the new console after S4."""

    def __init__(self, console: SerialConsole, pattern_md5: str, timeout: float = 30.0) -> None:
        self.console = console
        self.pattern_md5 = pattern_md5
        self.timeout = timeout
        self._slot = 0
        self.kbd_event: str | None = None

    def sh(self, cmd: str, timeout: float | None = None) -> str:
        """Run ``cmd``; its output, or a :class:`VmError` if it failed."""
        return self.console.run(cmd, timeout or self.timeout).check(cmd)

    def setup(self) -> None:
        """Unbind fbcon so nothing but the probes draws; find the virtio keyboard's event node."""
        self.sh("for v in /sys/class/vtconsole/vtcon*; do grep -q 'frame buffer' $v/name && "
                "echo 0 > $v/bind; done; true")
        out = self.sh("for e in /sys/class/input/event*; do grep -q 'Virtio Keyboard' $e/device/name "
                      "&& echo ${e##*/}; done; true")
        self.kbd_event = out.strip().splitlines()[0] if out.strip() else None

    def fb_geometry(self) -> str:
        """``"<width>,<height> <stride>"`` of /dev/fb0, as sysfs reports them."""
        return self.sh("cat /sys/class/graphics/fb0/virtual_size /sys/class/graphics/fb0/stride "
                       "| tr '\\n' ' '").strip()

    def draw(self, frame: str) -> None:
        """Write a known frame (``a`` or ``b``) into /dev/fb0 with dd."""
        self.sh(f"zcat /data/frame-{frame}.gz | dd of=/dev/fb0 bs=65536 2>/dev/null")

    def blk_probe(self, disk: Path | None) -> ProbeResult:
        """Write the known pattern to a fresh slot of the scratch partition (O_DIRECT), read it back, compare.

        With ``disk`` (the host image) the host also checks the bytes landed there.
        """
        slot = self._slot
        self._slot += 1
        dev = f"/dev/{SCRATCH_DEV}"
        res = self.console.run(
            f"dd if=/data/blk-pattern.bin of={dev} bs=65536 seek={slot} oflag=direct conv=fsync "
            f"2>/dev/null && dd if={dev} bs=65536 skip={slot} count=1 iflag=direct 2>/dev/null | md5sum",
            self.timeout)
        got = res.output.split()[0] if res.rc == 0 and res.output.split() else ""
        if got != self.pattern_md5:
            return ProbeResult(False, f"slot {slot}: read back {got or 'nothing'} (rc {res.rc}), "
                                      f"want {self.pattern_md5}")
        detail = f"slot {slot}: write+read O_DIRECT md5 ok"
        if disk is not None:
            with open(disk, "rb") as f:
                f.seek(SCRATCH.offset + slot * 65536)
                host = hashlib.md5(f.read(image.BLK_PATTERN_SIZE)).hexdigest()
            if host != self.pattern_md5:
                return ProbeResult(False, f"{detail}, but the host image holds {host}")
            detail += ", host image matches"
        return ProbeResult(True, detail)

    def rng_probe(self) -> ProbeResult:
        """Read 64 bytes from /dev/hwrng (with a time-out) and check the current rng is virtio's."""
        res = self.console.run(
            "cat /sys/class/misc/hw_random/rng_current; timeout 10 dd if=/dev/hwrng of=/tmp/rng bs=32 count=2 "
            "2>/dev/null; wc -c < /tmp/rng; od -An -tx1 /tmp/rng | tr -d ' \\n' | head -c 16; echo",
            self.timeout + 15)
        lines = res.output.split()
        current = lines[0] if lines else "?"
        count = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else 0
        head = lines[2] if len(lines) > 2 else ""
        ok = current.startswith("virtio_rng") and count == 64 and head.strip("0") != ""
        return ProbeResult(ok, f"rng_current={current}, read {count}/64 bytes from /dev/hwrng ({head}...)")

    def input_probe(self, qmp: Qmp, timeout: float = 8.0) -> ProbeResult:
        """Read one input event from the virtio keyboard while QMP ``send-key`` presses shift."""
        if not self.kbd_event:
            return ProbeResult(False, "no event node for the virtio keyboard")
        pending = self.console.start(
            f"timeout {int(timeout)} dd if=/dev/input/{self.kbd_event} bs=24 count=1 2>/dev/null | wc -c")
        sent = 0
        deadline = time.monotonic() + timeout + 5
        result = None
        while time.monotonic() < deadline:
            qmp.execute("send-key", {"keys": [{"type": "qcode", "data": "shift"}], "hold-time": 20})
            sent += 1
            try:
                result = self.console.wait(pending, 0.3)
                break
            except VmError:
                if self.console.eof:
                    raise
        if result is None:
            result = self.console.wait(pending, 5.0)
        got = result.output.strip().splitlines()[-1] if result.output.strip() else "0"
        ok = got == "24"
        return ProbeResult(ok, f"{self.kbd_event}: {'an event arrived' if ok else 'no event'} "
                               f"after {sent} key press(es)")
