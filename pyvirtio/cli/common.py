"""What every ``pyvirtio`` command shares: the two consoles, the error policy, the choices, cell formatting.

Contract:

* :data:`out` (stdout) and :data:`err` (stderr) are the only consoles. On a terminal they take its width;
  otherwise (a pipe, a file, a test runner) :data:`PIPE_WIDTH` columns, so saved output is the same everywhere.
  Text that came from outside the program (a path, a report's strings, a guest's notes) is printed with markup
  disabled or escaped (:func:`lit`): ``[red]`` in a file name is shown, not obeyed;
* error policy, for every command (:class:`Group` applies it, so it holds under ``pyvirtio`` and under click's
  test runner alike): bad input is exactly one line ``pyvirtio: error: ...`` on stderr and exit status 2
  (:data:`EXIT_ERROR`), never a traceback. That covers a :class:`~pyvirtio.errors.PyvirtioError` raised while a
  command runs, a bad option value or an unknown command (click's usage error, made one line naming the option
  by :class:`UsageError`; a group run without a command still prints its help), and an :class:`OSError` (a path
  that cannot be created, read or written: the line names the path and the reason). Output directories are
  checked before any work (:func:`output_dir`). Exit status 1 (:data:`EXIT_RESULT`) is a result, not an error:
  ``vm compare`` found a difference, ``vm matrix`` could not run a cell;
* every number option is bounded: integers by :class:`click.IntRange`, sizes by :func:`size_option` (a decimal
  number with an optional K/M/G suffix, at most the option's limit, never a float overflow);
* the choices are derived from the one definition of each: :class:`~pyvirtio.report.SleepState`,
  :class:`~pyvirtio.machine.MachineType`, the profiles of :mod:`pyvirtio.pm.profiles`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.markup import escape

from pyvirtio.atomicio import clip
from pyvirtio.errors import PyvirtioError, UserInputError
from pyvirtio.machine import MachineType
from pyvirtio.pm.profiles import Profile, parse_profile
from pyvirtio.report import SleepState

#: Width of the consoles when they do not write to a terminal.
PIPE_WIDTH = 160
#: Exit status of a command that failed (bad input: a PyvirtioError, a usage error, a path that cannot be used).
EXIT_ERROR = 2
#: Exit status of a command that ran and reports a negative result (a difference, a cell that could not run).
EXIT_RESULT = 1
#: Longest error line (a hostile value cannot make it longer).
MAX_ERROR_LINE = 1000

out = Console(width=None if Console().is_terminal else PIPE_WIDTH)
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else PIPE_WIDTH)


def shown(value: object) -> str:
    """``str(value)`` made printable: a path's undecodable bytes (lone surrogates in Python) become ``\\xNN``,
    so printing it cannot raise whatever the console's encoding."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join(_unsurrogate(c) for c in text)
    return text


def _unsurrogate(c: str) -> str:
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
        return f"\\x{n - 0xDC00:02x}"
    return f"\\u{n:04x}" if 0xD800 <= n <= 0xDFFF else c


def lit(value: object) -> str:
    """:func:`shown` and escaped for rich markup: printed as it is, whatever brackets it holds."""
    return escape(shown(value))


def _one_line(message: str) -> str:
    return clip(shown(message), MAX_ERROR_LINE)


class CommandError(click.ClickException):
    """Bad input on its way out: one line ``pyvirtio: error: ...`` on stderr, exit status 2."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))  # exactly one line, whatever the message held

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one line (click calls this before exiting)."""
        click.echo(f"pyvirtio: error: {self.format_message()}", file=file, err=file is None)


class UsageError(click.UsageError):
    """Click's usage error (bad option value, missing option, unknown command) as the policy's one line:
    ``pyvirtio: error: <click's message> (see '<command> --help')``, exit status 2."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the one line."""
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"pyvirtio: error: {_one_line(self.format_message())}{hint}", file=file, err=file is None)


def describe_os_error(e: OSError) -> str:
    """``<path>: <reason>`` for an :class:`OSError` (both paths of a rename), or its text when it has no path."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    both = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return f"{both}: {reason}"


def _one_line_usage(e: click.UsageError) -> click.UsageError:
    if isinstance(e, (UsageError, click.exceptions.NoArgsIsHelpError)):
        return e  # already one line, or the help a group prints when run without a command
    return UsageError(e.format_message(), e.ctx)


class Group(click.Group):
    """A click group that applies the error policy to every sub-command it runs (and to its own options)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse the group's own options; a usage error is one line."""
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _one_line_usage(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; a :class:`PyvirtioError` or :class:`OSError` becomes a :class:`CommandError`, a
        usage error a one-line :class:`UsageError`."""
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line_usage(e) from None
        except PyvirtioError as e:
            raise CommandError(str(e)) from None
        except OSError as e:
            raise CommandError(describe_os_error(e)) from None


def output_dir(path: Path, option: str = "--out") -> Path:
    """Create directory ``path`` (with its parents) and make sure a file can be created in it, before a command
    does any work: otherwise a one-line :class:`UserInputError` naming the option, the path and the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pyvirtio-", suffix=".probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserInputError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return path


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
#: Largest size :func:`parse_size` accepts when its option sets no smaller limit (1 TiB).
SIZE_MAX = 1 << 40
_SIZE = re.compile(r"(?P<num>[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})(?:(?P<unit>[kmg])(?:ib|b)?|b)?")


def to_size(text: str, limit: int = SIZE_MAX) -> int:
    """``"256K"`` -> 262144: a decimal number (no exponent, no sign) with an optional K/M/G suffix (``KiB``,
    ``KB`` too), floored to whole bytes, in ``1..limit``; otherwise a :class:`ValueError` saying why."""
    m = _SIZE.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"{clip(repr(text), 40)} is not a size (e.g. 256K, 4M, 1G)")
    n = int(Decimal(m["num"]) * SIZE_UNITS.get(m["unit"] or "", 1))
    if not 1 <= n <= limit:
        raise ValueError(f"size must be 1 byte..{_human(limit)}")
    return n


def _human(n: int) -> str:
    for unit, mult in sorted(SIZE_UNITS.items(), key=lambda kv: -kv[1]):
        if n % mult == 0:
            return f"{n // mult}{unit.upper()}"
    return str(n)


def size_option(limit: int = SIZE_MAX) -> Callable[[click.Context, click.Parameter, str], int]:
    """Option callback: :func:`to_size` with ``limit``; a bad value is click's bad-parameter error (one line)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> int:
        try:
            return to_size(value, limit)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return parse


#: Option callback: a byte count with an optional K/M/G suffix, at most :data:`SIZE_MAX`.
parse_size = size_option()


def yes_no(v: bool | None) -> str:
    """``yes`` in green, ``no`` in red, ``-`` for not measured (rich markup)."""
    return "-" if v is None else ("[green]yes[/]" if v else "[red]no[/]")


def millis(v: float | None, digits: int = 0) -> str:
    """A duration in ms with ``digits`` decimals, ``-`` for not measured."""
    return "-" if v is None else f"{v:.{digits}f}"
