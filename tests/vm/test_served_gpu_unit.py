"""The served-gpu VM's pieces that need no VM: its QEMU command line (the built-in gpu replaced by
vhost-user-gpu-pci on the same bus, with the same id and No_Soft_Reset), the back-end command with the gpu's own
options."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtio.machine import MachineType
from pyvirtio.vm.provisioning import GuestAssets
from pyvirtio.vm.qemu import BootFiles, qemu_argv
from pyvirtio.vm.served import serve_command, served_gpu_argv
from pyvirtio.vm.stacks import QEMU10_LINUX612


def _assets(tmp_path: Path) -> GuestAssets:
    return GuestAssets(root=tmp_path, kernel=tmp_path / "k", initrd=tmp_path / "i", kernel_package="k",
                       kernel_package_version="1", kernel_release="r", busybox_version="b", modules=(),
                       frame_size=(1280, 800), blk_pattern_md5="0", qemu=tmp_path / "qemu", qemu_version="10.0",
                       stack=QEMU10_LINUX612.name)


@pytest.mark.parametrize("nsr", [False, True])
def test_the_builtin_gpu_is_replaced_in_place(tmp_path: Path, nsr: bool) -> None:
    files = BootFiles.for_boot(tmp_path, tmp_path, 1)
    argv = qemu_argv(_assets(tmp_path), MachineType.Q35, tmp_path / "d", files, nsr=nsr)
    out = served_gpu_argv(argv, tmp_path / "g.sock")
    gpu = [a for a in out if "gpu-pci" in a]
    want = "vhost-user-gpu-pci,chardev=vuchr0,id=gpu0,xres=1280,yres=800,bus=rp0"
    assert gpu == [want + (",x-pcie-pm-no-soft-reset=true" if nsr else "")]
    assert out.index(gpu[0]) == argv.index(next(a for a in argv if a.startswith("virtio-gpu-pci,")))
    assert out[-6:] == ["-object", "memory-backend-memfd,id=vumem,size=512M,share=on", "-numa", "node,memdev=vumem",
                        "-chardev", f"socket,id=vuchr0,path={tmp_path / 'g.sock'}"]
    with pytest.raises(ValueError):
        served_gpu_argv(out, tmp_path / "g.sock")  # no built-in gpu left to replace


def test_serve_gpu_command(tmp_path: Path) -> None:
    argv = serve_command("gpu", tmp_path / "s", faults=("error=RESOURCE_FLUSH",),
                         extra=["--dump-scanout", str(tmp_path / "m.png")])
    assert argv[3:] == ["serve", "gpu", "--socket", str(tmp_path / "s"), "--seed", "0", "--once", "--fault",
                        "error=RESOURCE_FLUSH", "--dump-scanout", str(tmp_path / "m.png")]
