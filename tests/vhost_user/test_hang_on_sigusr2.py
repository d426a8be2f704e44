"""``--fault hang-on-sigusr2`` (a hang the caller aims: the back-end wedges when SIGUSR2 arrives) and the gpu
report's folded command sequence (``frontend.gpu_display.commands``), on the Python front-end."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.spec.constants import GpuResp
from pyvirtio.vhost_user import parse_fault, serve

from .gpu_peer import GpuDriver, pattern
from .test_gpu_display import H, W, make


def test_parse() -> None:
    """No value; every device takes it (a generic fault); it is no counting fault."""
    p = parse_fault(("hang-on-sigusr2",))
    assert p.hang_on_sigusr2 and not p.counting
    with pytest.raises(UserInputError, match="takes no value"):
        parse_fault(("hang-on-sigusr2=1",))
    assert not parse_fault(()).hang_on_sigusr2


def test_hang_now_wedges_the_gpu_and_is_recorded() -> None:
    """Before the trigger every command is answered; after it none is (NON-CONFORMING on purpose), the fault event
    names the trigger, and no driver violation is recorded. Without the fault the trigger does nothing."""
    fe = make(faults=("hang-on-sigusr2",))
    try:
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))
        ok = g.set_scanout(0, 1, 0, 0, W, H)
        assert g.resp_type(ok) == GpuResp.OK_NODATA
        fe.server.engine.hang_now("SIGUSR2")
        stuck = g.flush(1, 0, 0, W, H)
        assert g.resp_type(stuck) == 0  # never written
        rec = fe.server.monitor.record
        assert [f.what for f in rec.faults] == ["armed", "hang-on-sigusr2"]
        assert "SIGUSR2" in rec.faults[1].text and rec.violations == 0
    finally:
        fe.close()
    fe = make()
    try:
        fe.server.engine.hang_now("SIGUSR2")
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))
        assert g.resp_type(g.flush(1, 0, 0, W, H)) == GpuResp.OK_NODATA
    finally:
        fe.close()


def test_commands_are_listed_in_order_and_repeats_folded() -> None:
    """The display record's ``commands``: the ring starts, then each control command with its response, a run of
    the same command and response folded into one entry with its count."""
    fe = make()
    try:
        g = GpuDriver(fe)
        g.image(1, pattern(W, H))
        g.set_scanout(0, 1, 0, 0, W, H)
        for _ in range(3):
            g.flush(1, 0, 0, W, H)
        g.unref(7)  # no such resource: an error response, its own entry
        cmds = fe.server.monitor.record.frontend["gpu_display"]["commands"]
        seq = [(c["what"], c.get("resp"), c["n"]) for c in cmds]
        assert seq[:2] == [("queue_started", None, 1), ("queue_started", None, 1)]
        assert seq[2:] == [("RESOURCE_CREATE_2D", "OK_NODATA", 1), ("RESOURCE_ATTACH_BACKING", "OK_NODATA", 1),
                           ("TRANSFER_TO_HOST_2D", "OK_NODATA", 1), ("SET_SCANOUT", "OK_NODATA", 1),
                           ("RESOURCE_FLUSH", "OK_NODATA", 3), ("RESOURCE_UNREF", "ERR_INVALID_RESOURCE_ID", 1)]
    finally:
        fe.close()


def test_serve_installs_sigusr2_only_with_the_fault(tmp_path: Path) -> None:
    """serve(): with the fault SIGUSR2 reaches the engine (the signal handler is the server's while it serves and
    the previous one afterwards); it ends on SIGTERM as always."""
    before = signal.getsignal(signal.SIGUSR2)
    sock = tmp_path / "s.sock"
    seen: list[object] = []

    def poke() -> None:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(signal.getsignal(signal.SIGUSR2))
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=poke)
    t.start()
    serve("gpu", sock, faults=("hang-on-sigusr2",), log=lambda _m: None, out=lambda _m: None)
    t.join()
    assert seen and callable(seen[0]) and seen[0] is not before
    assert signal.getsignal(signal.SIGUSR2) is before
