"""The real-time adapter (scheduler, event loop), the listening socket, the server's connection life, the fault
plan and the monitor's tables. Nothing here sleeps: steps are scheduled for now, sockets are read when ready."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.spec.normative import load_inventory
from pyvirtio.vhost_user import Server, parse_fault, serve
from pyvirtio.vhost_user.loop import EventLoop, RealTimeScheduler
from pyvirtio.vhost_user.messages import HEADER_SIZE, Header, Request, encode
from pyvirtio.vhost_user.monitor import RULE_STATEMENTS, statements_for
from pyvirtio.vhost_user.server import open_listener


def test_scheduler_runs_due_steps_in_order() -> None:
    """Steps due now run in scheduling order, also those they schedule for now; cancelled ones never run;
    nothing later than now runs."""
    s = RealTimeScheduler()
    ran: list[str] = []
    s.schedule(0, lambda: ran.append("a"))
    s.schedule(0, lambda: (ran.append("b"), s.schedule(0, lambda: ran.append("c"))))
    s.schedule(0, lambda: ran.append("x")).cancel()
    s.schedule(10**12, lambda: ran.append("late"))
    assert s.run_due() == 3 and ran == ["a", "b", "c"]
    t = s.timeout()
    assert t is not None and t > 100
    with pytest.raises(ValueError):
        s.schedule(-1, lambda: None)


def test_scheduler_contains_step_errors() -> None:
    """A step that raises is logged as one line; the following steps still run."""
    logs: list[str] = []
    s = RealTimeScheduler(log=logs.append)
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("bad step")

    s.schedule(0, boom, "boom")
    s.schedule(0, lambda: ran.append(1))
    s.run_due()
    assert ran == [1] and len(logs) == 1 and "boom" in logs[0]
    assert s.run_until(lambda: True, 10**9)


def test_event_loop_dispatches_readable_descriptors() -> None:
    """A readable descriptor calls its callback; a removed one does not; a failing callback is one log line."""
    logs: list[str] = []
    loop = EventLoop(log=logs.append)
    a, b = socket.socketpair()
    got: list[bytes] = []
    try:
        loop.add_reader(a.fileno(), lambda: got.append(a.recv(16)))
        b.send(b"hi")
        assert loop.poll(0) == 1 and got == [b"hi"]
        loop.add_reader(a.fileno(), lambda: 1 / 0)
        b.send(b"!")
        loop.poll(0)
        assert len(logs) == 1
        loop.remove_reader(a.fileno())
        assert not loop.watching(a.fileno()) and loop.poll(0) == 0
        loop.stop()
        assert loop.stopping
    finally:
        a.close()
        b.close()
        loop.close()


def test_listener_is_created_atomically_and_safely(tmp_path: Path) -> None:
    """The socket appears at its path ready to accept; a stale socket is replaced, a live one or a regular file
    is refused with one line, a path too long for AF_UNIX too."""
    path = tmp_path / "s.sock"
    sock, _ = open_listener(path)
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        c.close()
        with pytest.raises(UserInputError, match="listening"):
            open_listener(path)
    finally:
        sock.close()
    again, _ = open_listener(path)  # stale now: replaced
    again.close()
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserInputError, match="not a socket"):
        open_listener(tmp_path / "f")
    with pytest.raises(UserInputError, match="longer than"):
        open_listener(tmp_path / ("x" * 120))
    with pytest.raises(UserInputError, match="does not exist"):
        open_listener(tmp_path / "nodir" / "s")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pv")] == []


def _client(path: Path, out: list[Header]) -> None:
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(path))
    c.sendall(encode(Request.GET_FEATURES) + encode(Request.SET_OWNER))
    out.append(Header.unpack(c.recv(HEADER_SIZE, socket.MSG_WAITALL)))
    c.recv(8, socket.MSG_WAITALL)
    c.close()


def test_serve_once_writes_the_report(tmp_path: Path) -> None:
    """serve(..., once=True): one front-end connects, talks, leaves; the server ends, removes its socket, prints
    the summary and writes the JSON report atomically."""
    path, report = tmp_path / "rng.sock", tmp_path / "report.json"
    out: list[str] = []
    server = Server("rng", seed=1, once=True, report=report, log=lambda m: None, out=out.append)
    server.listen(path)
    replies: list[Header] = []
    t = threading.Thread(target=_client, args=(path, replies))
    t.start()
    try:
        server.run()
    finally:
        server.close()
        t.join(10)
    assert replies and replies[0].request == Request.GET_FEATURES
    assert not path.exists()
    data = json.loads(report.read_text())
    assert data["format"] == "pyvirtio-serve-report/1" and data["totals"]["connections"] == 1
    assert data["connections"][0]["messages"] == {"GET_FEATURES": 1, "SET_OWNER": 1}
    assert any(line.startswith("connection 1 (rng) ended") for line in out)


def test_serve_api_rejects_bad_input(tmp_path: Path) -> None:
    """Unknown devices and faults are one-line errors before any socket exists."""
    with pytest.raises(UserInputError, match="cannot serve"):
        serve("nosuch", tmp_path / "s")
    with pytest.raises(UserInputError, match="not supported"):
        serve("rng", tmp_path / "s", faults=("error=RESOURCE_FLUSH",))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("specs", "why"), [
    (("bogus",), "unknown fault"),
    (("delay",), "needs a value"),
    (("quiesce-never-ends=1",), "takes no value"),
    (("delay=x",), "whole number"),
    (("delay=99999999",), "whole number"),
    (("delay=1", "delay=2"), "twice"),
    (("error=bad cmd",), "command name"),
])
def test_fault_parsing_errors(specs: tuple[str, ...], why: str) -> None:
    """Bad --fault values: one line naming the fault."""
    with pytest.raises(UserInputError, match=why):
        parse_fault(specs)


def test_fault_plan() -> None:
    """Every fault parses into the plan; the counting ones make the engine count."""
    p = parse_fault(("delay=5", "hang-after=10", "needs-reset-after=20", "quiesce-never-ends", "suspend-fails",
                     "resume-fails", "error=RESOURCE_FLUSH"))
    assert (p.delay_ms, p.hang_after, p.needs_reset_after, p.error_command) == (5, 10, 20, "RESOURCE_FLUSH")
    assert p.quiesce_never_ends and p.suspend_fails and p.resume_fails and p.counting
    assert not parse_fault(("delay=1",)).counting


def test_rule_table_names_real_statements() -> None:
    """Every statement id the monitor reports exists in the normative inventory."""
    inventory = load_inventory()
    for m in RULE_STATEMENTS:
        for sid in m.statements:
            assert sid in inventory, sid
    assert statements_for("§2.7 malformed descriptor chain", {"error": "descriptor 3 loops"})[0] == (
        "drv:split/desc#1",)
    assert statements_for("something new", {}) == ((), "")


def test_no_descriptor_leak_across_connections(tmp_path: Path) -> None:
    """Several front-ends one after the other (not once): each connection's descriptors and mappings are
    released when it ends."""
    server = Server("rng", seed=1, log=lambda m: None, out=lambda m: None)
    server.listen(tmp_path / "s.sock")
    before = set(os.listdir("/proc/self/fd"))
    try:
        for _ in range(3):
            replies: list[Header] = []
            t = threading.Thread(target=_client, args=(tmp_path / "s.sock", replies))
            t.start()
            while not server.records or server.records[-1].ended is None or t.is_alive():
                server.loop.poll(0.5)
            t.join()
        assert len(server.records) == 3
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        server.close()


def test_stop_on_signals_and_restore() -> None:
    """SIGTERM ends the loop's run (through the wake-up descriptor); closing the loop restores the handler."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    loop = EventLoop(RealTimeScheduler())
    loop.stop_on_signals((signal.SIGTERM,))
    loop.scheduler.schedule(0, lambda: os.kill(os.getpid(), signal.SIGTERM))  # type: ignore[union-attr]
    loop.run()
    assert loop.stopping
    loop.close()
    assert signal.getsignal(signal.SIGTERM) == before
