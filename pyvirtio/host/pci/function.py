"""One virtio PCI function, device side, byte-accurate to virtio 1.4 §4.1 with QEMU's layout and quirks.

Layout (QEMU ``virtio-pci.c``): BAR1 holds the MSI-X table (offset 0) and PBA (0x800); the 64-bit prefetchable
BAR4 holds common config (0x0000), ISR (0x1000), device config (0x2000) and notify (0x3000, multiplier 4).
Capabilities: [PCI Express, PM] when on a PCIe port, then COMMON, NOTIFY, ISR, DEVICE, PCI_CFG, MSI-X.

Contract. The four guest-facing methods are :meth:`VirtioPciFunction.config_read`, ``config_write``,
``bar_read`` and ``bar_write``. Every access is validated: wrong width or misalignment is ignored (reads give 0,
or all-ones outside a structure, as QEMU); register values out of range get the spec's answer. Nothing a guest
writes can raise out of these methods.

Bus mastering (PCI COMMAND.BME) is off at power-on and after a bus reset: until the driver sets it the device
touches no guest memory and sends no MSI-X message (an MSI is a memory write; it stays pending in the PBA and
goes out when BME is set — QEMU drops it); INTx is not a memory request and is not gated by BME. A virtio reset
forgets every pending message, and while the device is suspended (virtio 1.4 Device Suspend) messages stay
pending and go out when it resumes.

This module holds the configuration space, BAR routing, the ISR and INTx, queue notifications and the resets;
the common-config register file is :mod:`pyvirtio.host.pci.common_cfg`, MSI-X is :mod:`pyvirtio.host.pci.msix`.
The function is also the :class:`~pyvirtio.host.context.DeviceContext` its device sees.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pyvirtio.clock import Scheduler
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.pci.common_cfg import CommonConfig, FreezeModeHandler
from pyvirtio.host.pci.configspace import ConfigSpace, pack_virtio_cap
from pyvirtio.host.pci.freeze_mode import FreezeModeDevice, check_freeze_mode_bit
from pyvirtio.host.pci.msix import MSIX_BAR_SIZE, MsiSink, Msix
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    FREEZE_MODE_FEATURE_DEFAULT,
    MSI_ADDRESS_BASE,
    PCI_BAR0,
    PCI_BAR_MEM64,
    PCI_BAR_PREFETCH,
    PCI_CLASS_PROG,
    PCI_COMMAND,
    PCI_DEVICE_ID,
    PCI_HEADER_TYPE,
    PCI_INTERRUPT_PIN,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_NUM_BARS,
    PCI_PM_CAP_SIZE,
    PCI_PM_CTRL,
    PCI_PM_PMC_VERSION_1_2,
    PCI_REVISION_ID,
    PCI_STATUS,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_MSIX_BAR,
    QEMU_NOTIFY_OFF_MULTIPLIER,
    QEMU_NOTIFY_OFFSET,
    QEMU_REGION_SIZE,
    QEMU_SUBSYSTEM_DEVICE_ID,
    QEMU_SUBSYSTEM_VENDOR_ID,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_LEN,
    VIRTIO_PCI_CFG_CAP_LEN,
    VIRTIO_PCI_CFG_DATA,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
    VIRTIO_PCI_NOTIFY_CAP_LEN,
    VIRTIO_PCI_REVISION_MODERN,
    VIRTIO_PCI_VENDOR_ID,
    DeviceId,
    PciCapId,
    PciClass,
    PciCommand,
    PciStatusReg,
    Pmcsr,
    PowerState,
    Status,
    VirtioPciCap,
    bit,
)
from pyvirtio.trace import Kind, Trace

MODERN_BAR_SIZE = 0x4000

# register bits as plain ints for the per-access paths (IntFlag arithmetic runs in Python)
_CMD_MEMORY = int(PciCommand.MEMORY)
_PM_STATE_MASK = int(Pmcsr.STATE_MASK)
_ST_SUSPEND = int(Status.SUSPEND)
_ST_DRIVER_OK = int(Status.DRIVER_OK)

#: The PCI class code of each virtio device type (QEMU's virtio-*-pci wrappers); others are OTHERS.
PCI_CLASS: dict[DeviceId, PciClass] = {DeviceId.GPU: PciClass.DISPLAY_OTHER}


class ResetKind(Enum):
    """Why a function is reset (QEMU ``ResetType``)."""

    COLD = "cold"  # power-on / system_reset
    WAKEUP = "wakeup"  # x86 S3 wake-up: pc_machine_wakeup resets every device


class InterruptSink(MsiSink, Protocol):
    """The machine side of interrupt delivery: MSI messages and the INTx line."""

    def intx(self, src: str, level: bool) -> None:
        """Drive ``src``'s INTx line to ``level``."""


