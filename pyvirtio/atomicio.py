"""File I/O at the edge of the program: atomic writes, and bounded reads of untrusted JSON.

Contract:

* writes go to a temporary file beside the target, are fsynced and renamed: nothing half-written survives,
  readers see the old file or the whole new one. A path that cannot be written raises :class:`OSError` (with
  ``filename`` and ``strerror``) and leaves nothing behind;
* :func:`loads_json` parses a document from an untrusted file (a report, an S4 image header): it is UTF-8,
  strict JSON (no ``NaN``/``Infinity``), no integer longer than Python parses, nested at most
  :data:`MAX_JSON_DEPTH` levels, or one :class:`~pyvirtio.errors.UserInputError` line naming the problem; the
  depth is bounded while parsing, so no input reaches the recursion limit;
* :func:`brief` is how such a value appears in an error line: its ``repr``, cut short, on one line
  (:func:`clip` for text).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pyvirtio.errors import UserInputError

#: Deepest nesting of arrays and objects :func:`loads_json` accepts (report and image header need < 16).
MAX_JSON_DEPTH = 64
#: Longest ``repr`` :func:`brief` shows.
BRIEF_LEN = 60


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears at ``path`` only if the block finishes without error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the whole new one."""
    with atomic_open(path) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_atomic` of ``text`` encoded as UTF-8."""
    write_atomic(path, text.encode())


def clip(text: str, limit: int = BRIEF_LEN) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters (``...`` marks a
    cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def brief(value: object, limit: int = BRIEF_LEN) -> str:
    """``repr(value)`` through :func:`clip`; safe on any value (one nested too deep or an int too long to print
    shows as its type)."""
    try:
        shown = repr(value)
    except (RecursionError, ValueError):
        shown = f"<{type(value).__name__}>"
    return clip(shown, limit)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_ok(value: object, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays/objects deep (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def loads_json(data: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON ``data``; ``what`` (e.g. ``"report x.json"``) starts every error line.

    Raises :class:`UserInputError`: not UTF-8, not JSON, ``NaN``/``Infinity``, an integer beyond Python's
    digit limit, or nesting deeper than ``max_depth`` (the parser's own recursion limit is caught too).
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserInputError(f"{what} is not UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise UserInputError(f"{what} is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise UserInputError(f"{what} is not JSON: {e.msg} at line {e.lineno}") from None
    except ValueError as e:  # NaN/Infinity, an integer of more than sys.get_int_max_str_digits() digits
        raise UserInputError(f"{what} is not JSON: {clip(str(e), 120)}") from None
    if not _depth_ok(value, max_depth):
        raise UserInputError(f"{what} is nested deeper than {max_depth} levels")
    return value
