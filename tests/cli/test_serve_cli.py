"""``pyvirtio serve rng``: its options' bad input (one line, status 2) and a real run as a separate process that a
Python front-end connects to and leaves (``--once``): socket created, summary printed, report written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pyvirtio
from pyvirtio.cli import main
from pyvirtio.vhost_user.messages import HEADER_SIZE, Header, Request, encode


@pytest.mark.parametrize(("args", "needle"), [
    (["--fault", "bogus"], "unknown fault"),
    (["--fault", "delay=abc"], "whole number"),
    (["--fault", "error=RESOURCE_FLUSH"], "not supported by this device"),
    (["--fault", "delay=1", "--fault", "delay=2"], "given twice"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bad option values are one line ``pyvirtio: error: ...`` and status 2, before any socket exists."""
    sock = tmp_path / "s.sock"
    r = CliRunner().invoke(main, ["serve", "rng", "--socket", str(sock), *args])
    assert r.exit_code == 2 and r.stderr.startswith("pyvirtio: error: ") and r.stderr.count("\n") == 1, r.output
    assert needle in r.stderr and not sock.exists()


def test_bad_socket_paths(tmp_path: Path) -> None:
    """A socket in a missing directory, or on top of a regular file: one line, nothing clobbered."""
    (tmp_path / "file").write_text("keep")
    for path, needle in ((tmp_path / "no" / "s", "does not exist"), (tmp_path / "file", "not a socket")):
        r = CliRunner().invoke(main, ["serve", "rng", "--socket", str(path), "--once"])
        assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.output
    assert (tmp_path / "file").read_text() == "keep"


def test_serve_once_as_a_process(tmp_path: Path) -> None:
    """The command as users run it: it says where it listens, serves one front-end, prints the connection's
    summary when it leaves, writes the report, removes its socket, exits 0."""
    sock, report = tmp_path / "rng.sock", tmp_path / "out" / "report.json"
    root = str(Path(pyvirtio.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.Popen([sys.executable, "-c", "from pyvirtio.cli import run; run()", "serve", "rng",
                             "--socket", str(sock), "--once", "--report", str(report), "--seed", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        assert "serving rng on" in first, first
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock))
        c.sendall(encode(Request.GET_FEATURES))
        h = Header.unpack(c.recv(HEADER_SIZE, socket.MSG_WAITALL))
        assert h.request == Request.GET_FEATURES and len(c.recv(8, socket.MSG_WAITALL)) == 8
        c.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"connection 1 (rng) ended" in out
    assert json.loads(report.read_text())["connections"][0]["messages"] == {"GET_FEATURES": 1}
    assert not sock.exists()
