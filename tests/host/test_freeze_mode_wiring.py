"""The freeze_mode field is built by the function from its options (issue 8 item 4: constructors take the plan,
nothing is patched after construction). Reference §2.9: le16 freeze_mode at common-config offset 64, behind a
feature bit from the unassigned range 44..49."""

from __future__ import annotations

import pytest

from pyvirtio.host.pci.freeze_mode import FreezeModeDevice, check_freeze_mode_bit
from pyvirtio.host.pci.function import PciOptions
from pyvirtio.host.testdev import TestDevice
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import (
    COMMON_CFG_SIZE,
    COMMON_CFG_SIZE_WITH_FREEZE_MODE,
    FREEZE_MODE_FEATURE_DEFAULT,
    PCI_COMMAND,
    QEMU_COMMON_OFFSET,
    QEMU_MODERN_BAR,
    CommonCfg,
    PciCommand,
    bit,
)
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_BITS as FREEZE_MODE_BITS


def _offered(fn) -> int:  # type: ignore[no-untyped-def]
    fn.config_write(PCI_COMMAND, 2, PciCommand.MEMORY)
    feats = 0
    for sel in (0, 1):
        fn.bar_write(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + CommonCfg.DEVICE_FEATURE_SELECT, 4, sel)
        feats |= fn.bar_read(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + CommonCfg.DEVICE_FEATURE, 4) << (32 * sel)
    return int(feats)


def _common_cap_length(fn) -> int:  # type: ignore[no-untyped-def]
    return int(fn.config_read(fn.common_cap + 12, 4))


def test_range_check_lives_in_one_place() -> None:
    """The proposal's bit comes from the unassigned range 44..49; anything else is refused."""
    assert [b for b in range(40, 52) if b in FREEZE_MODE_BITS] == [44, 45, 46, 47, 48, 49]
    for b in FREEZE_MODE_BITS:
        assert check_freeze_mode_bit(b) == b
    for b in (0, 38, 43, 50, 63):
        with pytest.raises(ValueError, match=r"44\.\.49"):
            check_freeze_mode_bit(b)


def test_options_keep_the_flag_and_the_bit_in_step() -> None:
    """``freeze_mode=True`` alone means the default bit; a bit alone means the field is there."""
    assert PciOptions(freeze_mode=True).freeze_mode_bit == FREEZE_MODE_FEATURE_DEFAULT
    assert PciOptions(freeze_mode_bit=47).freeze_mode
    assert PciOptions().freeze_mode_bit is None and not PciOptions().freeze_mode
    with pytest.raises(ValueError):
        PciOptions(freeze_mode_bit=50)


@pytest.mark.parametrize("bit_", [44, 46, 49])
def test_plugged_function_offers_its_bit_from_the_start(bit_: int) -> None:
    """A function plugged with freeze_mode_bit offers that bit, exposes offset 64 (common cap 66 bytes) and has its
    handshake as ``fn.freeze_mode``; the device's own extra_features stay untouched."""
    m = Machine(8 << 20)
    dev = TestDevice()
    fn = m.plug(dev, freeze_mode_bit=bit_)
    assert isinstance(fn.freeze_mode, FreezeModeDevice) and fn.freeze_mode.feature_bit == bit_
    assert fn.freeze_mode_handler is fn.freeze_mode
    assert _offered(fn) & bit(bit_)
    assert not _offered(fn) & (sum(bit(b) for b in FREEZE_MODE_BITS) & ~bit(bit_))
    assert dev.extra_features == 0
    assert _common_cap_length(fn) == COMMON_CFG_SIZE_WITH_FREEZE_MODE


def test_machine_plug_freeze_mode_true_uses_the_default_bit() -> None:
    m = Machine(8 << 20)
    fn = m.plug(TestDevice(), freeze_mode=True)
    assert fn.freeze_mode is not None and fn.freeze_mode.feature_bit == FREEZE_MODE_FEATURE_DEFAULT
    assert _offered(fn) & bit(FREEZE_MODE_FEATURE_DEFAULT)


def test_without_the_field_nothing_is_offered_and_offset_64_is_not_there() -> None:
    """No freeze_mode: the common config is 64 bytes, offset 64 is outside it (reads 0, a violation)."""
    m = Machine(8 << 20)
    fn = m.plug(TestDevice())
    assert fn.freeze_mode is None
    assert not _offered(fn) & sum(bit(b) for b in FREEZE_MODE_BITS)
    assert _common_cap_length(fn) == COMMON_CFG_SIZE
    assert fn.bar_read(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + CommonCfg.FREEZE_MODE, 2) == 0
    assert m.trace.violations()
