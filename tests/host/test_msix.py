"""MSI-X of one function (pyvirtio.host.pci.msix), on its own: PCI 3.0 §6.8.2 (table, PBA, per-vector Mask,
function Mask All) and virtio 1.4 §4.1.5.1.2 (the device keeps a message pending while its vector is masked)."""

from __future__ import annotations

import pytest

from pyvirtio.clock import Scheduler
from pyvirtio.host.pci.configspace import ConfigSpace
from pyvirtio.host.pci.msix import MSIX_PBA_OFFSET, Msix
from pyvirtio.spec.constants import MSI_ADDRESS_BASE, PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL
from pyvirtio.trace import Trace


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        self.sent.append((address, data, vector))


def _msix(n: int = 3) -> tuple[Msix, Sink]:
    sink = Sink()
    m = Msix(ConfigSpace(), n, sink=sink, trace=Trace(Scheduler()), name="f")
    m.add_capability()
    return m, sink


def _program(m: Msix, v: int, data: int, masked: bool) -> None:
    base = v * 16
    m.bar_write(base, 4, MSI_ADDRESS_BASE)
    m.bar_write(base + 4, 4, 0)
    m.bar_write(base + 8, 4, data)
    m.bar_write(base + 12, 4, int(masked))


def test_entries_start_masked_and_a_masked_message_is_pending_until_unmasked() -> None:
    """PCI 3.0: after reset every entry is masked; a message to a masked vector sets its PBA bit and is sent
    when the Mask bit is cleared."""
    m, sink = _msix()
    assert all(m.masked(v) for v in range(3))
    _program(m, 1, 0x41, masked=True)
    m.send(1, "queue0")
    assert sink.sent == [] and m.bar_read(MSIX_PBA_OFFSET, 4) == 0b010
    m.bar_write(16 + 12, 4, 0)  # unmask vector 1
    assert sink.sent == [(MSI_ADDRESS_BASE, 0x41, 1)] and m.bar_read(MSIX_PBA_OFFSET, 4) == 0


def test_mask_all_holds_every_vector() -> None:
    """Function Mask All masks every vector whatever its own Mask bit; clearing it delivers what is pending."""
    m, sink = _msix()
    _program(m, 0, 0x30, masked=False)
    m.cfg.set(m.cap + PCI_MSIX_FLAGS, 2, m.flags | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
    m.send(0, "config")
    assert sink.sent == [] and m.pending[0]
    m.cfg.set(m.cap + PCI_MSIX_FLAGS, 2, m.flags & ~PCI_MSIX_FLAGS_MASKALL)
    m.deliver_pending()
    assert sink.sent == [(MSI_ADDRESS_BASE, 0x30, 0)]


def test_pba_is_read_only_and_odd_accesses_are_ignored() -> None:
    """The PBA is read-only; misaligned table accesses read 0 and write nothing."""
    m, _ = _msix()
    m.send(2, "x")
    m.bar_write(MSIX_PBA_OFFSET, 4, 0)
    assert m.bar_read(MSIX_PBA_OFFSET, 4) == 0b100
    m.bar_write(2, 4, 0xFFFFFFFF)
    assert m.bar_read(2, 4) == 0 and m.entry(0) == (0, 0, 0, 1)


def test_reset_clears_enable_mask_all_entries_and_pending() -> None:
    m, _ = _msix()
    _program(m, 0, 0x30, masked=False)
    m.cfg.set(m.cap + PCI_MSIX_FLAGS, 2, m.flags | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
    m.send(0, "x")
    m.reset()
    assert not m.enabled and not m.flags & PCI_MSIX_FLAGS_MASKALL
    assert m.entry(0) == (0, 0, 0, 1) and not any(m.pending)


def test_table_size_limits() -> None:
    """The 11-bit Table Size field: 1..2048 entries."""
    for n in (0, 2049):
        with pytest.raises(ValueError, match="2048"):
            _msix(n)
    m, _ = _msix(2048)
    assert m.cfg.get(m.cap + PCI_MSIX_FLAGS, 2) & 0x7FF == 2047
