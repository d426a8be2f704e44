"""The serial marker protocol against a fake guest shell (echo with line wrapping, prompts, noise)."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from pyvirtio.vm.errors import GuestTimeout, VmError
from pyvirtio.vm.serial import SerialConsole


class FakeShell:
    """Echoes what is typed (wrapped at 80 columns like busybox ash) and runs it through a real ``sh``."""

    def __init__(self, console_factory: type[SerialConsole] = SerialConsole, delay: float = 0.0) -> None:
        self.console = console_factory(self.write)
        self.delay = delay
        self.typed: list[bytes] = []
        self.hold = threading.Event()
        self.hold.set()

    def write(self, data: bytes) -> None:
        self.typed.append(data)
        threading.Thread(target=self._answer, args=(data,), daemon=True).start()

    def _answer(self, data: bytes) -> None:
        line = data.decode()
        echo = "\r\r\n".join(line.rstrip("\n")[i:i + 80] for i in range(0, len(line.rstrip("\n")), 80))
        self.console.feed(b"\x1b[6n/ # " + echo.encode() + b"\r\n")
        if not line.strip():
            return
        self.hold.wait()
        time.sleep(self.delay)
        out = subprocess.run(["sh", "-c", line], capture_output=True, check=False).stdout
        # deliver in small, odd-sized chunks with CRLF line ends
        out = out.replace(b"\n", b"\r\n")
        for i in range(0, len(out), 7):
            self.console.feed(out[i:i + 7])


def test_run_returns_output_and_status() -> None:
    sh = FakeShell()
    res = sh.console.run("echo hello; echo world", timeout=5)
    assert res.rc == 0 and res.output == "hello\nworld"
    res = sh.console.run("echo " + "x" * 150 + "; false", timeout=5)
    assert res.rc == 1 and res.output == "x" * 150
    with pytest.raises(VmError, match="exit 3"):
        sh.console.run("(exit 3)", timeout=5).check("exit")


def test_echoed_command_never_matches_its_markers() -> None:
    sh = FakeShell()
    sh.hold.clear()  # the shell echoes but does not run yet
    pending = sh.console.start("echo late")
    time.sleep(0.2)
    with pytest.raises(GuestTimeout):
        sh.console.wait(pending, 0.2)
    assert re.search(rb'@@PV""E\d+', bytes(sh.console.text(), "utf-8"))  # the echo is there ...
    sh.hold.set()
    assert sh.console.wait(pending, 5).output == "late"  # ... yet only the real marker ends the wait


def test_timeout_message_names_last_output() -> None:
    sh = FakeShell(delay=5.0)
    t0 = time.monotonic()
    with pytest.raises(GuestTimeout, match=r"within 0 s; last output: .*echo slow"):
        sh.console.run("echo slow", timeout=0.3)
    assert time.monotonic() - t0 < 2


def test_eof_fails_fast() -> None:
    con = SerialConsole(lambda _: None)
    pending = con.start("true")
    threading.Timer(0.1, con.feed_eof).start()
    t0 = time.monotonic()
    with pytest.raises(VmError, match="QEMU exited"):
        con.wait(pending, 30)
    assert time.monotonic() - t0 < 5


def test_pending_survives_a_new_console() -> None:
    """S4: the command started on the first console finishes on the second one (a new QEMU)."""
    first = SerialConsole(lambda _: None)
    pending = first.start("echo disk > /sys/power/state")
    second = SerialConsole(lambda _: None)
    second.feed(b"[    1.0] booting\r\n")
    second.feed(b"@@PVE%d:0@@\r\n" % pending.ident)
    res = second.wait(pending, 1, start=0)
    assert res.rc == 0 and res.output == ""


def test_expect_from_position() -> None:
    con = SerialConsole(lambda _: None)
    con.feed(b"READY\n")
    pos = con.position()
    con.feed(b"later READY\n")
    assert con.expect(b"READY", 1, start=pos).start() >= pos
    with pytest.raises(GuestTimeout):
        con.expect(b"MISSING", 0.1)