@dataclass
class PciOptions:
    """How a function is plugged. ``pcie_port`` puts it behind a PCIe root port (QEMU then adds the PM cap).

    ``freeze_mode_bit`` exposes the 2023 freeze_mode field at common-config offset 64 behind that feature bit
    (None: no field). ``freeze_mode=True`` alone means the default bit
    (:data:`~pyvirtio.spec.constants.FREEZE_MODE_FEATURE_DEFAULT`); the two fields always agree.
    """

    pcie_port: bool = False
    no_soft_reset: bool = False  # QEMU x-pcie-pm-no-soft-reset: PMCSR bit 3, only meaningful with pcie_port
    msix_vectors: int | None = None  # default: queues + 1
    freeze_mode: bool = False  # kept in step with freeze_mode_bit (see host.pci.freeze_mode)
    freeze_mode_bit: int | None = None

    def __post_init__(self) -> None:
        if self.freeze_mode and self.freeze_mode_bit is None:
            self.freeze_mode_bit = FREEZE_MODE_FEATURE_DEFAULT
        if self.freeze_mode_bit is not None:
            check_freeze_mode_bit(self.freeze_mode_bit)
            self.freeze_mode = True


class VirtioPciFunction:
    """A virtio device behind the modern PCI transport. Also the :class:`DeviceContext` the device sees."""

    def __init__(
        self,
        device: VirtioDevice,
        *,
        memory: GuestMemory,
        scheduler: Scheduler,
        trace: Trace,
        irq: InterruptSink,
        options: PciOptions | None = None,
    ) -> None:
        self.device = device
        self.name = device.name
        self.memory = memory
        self.scheduler = scheduler
        self.trace = trace
        self.irq = irq
        self.options = options or PciOptions()
        fm_bit = self.options.freeze_mode_bit
        #: the freeze_mode field's device side, or None when the function has no such field
        self.freeze_mode = FreezeModeDevice(self, feature_bit=fm_bit) if fm_bit is not None else None
        device.attach(self, transport_features=bit(fm_bit) if fm_bit is not None else 0)
        # PCI: COMMAND is 0 at power-on, so the function starts without bus mastering. (QEMU: DMA and MSI go through
        # the function's bus-master address space, whose enable region follows COMMAND.MASTER in
        # pci_default_write_config; before the driver sets it nothing reaches guest memory.)
        device.set_bus_master(False)  # spec: dev:pci#1
        device.lifecycle_listeners.append(self._lifecycle_changed)
        nq = len(device.queues)
        # spec: dev:pci/msix#1, dev:pci/msix#3 (one vector per queue and one for config changes, as QEMU)
        nvectors = self.options.msix_vectors if self.options.msix_vectors is not None else nq + 1
        self.cfg = ConfigSpace()
        self.msix = Msix(self.cfg, nvectors, sink=irq, trace=trace, name=self.name, may_send=self._may_send_msi)
        self.common = CommonConfig(device, nvectors=nvectors, trace=trace, reset=self._virtio_reset,
                                   freeze_mode=self.freeze_mode)
        self.bar_sizes = [0] * PCI_NUM_BARS
        self.bar_flags = [0] * PCI_NUM_BARS
        self.isr = 0
        self._build_config_space()
        self._reset_transport()

    # -- construction -----------------------------------------------------------------------------------------

    def _build_config_space(self) -> None:
        c = self.cfg
        # spec: dev:pci#1 (a type 0 header, BARs sized by their write masks, a capability list)
        c.set(PCI_VENDOR_ID, 2, VIRTIO_PCI_VENDOR_ID)  # spec: dev:pci/discovery#1
        # spec: dev:pci/discovery#2, dev:pci/discovery#3 (0x1040 + device id: the non-transitional range)
        c.set(PCI_DEVICE_ID, 2, VIRTIO_PCI_MODERN_DEVICE_ID_BASE + int(self.device.device_id))
        c.set(PCI_REVISION_ID, 1, VIRTIO_PCI_REVISION_MODERN)  # spec: dev:pci/discovery#4
        c.set(PCI_CLASS_PROG, 3, int(PCI_CLASS.get(self.device.device_id, PciClass.OTHERS)))
        c.set(PCI_HEADER_TYPE, 1, 0)
        c.set(PCI_SUBSYSTEM_VENDOR_ID, 2, QEMU_SUBSYSTEM_VENDOR_ID)
        c.set(PCI_SUBSYSTEM_ID, 2, QEMU_SUBSYSTEM_DEVICE_ID)  # spec: dev:pci/discovery#5
        c.set(PCI_INTERRUPT_PIN, 1, 1)  # INTA#
        c.set_wmask(PCI_COMMAND, 2, PciCommand.IO | PciCommand.MEMORY | PciCommand.MASTER | PciCommand.INTX_DISABLE)
        c.set_wmask(0x3C, 1, 0xFF)  # interrupt line
        self._add_bar(QEMU_MSIX_BAR, MSIX_BAR_SIZE, 0)
        self._add_bar(QEMU_MODERN_BAR, MODERN_BAR_SIZE, PCI_BAR_MEM64 | PCI_BAR_PREFETCH)
        self.pm_cap = 0
        if self.options.pcie_port:
            # A minimal PCI Express capability (endpoint, version 2) so the function is a PCIe endpoint.
            c.add_capability(PciCapId.EXP, struct.pack("<H", 0x0002), size=0x3C)
            self.pm_cap = c.add_capability(PciCapId.PM, struct.pack("<HHBB", PCI_PM_PMC_VERSION_1_2, 0, 0, 0),
                                           size=PCI_PM_CAP_SIZE)
            c.set_wmask(self.pm_cap + PCI_PM_CTRL, 2, Pmcsr.STATE_MASK)
            if self.options.no_soft_reset:  # read-only to the guest: not in wmask
                c.set(self.pm_cap + PCI_PM_CTRL, 2, Pmcsr.NO_SOFT_RESET)
            c.w1cmask[self.pm_cap + PCI_PM_CTRL + 1] = Pmcsr.PME_STATUS >> 8
        # Every virtio capability's cap_len covers its type-specific fields: 16 bytes, 20 for NOTIFY and PCI_CFG.
        # spec: dev:pci/caps#1
        # spec: dev:pci/common-cfg#1, dev:pci/common-cfg#2 (one COMMON_CFG, at BAR4 + 0: 4-byte aligned)
        self.common_cap = c.add_capability(
            PciCapId.VENDOR,
            pack_virtio_cap(VirtioPciCap.COMMON_CFG, QEMU_MODERN_BAR, QEMU_COMMON_OFFSET, self.common.size,
                            VIRTIO_PCI_CAP_LEN),
        )
        nq = max(1, len(self.device.queues))
        # One NOTIFY_CFG at BAR4 + 0x3000 (2-byte aligned), multiplier 4 (= 2^2, an even power of 2), queue q
        # at q * 4 (queue_notify_off = q), length 4 * queues: at least 2 and every queue's address + 2 inside.
        # spec: dev:pci/notify-cap#1, dev:pci/notify-cap#2, dev:pci/notify-cap#3
        # spec: dev:pci/notify-cap#4, dev:pci/notify-cap#5
        self.notify_cap = c.add_capability(
            PciCapId.VENDOR,
            pack_virtio_cap(VirtioPciCap.NOTIFY_CFG, QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET,
                            nq * QEMU_NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_NOTIFY_CAP_LEN,
                            struct.pack("<I", QEMU_NOTIFY_OFF_MULTIPLIER)),
        )
        self.isr_cap = c.add_capability(  # spec: dev:pci/isr#1
            PciCapId.VENDOR,
            pack_virtio_cap(VirtioPciCap.ISR_CFG, QEMU_MODERN_BAR, QEMU_ISR_OFFSET, 1, VIRTIO_PCI_CAP_LEN),
        )
        self.device_cap = 0
        if self.device.config_size():
            # spec: dev:pci/device-cfg#1 (BAR4 + 0x2000: 4-byte aligned)
            self.device_cap = c.add_capability(
                PciCapId.VENDOR,
                pack_virtio_cap(VirtioPciCap.DEVICE_CFG, QEMU_MODERN_BAR, QEMU_DEVICE_OFFSET,
                                self.device.config_size(), VIRTIO_PCI_CAP_LEN),
            )
        self.pci_cfg_cap = c.add_capability(  # spec: dev:pci/pci-cfg#1
            PciCapId.VENDOR,
            pack_virtio_cap(VirtioPciCap.PCI_CFG, 0, 0, 0, VIRTIO_PCI_CFG_CAP_LEN, b"\0\0\0\0"),
        )
        # For PCI_CFG only the driver may write bar, offset, length and data.
        c.set_wmask(self.pci_cfg_cap + 4, 1, 0xFF)
        c.set_wmask(self.pci_cfg_cap + 8, 4, 0xFFFFFFFF)
        c.set_wmask(self.pci_cfg_cap + 12, 4, 0xFFFFFFFF)
        c.set_wmask(self.pci_cfg_cap + VIRTIO_PCI_CFG_DATA, 4, 0xFFFFFFFF)
        self.msix_cap = self.msix.add_capability()

    def _add_bar(self, index: int, size: int, flags: int) -> None:
        self.bar_sizes[index] = size
        self.bar_flags[index] = flags
        off = PCI_BAR0 + 4 * index
        self.cfg.set(off, 4, flags)
        self.cfg.set_wmask(off, 4, ~(size - 1) & 0xFFFFFFF0)
        if flags & PCI_BAR_MEM64:
            self.cfg.set_wmask(off + 4, 4, 0xFFFFFFFF)

    # -- state --------------------------------------------------------------------------------------------------

    @property
    def nvectors(self) -> int:
        """Entries in the MSI-X table."""
        return self.msix.nvectors

    @property
    def freeze_mode_handler(self) -> FreezeModeHandler | None:
        """What serves common-config offset 64 (the freeze_mode field), None without the field."""
        return self.common.freeze_mode

    @property
    def command(self) -> int:
        """The PCI COMMAND register."""
        return self.cfg.get(PCI_COMMAND, 2)

    @property
    def msix_enabled(self) -> bool:
        """MSI-X Enable is set in the capability."""
        return self.msix.enabled

    @property
    def power_state(self) -> PowerState:
        """PMCSR PowerState (always D0 without the PM capability)."""
        if not self.pm_cap:
            return PowerState.D0
        return PowerState(self.cfg.get(self.pm_cap + PCI_PM_CTRL, 2) & Pmcsr.STATE_MASK)

    @property
    def no_soft_reset(self) -> bool:
        """PMCSR No_Soft_Reset: a D3hot -> D0 transition keeps the function's state (PCIe)."""
        return bool(self.pm_cap) and bool(self.cfg.get(self.pm_cap + PCI_PM_CTRL, 2) & Pmcsr.NO_SOFT_RESET)

    # -- resets -------------------------------------------------------------------------------------------------

    def _reset_transport(self) -> None:
        """Transport part of a virtio reset: all vectors unmapped (NO_VECTOR), selectors cleared, ISR 0."""
        self.common.reset()
        self.isr = 0
        self._set_intx(False)

    def _virtio_reset(self) -> None:
        """Virtio reset (§2.4), device and transport: the one path for a status write of 0 and a bus reset.

        A message pending in the PBA belongs to the device before the reset: it is forgotten, never sent once
        status reads 0 (QEMU ``virtio_pci_reset`` -> ``msix_unuse_all_vectors`` clears the pending bits)."""
        self.msix.clear_pending()  # spec: dev:reset#2
        self.device.reset()
        self._reset_transport()

    def system_reset(self, kind: ResetKind = ResetKind.COLD) -> bool:
        """A bus or machine reset (QEMU ``virtio_pci_bus_reset_hold``). Returns False if it was skipped.

        A PCIe function with No_Soft_Reset whose PowerState is D3hot is *not* reset (QEMU 9.1
        ``virtio_pci_no_soft_reset``): queues, status, features and device state all survive.
        """
        if self.no_soft_reset and self.power_state is PowerState.D3HOT:
            self.trace.record(Kind.RESET, self.name, kind=kind.value, skipped="No_Soft_Reset in D3hot")
            return False
        self._virtio_reset()
        # PCI core reset of config registers: command, BARs, MSI-X control and table, PowerState back to D0.
        self.cfg.set(PCI_COMMAND, 2, 0)
        self.device.set_bus_master(False)
        for i, size in enumerate(self.bar_sizes):
            if size:
                self.cfg.set(PCI_BAR0 + 4 * i, 4, self.bar_flags[i])
                if self.bar_flags[i] & PCI_BAR_MEM64:
                    self.cfg.set(PCI_BAR0 + 4 * i + 4, 4, 0)
        self.msix.reset()
        was = self.power_state
        if self.pm_cap:
            pmcsr = self.cfg.get(self.pm_cap + PCI_PM_CTRL, 2)
            self.cfg.set(self.pm_cap + PCI_PM_CTRL, 2, pmcsr & ~Pmcsr.STATE_MASK)
        self.trace.record(Kind.RESET, self.name, kind=kind.value)
        if was is not PowerState.D0:
            self.trace.record(Kind.PM, self.name, event="power_state", frm=f"D{int(was)}", to="D0", by="reset")
        return True

    # -- DeviceContext: notifications ---------------------------------------------------------------------------

    def notify_queue(self, index: int) -> None:
        """Used-buffer notification for queue ``index``: its MSI-X vector, or ISR bit 0 and INTx."""
        # spec: dev:pci/isr#3 (ISR bit 0 only without MSI-X, set in _signal before INTx)
        vectors = self.common.queue_vectors  # (common.queue_vector(index), inline)
        self._signal(VIRTIO_PCI_ISR_QUEUE, vectors[index] if index < len(vectors) else VIRTIO_MSI_NO_VECTOR,
                     _QUEUE_WHY[index] if index < len(_QUEUE_WHY) else f"queue{index}")

    def notify_config(self) -> None:
        """Configuration-change notification: ISR bit 1 first, whatever the interrupt mechanism; then the config
        vector, or ISR bit 0 too and INTx (QEMU ``virtio_notify_config`` sets both bits)."""
        self.isr |= VIRTIO_PCI_ISR_CONFIG  # spec: dev:pci/isr#2
        self._signal(VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG, self.common.config_vector, "config")

    def _signal(self, isr_bits: int, vector: int, why: str) -> None:
        o = self.msix.cap + PCI_MSIX_FLAGS
        if int.from_bytes(self.cfg.data[o : o + 2], "little") & PCI_MSIX_FLAGS_ENABLE:  # (msix.enabled, inline)
            if vector == VIRTIO_MSI_NO_VECTOR:
                # spec: dev:pci/used-notify#1, dev:pci/config-notify#1
                self.trace.record(Kind.INTERRUPT, self.name, why=why, dropped="NO_VECTOR")
                return
            # spec: dev:pci/msix#4 (any event goes out through the table entry it is mapped to)
            self.msix.send(vector, why)  # held pending while bus mastering is off or the device suspended
            return
        # INTx is not a memory request: PCI does not gate it with Bus Master Enable.
        self.isr |= isr_bits  # spec: dev:pci/isr#3
        self._set_intx(True)

    def _may_send_msi(self) -> bool:
        """An MSI-X message may go out now: bus mastering on (an MSI is a memory write, PCI) and the device not
        suspended (virtio 1.4 Device Suspend). Otherwise it stays pending in the PBA."""
        # spec: dev:pci#1, dev:suspend#3
        return not self.device.disabled and not self.device.suspended

    def _lifecycle_changed(self, state: DeviceLifecycle) -> None:
        """The device moved in its lifecycle: a message held while it was suspended goes out once it runs again
        (resumed, or failed to resume: DEVICE_NEEDS_RESET); a reset has forgotten it already."""
        if state in (DeviceLifecycle.LIVE, DeviceLifecycle.NEEDS_RESET):
            self.msix.deliver_pending()

    def _set_intx(self, level: bool) -> None:
        """PCI Status.Interrupt follows ``level``; the INTx line too unless COMMAND.INTX_DISABLE masks it."""
        # spec: dev:pci/isr#4
        status = self.cfg.get(PCI_STATUS, 2)
        new = (status | PciStatusReg.INTERRUPT) if level else (status & ~PciStatusReg.INTERRUPT)
        self.cfg.set(PCI_STATUS, 2, new)
        if level and self.command & PciCommand.INTX_DISABLE:
            return
        self.irq.intx(self.name, level)

    # -- guest accessors: configuration space -------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """A guest read of configuration space: 1, 2 or 4 aligned bytes (else all-ones)."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= 0x1000 - size:
            self.trace.record(Kind.VIOLATION, self.name, rule="PCI config access must be aligned 1/2/4 bytes",
                              offset=offset, size=size)
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        if _overlaps(offset, size, self.pci_cfg_cap + VIRTIO_PCI_CFG_DATA, 4):
            self._pci_cfg_access(write=False)  # loads pci_cfg_data first
        value = self.cfg.get(offset, size)
        self.trace.record(Kind.CONFIG_READ, self.name, offset=offset, size=size, value=value)
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A guest write of configuration space, through the write masks; COMMAND, PMCSR, MSI-X
        control and the PCI_CFG window take effect."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset <= 0x1000 - size:
            self.trace.record(Kind.VIOLATION, self.name, rule="PCI config access must be aligned 1/2/4 bytes",
                              offset=offset, size=size)
            return
        value &= (1 << (8 * size)) - 1
        self.trace.record(Kind.CONFIG_WRITE, self.name, offset=offset, size=size, value=value)
        old_command = self.command
        old_msix = self.msix.flags
        old_pmcsr = self.cfg.get(self.pm_cap + PCI_PM_CTRL, 2) if self.pm_cap else 0
        self.cfg.guest_write(offset, size, value)
        if _covers(offset, size, PCI_COMMAND):
            self._command_written(old_command)
        if self.pm_cap and _overlaps(offset, size, self.pm_cap + PCI_PM_CTRL, 2):
            self._pmcsr_written(old_pmcsr)
        if _overlaps(offset, size, self.msix_cap + PCI_MSIX_FLAGS, 2) and self.msix.flags != old_msix:
            self._msix_control_written(old_msix)
        if _overlaps(offset, size, self.pci_cfg_cap + VIRTIO_PCI_CFG_DATA, 4):
            self._pci_cfg_access(write=True)  # the bytes just written are in pci_cfg_data

    def _command_written(self, old: int) -> None:
        new = self.command
        if (old ^ new) & PciCommand.MASTER:
            self.device.set_bus_master(bool(new & PciCommand.MASTER))
            self.msix.deliver_pending()  # what was held while bus mastering was off
        if (old ^ new) & PciCommand.INTX_DISABLE:
            self._set_intx(bool(self.cfg.get(PCI_STATUS, 2) & PciStatusReg.INTERRUPT))

    def _msix_control_written(self, old: int) -> None:
        """MSI-X Enable or Mask All changed: deliver what may go now; INTx follows the ISR only without MSI-X."""
        if (old ^ self.msix.flags) & PCI_MSIX_FLAGS_ENABLE:
            # spec: dev:pci/isr#4 (MSI-X off: Status.Interrupt = OR of the ISR bits; on: INTx is not used)
            self._set_intx(not self.msix.enabled and bool(self.isr))
        self.msix.deliver_pending()

    def _pmcsr_written(self, old: int) -> None:
        """QEMU ``pci_pm_update``: no D1/D2 (PMC does not offer them), no D3hot -> D1/D2; no reset on D3->D0."""
        reg = self.pm_cap + PCI_PM_CTRL
        new = self.cfg.get(reg, 2)
        old_state, new_state = int(old & Pmcsr.STATE_MASK), int(new & Pmcsr.STATE_MASK)
        if new_state in (PowerState.D1, PowerState.D2):
            self.trace.record(Kind.VIOLATION, self.name, rule="PCI PM: D1/D2 not supported (PMC)", state=new_state)
            self.cfg.set(reg, 2, (new & ~Pmcsr.STATE_MASK) | old_state)
            return
        if old_state != new_state:
            self.trace.record(Kind.PM, self.name, event="power_state", frm=f"D{old_state}",
                              to="D3hot" if new_state == PowerState.D3HOT else f"D{new_state}")

    def _pci_cfg_access(self, *, write: bool) -> None:
        """VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.9): any driver access to ``pci_cfg_data``, of any width, performs a
        ``cap.length``-byte access of BAR ``cap.bar`` at ``cap.offset``. A write takes the first ``cap.length``
        bytes of ``pci_cfg_data``; a read stores its result there (the rest keeps its bytes) before the config
        read returns. Like QEMU the window reaches the BAR's registers whatever the BAR's mapping (firmware uses
        it before it assigns BARs).

        A window of length 0 (not programmed yet: reading the capability whole) performs nothing. A window the
        driver set up wrongly — a length other than 1, 2 or 4, an offset not a multiple of it (§4.1.4.9.2, the
        driver's MUST NOT), a range outside the BAR — performs no access either: a write is dropped, a read gives
        0; each is traced as a violation naming the rule.
        """
        cap = self.pci_cfg_cap
        bar = self.cfg.get(cap + 4, 1)
        boff = self.cfg.get(cap + 8, 4)
        length = self.cfg.get(cap + 12, 4)
        data = cap + VIRTIO_PCI_CFG_DATA
        if length == 0:
            return
        rule = ""
        if length not in (1, 2, 4):
            rule = "§4.1.4.9 PCI_CFG window: cap.length must be 1, 2 or 4"
        elif boff % length:
            rule = "§4.1.4.9.2 driver MUST NOT write a cap.offset that is not a multiple of cap.length"
        elif bar >= PCI_NUM_BARS or boff + length > self.bar_sizes[bar]:
            rule = "PCI_CFG window: BAR access outside a BAR"
        if rule:
            self.trace.record(Kind.VIOLATION, self.name, rule=rule, bar=bar, offset=boff, length=length,
                              write=write)
            if not write:
                self.cfg.set(data, 4, 0)
            return
        if write:
            # spec: dev:pci/pci-cfg#2
            value = self.cfg.get(data, length)
            self.trace.record(Kind.BAR_WRITE, self.name, bar=bar, offset=boff, size=length, value=value,
                              via="pci_cfg")
            self._bar_write(bar, boff, length, value)
        else:
            # spec: dev:pci/pci-cfg#3
            value = self._bar_read(bar, boff, length)
            self.trace.record(Kind.BAR_READ, self.name, bar=bar, offset=boff, size=length, value=value,
                              via="pci_cfg")
            self.cfg.set(data, length, value)

    # -- guest accessors: BARs --------------------------------------------------------------------------------

    def _bars_mapped(self) -> bool:
        """Memory decoding on and the function in D0 (PowerState 0); read from the registers as plain ints."""
        data = self.cfg.data
        if self.pm_cap:
            o = self.pm_cap + PCI_PM_CTRL
            if int.from_bytes(data[o : o + 2], "little") & _PM_STATE_MASK != PowerState.D0:
                return False
        return int.from_bytes(data[PCI_COMMAND : PCI_COMMAND + 2], "little") & _CMD_MEMORY != 0

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """A guest read of a BAR: all-ones outside a BAR or while memory decoding is off or not in D0."""
        ones = (1 << (8 * size)) - 1 if size in (1, 2, 4, 8) else 0xFFFFFFFF
        if size not in (1, 2, 4) or not 0 <= bar < PCI_NUM_BARS or not 0 <= offset <= self.bar_sizes[bar] - size:
            self.trace.record(Kind.VIOLATION, self.name, rule="BAR access outside a BAR", bar=bar, offset=offset)
            return ones
        if not self._bars_mapped():
            self.trace.record(Kind.BAR_READ, self.name, bar=bar, offset=offset, size=size, unmapped=True)
            return ones
        value = self._bar_read(bar, offset, size)
        self.trace.record(Kind.BAR_READ, self.name, bar=bar, offset=offset, size=size, value=value)
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """A guest write of a BAR, routed to MSI-X, common config, device config or notify."""
        if size not in (1, 2, 4) or not 0 <= bar < PCI_NUM_BARS or not 0 <= offset <= self.bar_sizes[bar] - size:
            self.trace.record(Kind.VIOLATION, self.name, rule="BAR access outside a BAR", bar=bar, offset=offset)
            return
        value &= (1 << (8 * size)) - 1
        if not self._bars_mapped():
            self.trace.record(Kind.BAR_WRITE, self.name, bar=bar, offset=offset, size=size, value=value,
                              unmapped=True)
            return
        if self.trace.register_accesses:  # (record() drops register accesses otherwise: skip building them)
            self.trace.record(Kind.BAR_WRITE, self.name, bar=bar, offset=offset, size=size, value=value)
        self._bar_write(bar, offset, size, value)

    def _bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar == QEMU_MSIX_BAR:
            return self.msix.bar_read(offset, size)
        region, roff = divmod(offset, QEMU_REGION_SIZE)
        base = region * QEMU_REGION_SIZE
        if base == QEMU_COMMON_OFFSET:
            return self.common.read(roff, size)
        if base == QEMU_ISR_OFFSET:
            if roff != 0:
                return 0
            value = self.isr
            self.isr = 0  # spec: dev:pci/isr#5 (read-to-clear, de-asserts INTx)
            self._set_intx(False)
            return value
        if base == QEMU_DEVICE_OFFSET:
            if size > 1 and roff % size:
                self.device.violation("§4.1.4.6 device config accesses must be naturally aligned", offset=roff)
                return 0
            if roff + size > self.device.config_size():
                return (1 << (8 * size)) - 1  # QEMU: -1 beyond the config
            return self.device.read_config(roff, size) & ((1 << (8 * size)) - 1)
        return 0  # notify region reads as 0

    def _bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar == QEMU_MSIX_BAR:
            self.msix.bar_write(offset, size, value)
            return
        region, roff = divmod(offset, QEMU_REGION_SIZE)
        base = region * QEMU_REGION_SIZE
        if base == QEMU_COMMON_OFFSET:
            self.common.write(roff, size, value)
        elif base == QEMU_DEVICE_OFFSET:
            if (size > 1 and roff % size) or roff + size > self.device.config_size():
                self.device.violation("§4.1.4.6 device config write outside the config or misaligned", offset=roff)
                return
            if self.device.accepts_config_write():
                self.device.write_config(roff, size, value)
        elif base >= QEMU_NOTIFY_OFFSET:
            self._notify_write(offset - QEMU_NOTIFY_OFFSET, size, value)

    def _notify_write(self, noff: int, size: int, value: int) -> None:
        """Queue notification (§4.1.4.4): QEMU takes the queue from the address, not the data."""
        queue, rem = divmod(noff, QEMU_NOTIFY_OFF_MULTIPLIER)
        if rem or size != 2 or queue >= len(self.device.queues):
            self.device.violation("§4.1.4.4 notification must be a 16-bit write at the queue's notify address",
                                  offset=noff, size=size)
            return
        if value != queue:
            self.device.violation("§4.1.5.2 notification data must be the queue index", queue=queue, value=value)
        status = int(self.device.status)
        if status & _ST_SUSPEND:
            self.device.violation("Device Suspend: driver MUST NOT send notifications while suspended",
                                  queue=queue)
        elif not status & _ST_DRIVER_OK:
            self.device.violation("§3.1.1 driver MUST NOT notify before DRIVER_OK", queue=queue)
        self.device.kick(queue)


_QUEUE_WHY = tuple(f"queue{i}" for i in range(64))  # notify_queue's reasons, formatted once


def _covers(offset: int, size: int, target: int) -> bool:
    return offset <= target < offset + size


def _overlaps(offset: int, size: int, start: int, length: int) -> bool:
    return offset < start + length and start < offset + size


__all__ = ["MSI_ADDRESS_BASE", "InterruptSink", "PciOptions", "ResetKind", "VirtioPciFunction"]
