"""The ``pyvirtio`` command: one group, its sub-commands attached explicitly, one error policy.

``info`` (a machine's PCI layout), ``gpu`` (virtio-gpu demo), ``pm`` (the power-management matrix on the model),
``vm`` (the real QEMU + Linux VM, and ``vm compare``: the model beside it), ``serve`` (a device model served
to a real VM over vhost-user), ``uml`` (a real User-Mode Linux kernel driving pyvirtio's PCI functions). The
consoles, the error policy and the choices every command uses are in :mod:`pyvirtio.cli.common`: a
:class:`~pyvirtio.errors.PyvirtioError` is one line ``pyvirtio: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import click

from pyvirtio.cli.common import EXIT_ERROR, CommandError, Group
from pyvirtio.cli.gpu import gpu
from pyvirtio.cli.info import info
from pyvirtio.cli.pm import pm
from pyvirtio.cli.serve import serve
from pyvirtio.cli.spec import spec
from pyvirtio.cli.uml import uml
from pyvirtio.cli.vm import vm
from pyvirtio.errors import PyvirtioError


@click.group(cls=Group)
@click.version_option(package_name="pyvirtio")
def main() -> None:
    """virtio devices, drivers and transports for device power management."""


main.add_command(info)
main.add_command(gpu)
main.add_command(pm)
main.add_command(vm)
main.add_command(spec)
main.add_command(serve)
main.add_command(uml)


def run() -> None:
    """The console script: run :func:`main`; an error outside any command obeys the same one-line policy."""
    try:
        main(standalone_mode=True)
    except PyvirtioError as e:
        CommandError(str(e)).show()
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    run()
