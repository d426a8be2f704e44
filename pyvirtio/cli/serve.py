"""``pyvirtio serve <device>``: serve a pyvirtio device model to a real VM over vhost-user.

One sub-command per entry of :data:`pyvirtio.vhost_user.catalog.SERVABLE`, all with the same options
(:func:`serve_options`): ``--socket`` (created atomically), ``--once`` (exit when the first front-end
disconnects), ``--report FILE`` (the monitor's JSON report, written atomically after each connection),
``--fault NAME[=VALUE]`` (repeatable, see :mod:`pyvirtio.vhost_user.faults`), ``--seed``. Log lines (one per
problem) go to stderr, the per-connection summary to stdout. Bad input follows the CLI's policy (one line,
exit status 2). SIGTERM and SIGINT end the server cleanly (socket removed, report written).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pyvirtio.cli.common import Group, output_dir, shown
from pyvirtio.errors import UserInputError
from pyvirtio.pm.config import SEED_MAX
from pyvirtio.vhost_user import SERVABLE, ServeSpec, parse_fault
from pyvirtio.vhost_user import serve as serve_device
from pyvirtio.vhost_user.faults import FAULT_NAMES
from pyvirtio.vhost_user.gpu_display import DumpTrigger, GpuDisplayFactory
from pyvirtio.vhost_user.served_gpu import gpu_command


def _log(msg: str) -> None:
    click.echo(f"pyvirtio serve: {shown(msg)}", err=True)


def _out(msg: str) -> None:
    click.echo(shown(msg))


def serve_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every ``serve`` sub-command takes."""
    f = click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
                     help="seed of the device model (rng: the entropy stream)")(f)
    f = click.option("--fault", "faults", multiple=True, metavar="NAME[=VALUE]",
                     help="inject a fault (repeatable): " + ", ".join(
                         (f"{n}=CMD" if n == "error" else f"{n}=N") if v else n for n, v in FAULT_NAMES.items()))(f)
    f = click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="write the conformance monitor's JSON report here (atomically, after each connection)")(f)
    f = click.option("--once", is_flag=True, help="exit when the first front-end disconnects")(f)
    f = click.option("--socket", "socket_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
                     help="vhost-user socket to create (QEMU: -chardev socket,path=...)")(f)
    return f


def run_server(device: str | ServeSpec, socket_path: Path, once: bool, report: Path | None,
               faults: tuple[str, ...], seed: int) -> None:
    """Check the options, then serve ``device`` until a signal (or the first disconnect with ``once``)."""
    spec = SERVABLE[device] if isinstance(device, str) else device
    plan = parse_fault(faults, spec.faults)
    if report is not None:
        output_dir(report.parent if str(report.parent) else Path("."), "--report")
    serve_device(spec, socket_path, seed=seed, faults=plan, once=once, report=report, log=_log, out=_out)


@click.group(cls=Group)
def serve() -> None:
    """Serve a pyvirtio device model to a real VM over vhost-user (QEMU: -device vhost-user-<device>-pci)."""


@serve.command("rng")
@serve_options
def rng(socket_path: Path, once: bool, report: Path | None, faults: tuple[str, ...], seed: int) -> None:
    """virtio-rng: pyvirtio's seeded entropy stream, for QEMU's vhost-user-rng-pci."""
    run_server("rng", socket_path, once, report, faults, seed)


@serve.command("gpu")
@serve_options
@click.option("--dump-scanout", "dump", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="write what scanout 0 shows (PNG, plus a JSON sidecar PATH.json) at the end of each connection "
                   "and on SIGUSR1")
def gpu(socket_path: Path, once: bool, report: Path | None, faults: tuple[str, ...], seed: int,
        dump: Path | None) -> None:
    """virtio-gpu (2D): pyvirtio's gpu model on the front-end's display, for QEMU's vhost-user-gpu-pci.

    --fault error=CMD answers every request of control command CMD (e.g. RESOURCE_FLUSH) with ERR_UNSPEC."""
    for f in faults:
        name, _, value = f.strip().partition("=")
        if name == "error" and value:
            cmd = gpu_command(value)
            if isinstance(cmd, str):
                raise UserInputError(cmd)
    spec = SERVABLE["gpu"]
    if dump is not None:
        output_dir(dump.parent if str(dump.parent) else Path("."), "--dump-scanout")
        trigger = DumpTrigger()
        trigger.install()
        spec = dataclasses.replace(spec, extension=GpuDisplayFactory(dump, trigger))
    run_server(spec, socket_path, once, report, faults, seed)
