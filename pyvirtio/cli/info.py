"""``pyvirtio info``: a machine's devices, features and PCI layout, read as a guest would."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from pyvirtio.spec.constants import PCI_BAR0, PCI_NUM_BARS, PCI_PM_CTRL, PCI_PM_PMC, DeviceId, PciCapId, VirtioPciCap

console = Console()


def build_machine(machine_type: str, devices: tuple[str, ...], pcie_port: bool, no_soft_reset: bool):  # type: ignore[no-untyped-def]
    from pyvirtio.devices import Rng, TestDevice
    from pyvirtio.host.device import VirtioDevice
    from pyvirtio.machine import Machine

    m = Machine(machine_type=machine_type)
    for name in devices:
        dev: VirtioDevice
        if name == "rng":
            dev = Rng()
        elif name == "test":
            dev = TestDevice()
        elif name == "gpu":
            from pyvirtio.devices import Gpu

            dev = Gpu()
        else:
            raise click.BadParameter(f"unknown device {name!r}", param_hint="--device")
        m.plug(dev, pcie_port=pcie_port, no_soft_reset=no_soft_reset)
    return m


@click.command()
@click.option("--machine", "machine_type", type=click.Choice(["q35", "pc"]), default="q35", show_default=True)
@click.option("--device", "devices", multiple=True, type=click.Choice(["gpu", "rng", "test"]),
              help="Devices to plug (repeatable). Default: gpu and rng.")
@click.option("--pcie-port/--root-bus", default=True, show_default=True,
              help="Behind a PCIe root port (q35 only): adds the PCI PM capability.")
@click.option("--no-soft-reset", is_flag=True, help="Set PMCSR No_Soft_Reset (QEMU x-pcie-pm-no-soft-reset).")
def info(machine_type: str, devices: tuple[str, ...], pcie_port: bool, no_soft_reset: bool) -> None:
    """Print the devices, their features and the PCI layout of a machine, read as a guest would."""
    from pyvirtio.guest.transport import PciTransport
    from pyvirtio.spec.features import feature_names

    if not devices:
        devices = ("gpu", "rng")
    if machine_type == "pc":
        pcie_port = False
    m = build_machine(machine_type, devices, pcie_port, no_soft_reset)
    console.print(f"[bold]machine[/] {machine_type}, {m.memory.size >> 20} MiB guest RAM, {len(m.functions)} functions")
    for slot, fn in enumerate(m.functions):
        t = PciTransport(fn, m, fn.name)
        t.enable_device()  # memory decoding on, as a driver would, so the BAR structures answer
        vid, did = fn.config_read(0, 2), fn.config_read(2, 2)
        cls = fn.config_read(8, 4) >> 8
        console.print(f"\n[bold cyan]00:{slot + 2:02x}.0 {fn.name}[/]  {vid:04x}:{did:04x} rev {fn.config_read(8, 1)} "
                      f"class {cls:06x}  virtio id {t.device_id} ({_dev_name(t.device_id)})")
        bars = Table(title="BARs", show_edge=False)
        for col in ("BAR", "size", "type"):
            bars.add_column(col)
        for i in range(PCI_NUM_BARS):
            size = fn.bar_sizes[i]
            if size:
                flags = fn.config_read(PCI_BAR0 + 4 * i, 4) & 0xF
                kind = ("64-bit " if flags & 0x4 else "32-bit ") + ("prefetchable mem" if flags & 0x8 else "mem")
                bars.add_row(str(i), f"{size:#x}", kind)
        console.print(bars)
        caps = Table(title="capabilities (walked through config_read)", show_edge=False)
        for col in ("offset", "capability", "details"):
            caps.add_column(col)
        pos = fn.config_read(0x34, 1)
        while pos:
            cap_id, nxt = fn.config_read(pos, 1), fn.config_read(pos + 1, 1)
            caps.add_row(f"{pos:#04x}", *_describe_cap(fn, pos, cap_id))
            pos = nxt
        console.print(caps)
        feats = t.device_features()
        console.print(f"features {feats:#018x}: " + ", ".join(feature_names(t.device_id, feats)))
        qs = [t.queue_max_size(i) for i in range(t.num_queues())]
        console.print(f"queues {len(qs)} (max sizes {qs}), MSI-X vectors {t.msix_table_size()}, "
                      f"PM {f'D{int(t.power_state())}' if t.pm_cap else 'none'}"
                      f"{', No_Soft_Reset' if t.supports_pm_no_reset() else ''}")


def _dev_name(device_id: int) -> str:
    try:
        return DeviceId(device_id).name.lower()
    except ValueError:
        return "unknown"


def _describe_cap(fn, pos: int, cap_id: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    if cap_id == PciCapId.VENDOR:
        cfg_type = fn.config_read(pos + 3, 1)
        bar = fn.config_read(pos + 4, 1)
        off, length = fn.config_read(pos + 8, 4), fn.config_read(pos + 12, 4)
        try:
            name = VirtioPciCap(cfg_type).name
        except ValueError:
            name = f"type {cfg_type}"
        extra = ""
        if cfg_type == VirtioPciCap.NOTIFY_CFG:
            extra = f" notify_off_multiplier {fn.config_read(pos + 16, 4)}"
        return f"virtio {name}", f"BAR{bar} +{off:#06x} len {length:#x}{extra}"
    if cap_id == PciCapId.MSIX:
        ctrl = fn.config_read(pos + 2, 2)
        table, pba = fn.config_read(pos + 4, 4), fn.config_read(pos + 8, 4)
        return "MSI-X", (f"{(ctrl & 0x7FF) + 1} vectors, table BAR{table & 7}+{table & ~7:#x}, "
                         f"PBA BAR{pba & 7}+{pba & ~7:#x}")
    if cap_id == PciCapId.PM:
        return "Power Management", (f"PMC {fn.config_read(pos + PCI_PM_PMC, 2):#06x} "
                                    f"PMCSR {fn.config_read(pos + PCI_PM_CTRL, 2):#06x}")
    if cap_id == PciCapId.EXP:
        return "PCI Express", "endpoint"
    return f"id {cap_id:#x}", ""


