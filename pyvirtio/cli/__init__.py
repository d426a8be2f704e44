"""The ``pyvirtio`` command."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from pyvirtio.errors import PyvirtioError

console = Console()


@click.group()
@click.version_option(package_name="pyvirtio")
def main() -> None:
    """virtio devices, drivers and transports for device power management."""


# the sub-commands are attached explicitly here, after the group exists
from pyvirtio.cli.compare import compare_cmd  # noqa: E402
from pyvirtio.cli.gpu import gpu  # noqa: E402
from pyvirtio.cli.info import info  # noqa: E402
from pyvirtio.cli.pm import pm  # noqa: E402
from pyvirtio.cli.vm import vm  # noqa: E402

main.add_command(info)
main.add_command(gpu)
main.add_command(pm)
main.add_command(vm)
vm.add_command(compare_cmd)


def run() -> None:
    try:
        main(standalone_mode=True)
    except PyvirtioError as e:
        click.echo(f"pyvirtio: error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
