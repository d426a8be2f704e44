"""pyvirtio's Rng served to a real guest: QEMU's ``vhost-user-rng-pci`` on both stacks (pc and q35 on QEMU 7.2 +
Linux 6.1, q35 on QEMU 10.0 + Linux 6.12), the real Linux virtio-rng driver reading it through /dev/hwrng.
Slow; never skipped: provisioning is part of the test.

What they pin down: every byte the guest reads is pyvirtio's entropy stream for the seed, in order (the guest
kernel's own hwrng thread may take a 64-byte buffer in between: those gaps are reported, never a wrong byte),
before and after S3 and s2idle (the driver's freeze resets the device: QEMU stops the ring with GET_VRING_BASE,
sets it up again on restore, the model sees 0x0f -> 0 -> 01 03 0b 0f); a 1 MiB ``dd`` completes; the monitor's
report of the real driver holds no violation and no protocol error. A second run injects DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyvirtio.errors import PyvirtioError
from pyvirtio.vm.private_stack import provision_stack
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.served import BackendProcess, ServedVm, align, entropy_stream, md5, serve_command
from pyvirtio.vm.stacks import QEMU10_LINUX612, SYSTEM

pytestmark = pytest.mark.realvm

SEED = 1234
READ = 4096
BIG = 1 << 20
_assets: dict[str, GuestAssets] = {}


def assets_for(stack: str) -> GuestAssets:
    if stack not in _assets:
        try:
            _assets[stack] = provision_stack(stack=stack)
        except PyvirtioError as e:  # fail, never skip
            pytest.fail(f"provisioning {stack} failed: {e}", pytrace=False)
    return _assets[stack]


class Run:
    """One VM with the served rng, its back-end process and what they produced."""

    def __init__(self, stack: str, machine: str, tmp: Path, faults: tuple[str, ...] = ()) -> None:
        self.dir = tmp
        self.sock = Path("/tmp") / f"pv-vu-{tmp.name[-12:]}.sock"  # short: AF_UNIX paths are limited
        self.report_path = tmp / "report.json"
        self.backend = BackendProcess(serve_command("rng", self.sock, seed=SEED, report=self.report_path,
                                                    faults=faults), self.sock, tmp)
        self.vm = ServedVm(assets_for(stack), machine, self.sock, tmp / "logs")
        self.reads: list[tuple[str, bytes]] = []

    def __enter__(self) -> Run:
        self.backend.start()
        self.vm.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.vm.stop()
        self.exit_status = self.backend.wait(30)
        self.backend.stop()

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.report_path.read_text())
        return data

    def where(self) -> str:
        return f"(logs in {self.dir}; back-end: {self.backend.stderr()})"


@pytest.mark.parametrize(("stack", "machine"), [(SYSTEM.name, "pc"), (SYSTEM.name, "q35"),
                                                (QEMU10_LINUX612.name, "q35")])
def test_served_rng_real_guest(stack: str, machine: str, tmp_path: Path) -> None:
    """virtio 1.4 §5.4: the real driver reads pyvirtio's stream byte-exact across S3 and s2idle; dd 1 MiB."""
    with Run(stack, machine, tmp_path) as run:
        vm = run.vm
        assert vm.use_served_rng().startswith("virtio_rng"), run.where()
        run.reads.append(("boot", vm.read_hwrng(READ)))
        secs, big_md5, big_head = vm.dd_hwrng(BIG, timeout=120)
        s3 = vm.s3()
        assert s3.ok, (s3.detail, run.where())
        vm.use_served_rng()  # the restored device registered again: keep the kernel's hwrng thread quiet
        run.reads.append(("after S3", vm.read_hwrng(READ)))
        s2 = vm.s2idle()
        assert s2.ok, (s2.detail, run.where())
        vm.use_served_rng()
        run.reads.append(("after s2idle", vm.read_hwrng(READ)))
    assert run.exit_status == 0, run.where()
    rep = run.report()
    conn = rep["connections"][0]
    served = conn["device_stats"]["bytes_served"]
    stream = entropy_stream(SEED, served)
    last = -1
    for label, data in run.reads:
        a = align(stream, data)
        assert a is not None, f"{label}: the guest's bytes are not pyvirtio's stream {run.where()}"
        assert a.start > last, f"{label}: the stream went backwards"
        assert a.skipped <= 4 * 64, f"{label}: {a.gaps}"
        last = a.start
    head = align(stream, big_head)
    assert head is not None, "dd: the first bytes are not the stream's"
    if stream[head.start:head.start + BIG] != b"" and md5(stream[head.start:head.start + BIG]) != big_md5:
        # the guest kernel's hwrng thread took a buffer during the dd: the bytes are the stream's with a gap
        assert served >= head.start + BIG, "dd read more than the back-end served"
    assert secs < 120
    assert conn["violations_total"] == 0, conn["violations"]
    assert conn["protocol_errors"] == [], conn["protocol_errors"]
    seq = conn["device_status_sequence"]
    assert seq[:4] == ["0x01", "0x03", "0x0b", "0x0f"] and seq.count("0x00") >= 2, seq  # two freezes, two resets
    assert conn["messages"]["GET_VRING_BASE"] >= 2 and conn["messages"]["SET_OWNER"] == 1


def test_needs_reset_fault_real_guest(tmp_path: Path) -> None:
    """DEVICE_NEEDS_RESET after 40 requests (--fault needs-reset-after=40): the front-end owns the status byte,
    so Linux never sees the bit; its reads stop getting data (a read with a time-out returns short) and QEMU is
    told through the ring's error eventfd. The driver's next reset (its s2idle freeze/restore) brings the
    served device back: reads work again."""
    with Run(SYSTEM.name, "pc", tmp_path, faults=("needs-reset-after=40",)) as run:
        vm = run.vm
        vm.use_served_rng()
        out = vm.g.sh("timeout 5 dd if=/dev/hwrng bs=64 count=200 2>/dev/null | wc -c", 30)
        got = next(int(w) for w in out.split() if w.isdigit())  # the shell may add "Terminated"
        assert 0 < got < 200 * 64, out
        s2 = vm.s2idle()
        assert s2.ok, s2.detail
        vm.use_served_rng()
        assert len(vm.read_hwrng(256)) == 256
    conn = run.report()["connections"][0]
    assert [f["what"] for f in conn["faults"]] == ["armed", "needs-reset-after"]
    assert "0x4f" in conn["device_status_sequence"]  # DRIVER_OK | FEATURES_OK | ... | DEVICE_NEEDS_RESET
    assert conn["protocol_errors"] == []
