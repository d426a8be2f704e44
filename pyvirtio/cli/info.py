"""``pyvirtio info``: a machine's devices, features and PCI layout, read as a guest would.

The capability table is rendered from :attr:`pyvirtio.guest.transport.PciTransport.capabilities`, the list the
guest transport itself walked (virtio 1.4 §4.1.4): the CLI has no capability walk of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table

from pyvirtio.cli.common import MACHINE_CHOICE, out
from pyvirtio.guest.transport import (
    MsixCapability,
    PciCapability,
    PciTransport,
    PmCapability,
    VirtioPciCapability,
)
from pyvirtio.spec.constants import (
    PCI_BAR0,
    PCI_BAR_MEM64,
    PCI_BAR_PREFETCH,
    PCI_DEVICE_ID,
    PCI_NUM_BARS,
    PCI_REVISION_ID,
    PCI_VENDOR_ID,
    DeviceId,
    PciCapId,
    VirtioPciCap,
)

if TYPE_CHECKING:
    from pyvirtio.machine import Machine


#: ``--device`` choices, in the order they are documented
DEVICE_CHOICES = ("gpu", "rng", "test")


def build_machine(machine_type: str, devices: tuple[str, ...], pcie_port: bool, no_soft_reset: bool) -> Machine:
    """A machine of ``machine_type`` with ``devices`` (names from :data:`DEVICE_CHOICES`) plugged in order.

    ``pcie_port``/``no_soft_reset`` are passed to every :meth:`Machine.plug`; an unknown name raises
    :class:`click.BadParameter`. A kind named again gets a numbered name (``rng``, ``rng1``, ...): device names
    are unique in a machine.
    """
    from pyvirtio.devices import Gpu, Rng, TestDevice
    from pyvirtio.host.device import VirtioDevice
    from pyvirtio.machine import Machine

    m = Machine(machine_type=machine_type)
    for i, name in enumerate(devices):
        dev: VirtioDevice
        again = devices[:i].count(name)
        if name == "rng":
            dev = Rng(f"rng{again or ''}")
        elif name == "test":
            dev = TestDevice(f"testdev{again or ''}")
        elif name == "gpu":
            dev = Gpu(f"gpu{again or ''}")
        else:
            raise click.BadParameter(f"unknown device {name!r}", param_hint="--device")
        m.plug(dev, pcie_port=pcie_port, no_soft_reset=no_soft_reset)
    return m


@click.command()
@click.option("--machine", "machine_type", type=MACHINE_CHOICE, default="q35", show_default=True)
@click.option("--device", "devices", multiple=True, type=click.Choice(DEVICE_CHOICES),
              help="Devices to plug (repeatable). Default: gpu and rng.")
@click.option("--pcie-port/--root-bus", default=True, show_default=True,
              help="Behind a PCIe root port (q35 only): adds the PCI PM capability.")
@click.option("--no-soft-reset", is_flag=True, help="Set PMCSR No_Soft_Reset (QEMU x-pcie-pm-no-soft-reset).")
def info(machine_type: str, devices: tuple[str, ...], pcie_port: bool, no_soft_reset: bool) -> None:
    """Print the devices, their features and the PCI layout of a machine, read as a guest would."""
    from pyvirtio.spec.features import feature_names

    if not devices:
        devices = ("gpu", "rng")
    if machine_type == "pc":
        pcie_port = False
    m = build_machine(machine_type, devices, pcie_port, no_soft_reset)
    out.print(f"[bold]machine[/] {machine_type}, {m.memory.size >> 20} MiB guest RAM, {len(m.functions)} functions")
    for slot, fn in enumerate(m.functions):
        t = PciTransport(fn, m, fn.name)
        t.enable_device()  # memory decoding on, as a driver would, so the BAR structures answer
        vid, did = fn.config_read(PCI_VENDOR_ID, 2), fn.config_read(PCI_DEVICE_ID, 2)
        rev_class = fn.config_read(PCI_REVISION_ID, 4)
        out.print(f"\n[bold cyan]00:{slot + 2:02x}.0 {fn.name}[/]  {vid:04x}:{did:04x} rev {rev_class & 0xFF} "
                      f"class {rev_class >> 8:06x}  virtio id {t.device_id} ({_dev_name(t.device_id)})")
        bars = Table(title="BARs", show_edge=False)
        for col in ("BAR", "size", "type"):
            bars.add_column(col)
        for i in range(PCI_NUM_BARS):
            size = fn.bar_sizes[i]
            if size:
                flags = fn.config_read(PCI_BAR0 + 4 * i, 4)
                kind = (("64-bit " if flags & PCI_BAR_MEM64 else "32-bit ")
                        + ("prefetchable mem" if flags & PCI_BAR_PREFETCH else "mem"))
                bars.add_row(str(i), f"{size:#x}", kind)
        out.print(bars)
        caps = Table(title="capabilities (walked through config_read)", show_edge=False)
        for col in ("offset", "capability", "details"):
            caps.add_column(col)
        for cap in t.capabilities:
            caps.add_row(f"{cap.pos:#04x}", *describe_capability(cap))
        out.print(caps)
        feats = t.device_features()
        out.print(f"features {feats:#018x}: " + ", ".join(feature_names(t.device_id, feats)))
        qs = [t.queue_max_size(i) for i in range(t.num_queues())]
        out.print(f"queues {len(qs)} (max sizes {qs}), MSI-X vectors {t.msix_table_size()}, "
                      f"PM {f'D{int(t.power_state())}' if t.pm_cap else 'none'}"
                      f"{', No_Soft_Reset' if t.supports_pm_no_reset() else ''}")


def _dev_name(device_id: int) -> str:
    try:
        return DeviceId(device_id).name.lower()
    except ValueError:
        return "unknown"


def describe_capability(cap: PciCapability) -> tuple[str, str]:
    """``(name, details)`` of one walked capability, for the info table (virtio 1.4 §4.1.4, PCI 3.0 §6.7)."""
    if isinstance(cap, VirtioPciCapability):
        try:
            name = VirtioPciCap(cap.cfg_type).name
        except ValueError:
            name = f"type {cap.cfg_type}"
        extra = "" if cap.notify_off_multiplier is None else f" notify_off_multiplier {cap.notify_off_multiplier}"
        return f"virtio {name}", f"BAR{cap.bar} +{cap.offset:#06x} len {cap.length:#x}{extra}"
    if isinstance(cap, MsixCapability):
        return "MSI-X", (f"{cap.table_size} vectors, table BAR{cap.table_bar}+{cap.table_offset:#x}, "
                         f"PBA BAR{cap.pba_bar}+{cap.pba_offset:#x}")
    if isinstance(cap, PmCapability):
        return "Power Management", f"PMC {cap.pmc:#06x} PMCSR {cap.pmcsr:#06x}"
    if cap.cap_id == PciCapId.EXP:
        return "PCI Express", "endpoint"
    return f"id {cap.cap_id:#x}", ""
