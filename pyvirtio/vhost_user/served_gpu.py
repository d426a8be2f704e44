"""pyvirtio's virtio-gpu as it is served over vhost-user: the unchanged model with served defaults, the
``error=CMD`` fault, and a trace of ring starts (virtio 1.4 §5.7).

Contract. :class:`ServedGpu` is :class:`~pyvirtio.host.gpu.device.Gpu` with:

* the display QEMU's ``vhost-user-gpu-pci`` starts with (1280x800, QEMU's ``xres``/``yres`` defaults; the
  display protocol replaces it with the front-end's display information as soon as that arrives), no modelled
  processing time (a served device answers at host speed; ``--fault delay=MS`` slows it on purpose);
* :attr:`ServedGpu.fail_command`: when set (``--fault error=CMD``), every request of that control command is
  answered ``VIRTIO_GPU_RESP_ERR_UNSPEC`` (§5.7.6.7) without being executed, and traced as a device event
  ``injected_error`` — not as a driver violation: the driver did nothing wrong;
* device events ``queue_started`` each time a queue goes live (its ring addresses and indices) and
  ``queue_stopped`` each time one is reset (the indices it had reached), so a listener can tell what the
  front-end stopped and restarted (the rest of the model is untouched).

:func:`gpu_command` turns a ``--fault error=`` value into a control command (one line naming the problem on a
name that is not one).
"""

from __future__ import annotations

from typing import Any

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.base import Pending, Reply
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import GpuCmd, GpuResp
from pyvirtio.trace import Kind

#: QEMU's default display size for virtio-gpu devices (``xres``, ``yres``).
QEMU_XRES, QEMU_YRES = 1280, 800
#: Control commands have a response to turn into an error; cursor commands get none (§5.7.6.10).
ERROR_COMMANDS = tuple(c for c in GpuCmd if c not in (GpuCmd.UPDATE_CURSOR, GpuCmd.MOVE_CURSOR,
                                                       GpuCmd.STATUS_FREEZING))
_FAST = 1 << 30


def gpu_command(name: str) -> GpuCmd | str:
    """``RESOURCE_FLUSH`` (any case, with or without ``VIRTIO_GPU_CMD_``/``CMD_``, or its number ``0x104``) ->
    the command; a one-line problem for anything else."""
    key = name.strip().upper()
    for prefix in ("VIRTIO_GPU_CMD_", "CMD_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    cmd: GpuCmd | None = None
    if key in GpuCmd.__members__:
        cmd = GpuCmd[key]
    else:
        try:
            cmd = GpuCmd(int(key, 0))
        except ValueError:
            cmd = None
    if cmd is None or cmd not in ERROR_COMMANDS:
        return (f"--fault error={name[:40]!r}: not a virtio-gpu control command (want one of "
                f"{', '.join(c.name for c in ERROR_COMMANDS[:14])}, ...)")
    return cmd


class ServedGpu(Gpu):
    """The served virtio-gpu (see the module contract)."""

    def __init__(self, name: str = "gpu", **kw: Any) -> None:
        kw.setdefault("width", QEMU_XRES)
        kw.setdefault("height", QEMU_YRES)
        kw.setdefault("latency", 0)
        kw.setdefault("command_latency", 0)
        kw.setdefault("bytes_per_us", _FAST)
        super().__init__(name, **kw)
        self.fail_command: int | None = None
        self.injected_errors = 0

    def _dispatch(self, p: Pending) -> Reply:
        if self.fail_command is not None and p.hdr is not None and p.hdr.type == self.fail_command:
            self.injected_errors += 1
            self.trace(Kind.DEVICE, event="injected_error", cmd=protocol.command_name(p.hdr.type),
                       count=self.injected_errors)
            return GpuResp.ERR_UNSPEC, b""
        return super()._dispatch(p)

    def enable_queue(self, index: int) -> bool:
        """The model's queue enable, then a ``queue_started`` event with the ring's addresses and indices."""
        ok = super().enable_queue(index)
        if ok:
            q = self.queues[index]
            self.trace(Kind.DEVICE, event="queue_started", queue=index, desc=q.desc_table, avail=q.avail_ring,
                       used=q.used_ring, size=q.size, next_avail=q.next_avail, next_used=q.next_used)
        return ok

    def queue_reset(self, index: int) -> None:
        """The model's queue reset (what a ring stop does), then a ``queue_stopped`` event with the indices the
        queue had reached."""
        q = self.queues[index]
        was = (q.ready, q.next_avail, q.next_used)
        super().queue_reset(index)
        self.trace(Kind.DEVICE, event="queue_stopped", queue=index, ready=was[0], next_avail=was[1],
                   next_used=was[2])


def make_served_gpu(seed: int) -> VirtioDevice:
    """A fresh :class:`ServedGpu` (the seed does not matter to a gpu)."""
    del seed
    return ServedGpu("gpu")


def gpu_stats(device: VirtioDevice) -> dict[str, Any]:
    """What the report says of the gpu at the end of a connection (after the model's reset): the commands it
    executed and the errors injected. (What it showed and its queues then are in ``frontend.gpu_display``.)"""
    if not isinstance(device, ServedGpu):
        return {}
    return {"commands": dict(sorted(device.commands.items())), "injected_errors": device.injected_errors}


__all__ = ["ERROR_COMMANDS", "QEMU_XRES", "QEMU_YRES", "ServedGpu", "gpu_command", "gpu_stats", "make_served_gpu"]
