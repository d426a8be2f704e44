"""What every ``pyvirtio`` command shares: the two consoles, the error policy, the choices, cell formatting.

Contract:

* :data:`out` (stdout) and :data:`err` (stderr) are the only consoles. On a terminal they take its width;
  otherwise (a pipe, a file, a test runner) :data:`PIPE_WIDTH` columns, so saved output is the same everywhere;
* error policy, for every command: a :class:`~pyvirtio.errors.PyvirtioError` raised while a command runs becomes
  exactly one line ``pyvirtio: error: ...`` on stderr and exit status 2 (:class:`Group` does it, so it holds
  under ``pyvirtio`` and under click's test runner alike). A bad option value is click's usage error (also
  status 2). Exit status 1 is a result, not an error: ``vm compare`` found a difference, ``vm matrix`` could not
  run a cell;
* the choices are derived from the one definition of each: :class:`~pyvirtio.report.SleepState`,
  :class:`~pyvirtio.machine.MachineType`, the profiles of :mod:`pyvirtio.pm.profiles`.
"""

from __future__ import annotations

from typing import IO, Any

import click
from rich.console import Console

from pyvirtio.errors import PyvirtioError, UserInputError
from pyvirtio.machine import MachineType
from pyvirtio.pm.profiles import Profile, parse_profile
from pyvirtio.report import SleepState

#: Width of the consoles when they do not write to a terminal.
PIPE_WIDTH = 160
#: Exit status of a command that failed (a PyvirtioError, or click's usage error).
EXIT_ERROR = 2
#: Exit status of a command that ran and reports a negative result (a difference, a cell that could not run).
EXIT_RESULT = 1

out = Console(width=None if Console().is_terminal else PIPE_WIDTH)
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else PIPE_WIDTH)


class CommandError(click.ClickException):
    """A :class:`PyvirtioError` on its way out: one line ``pyvirtio: error: ...`` on stderr, exit status 2."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # exactly one line, whatever the message held

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one line (click calls this before exiting)."""
        click.echo(f"pyvirtio: error: {self.format_message()}", file=file, err=file is None)


class Group(click.Group):
    """A click group that applies the error policy to every sub-command it runs."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; a :class:`PyvirtioError` becomes a :class:`CommandError`."""
        try:
            return super().invoke(ctx)
        except PyvirtioError as e:
            raise CommandError(str(e)) from None


SLEEP_CHOICE = click.Choice([s.value for s in SleepState])
MACHINE_CHOICE = click.Choice([m.value for m in MachineType])


def parse_profiles(ctx: click.Context, param: click.Parameter, value: str | tuple[str, ...] | None,
                   ) -> Profile | tuple[Profile, ...] | None:
    """Option callback: profile name(s) -> :class:`Profile` (one or a tuple, as the option is declared); an
    unknown name is click's bad-parameter error carrying the parser's one line."""
    try:
        if isinstance(value, tuple):
            return tuple(parse_profile(v) for v in value)
        return None if value is None else parse_profile(value)
    except UserInputError as e:
        raise click.BadParameter(str(e), ctx, param) from None


#: Byte-size suffixes understood by :func:`parse_size`.
SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Option callback: a positive byte count with an optional K/M/G suffix (``256K``, ``4M``, ``1GiB``)."""
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    mult = SIZE_UNITS.get(v[-1:], 1)
    num = v[:-1] if v[-1:] in SIZE_UNITS else v
    try:
        n = int(float(num) * mult)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 256K, 4M, 1G)", ctx, param) from None
    if n <= 0:
        raise click.BadParameter("size must be positive", ctx, param)
    return n


def yes_no(v: bool | None) -> str:
    """``yes`` in green, ``no`` in red, ``-`` for not measured (rich markup)."""
    return "-" if v is None else ("[green]yes[/]" if v else "[red]no[/]")


def millis(v: float | None, digits: int = 0) -> str:
    """A duration in ms with ``digits`` decimals, ``-`` for not measured."""
    return "-" if v is None else f"{v:.{digits}f}"
