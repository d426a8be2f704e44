"""The real VM: Debian's QEMU 7.2 with a Debian Linux 6.1 guest under TCG, driven through S3, s2idle and S4.

Typical use::

    from pyvirtio.vm import provision, run_cell
    assets = provision()                      # idempotent; installs QEMU (root) and builds the guest
    cell = run_cell(assets, SleepState.S3, "q35", out_dir=Path("out"))   # -> pyvirtio.report.CellResult

The harness speaks the report's vocabulary (:mod:`pyvirtio.report`) and never imports the model's experiment
(:mod:`pyvirtio.pm`): the two meet only in :mod:`pyvirtio.fidelity`.
"""

from __future__ import annotations

from pyvirtio.vm.errors import GuestTimeout, ProvisionError, VmError
from pyvirtio.vm.provisioning import GuestAssets, default_cache_dir, load_assets, provision
from pyvirtio.vm.scenario import SLEEP_STATES, Timeouts, run_cell, run_matrix

__all__ = ["SLEEP_STATES", "GuestAssets", "GuestTimeout", "ProvisionError", "Timeouts", "VmError",
           "default_cache_dir", "load_assets", "provision", "run_cell", "run_matrix"]
