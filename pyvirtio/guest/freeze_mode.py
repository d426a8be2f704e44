"""Driver side of the 2023 ``freeze_mode`` proposal (reference §2.9): write the mode, poll until reached.

The field is ``le16 freeze_mode`` at the end of the common config (offset 64), behind an unassigned feature bit
(:data:`~pyvirtio.spec.constants.FREEZE_MODE_FEATURE_DEFAULT`); the device side is
:mod:`pyvirtio.host.pci.freeze_mode`.
"""

from __future__ import annotations

from pyvirtio.clock import S
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.spec.constants import CommonCfg, FreezeMode


def set_freeze_mode(drv: VirtioDriver, mode: FreezeMode, timeout: int = 10 * S) -> None:
    """Driver side (reference §2.9): write ``mode`` to ``freeze_mode`` and poll until the device reports it, as
    for ``queue_reset``. Raises :class:`DriverTimeout` if it is not reached within ``timeout`` ns and
    :class:`DriverError` if FREEZE_S3 does not stay reported (refused)."""
    drv.t.write(CommonCfg.FREEZE_MODE, int(mode))
    if not drv.platform.run_until(lambda: drv.t.read(CommonCfg.FREEZE_MODE) == mode, timeout):
        raise DriverTimeout(f"{drv.name}: freeze_mode {mode.name} not reached")
    if mode == FreezeMode.FREEZE_S3 and drv.t.read(CommonCfg.FREEZE_MODE) != mode:
        raise DriverError(f"{drv.name}: freeze_mode refused")

