"""The served-device VM's pieces that need no VM: the QEMU arguments, the back-end command, and matching what a
guest read against the back-end's entropy stream (with the gaps another reader leaves)."""

from __future__ import annotations

from pathlib import Path

from pyvirtio.host.rng import EntropySource
from pyvirtio.machine import MachineType
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qemu import BootFiles, qemu_argv
from pyvirtio.vm.served import SERVED_SLOT, align, entropy_stream, serve_command, vhost_user_args


def test_entropy_stream_is_the_models() -> None:
    """The stream the tests compare against is exactly what the Rng model serves, however it is cut."""
    src = EntropySource(42)
    assert entropy_stream(42, 10_000) == src.read(64) + src.read(5000) + src.read(4936)


def test_align_reports_gaps() -> None:
    """64-byte blocks found in order; a block another reader took shows as a gap; a foreign byte fails."""
    s = entropy_stream(1, 4096)
    assert align(s, s[128:1152]) is not None and align(s, s[128:1152]).gaps == ()  # type: ignore[union-attr]
    with_gap = s[0:256] + s[320:512]
    a = align(s, with_gap)
    assert a is not None and a.start == 0 and a.gaps == ((256, 64),) and a.skipped == 64
    bad = bytearray(s[0:256])
    bad[100] ^= 1
    assert align(s, bytes(bad)) is None
    assert align(s, b"") is None


def test_qemu_arguments(tmp_path: Path) -> None:
    """The vhost-user device sits on a shared memfd RAM backend, at its slot, after the harness's devices."""
    args = vhost_user_args(tmp_path / "s.sock")
    assert "memory-backend-memfd,id=vumem,size=512M,share=on" in args and "node,memdev=vumem" in args
    assert f"vhost-user-rng-pci,chardev=vuchr0,id=vurng0,addr={SERVED_SLOT:#x}" in args
    assets = GuestAssets(root=tmp_path, kernel=tmp_path / "k", initrd=tmp_path / "i", kernel_package="k",
                         kernel_package_version="1", kernel_release="r", busybox_version="b", modules=(),
                         frame_size=(640, 480), blk_pattern_md5="0", qemu=tmp_path / "qemu", qemu_version="7.2")
    files = BootFiles.for_boot(tmp_path, tmp_path, 1)
    argv = qemu_argv(assets, MachineType.PC, tmp_path / "d", files, extra=args)
    assert argv[-len(args):] == args
    assert qemu_argv(assets, MachineType.PC, tmp_path / "d", files) == argv[:-len(args)]


def test_serve_command(tmp_path: Path) -> None:
    """``pyvirtio serve`` with the socket, seed, --once, report and faults."""
    argv = serve_command("rng", tmp_path / "s", seed=3, report=tmp_path / "r.json", faults=("delay=1",))
    assert argv[3:] == ["serve", "rng", "--socket", str(tmp_path / "s"), "--seed", "3", "--once", "--report",
                        str(tmp_path / "r.json"), "--fault", "delay=1"]
