"""Named stacks without QEMU: choosing a stack, the private stack's module gathering and version resolution,
a half-provisioned cache, failure messages, the trace mapping by QOM type and the guest's PM capability."""

from __future__ import annotations

import lzma
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.machine import MachineType
from pyvirtio.vm import private_stack, statustrace
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.private_stack import PrivateApt, gather_modules, load_private, modinfo_depends, provision_private
from pyvirtio.vm.qemu import gpu_device
from pyvirtio.vm.scenario import cell_name, describe_pmcsr, parse_pm_capability
from pyvirtio.vm.stacks import DEFAULT_STACK, QEMU10_LINUX612, STACK_NAMES, SYSTEM, get_stack


def test_stacks_by_name_default_first() -> None:
    assert STACK_NAMES == ("qemu7.2-linux6.1", "qemu10.0-linux6.12") and STACK_NAMES[0] == DEFAULT_STACK
    assert get_stack("qemu10.0-linux6.12") is QEMU10_LINUX612
    with pytest.raises(UserInputError) as e:
        get_stack("qemu9")
    assert "qemu7.2-linux6.1" in str(e.value) and "\n" not in str(e.value)


def test_cell_names_keep_the_default_stack_unchanged() -> None:
    assert cell_name("S3", "q35") == "S3-q35"
    assert cell_name("S3", "q35", QEMU10_LINUX612.name, True) == "S3-q35-qemu10.0-linux6.12-nsr"


class _Assets:
    def __init__(self, stack: Any) -> None:
        self.stack, self.stack_info, self.frame_size = stack.name, stack, (64, 48)


def test_gpu_behind_a_root_port_only_on_the_pcie_stack() -> None:
    a: Any = _Assets(QEMU10_LINUX612)
    args = gpu_device(a, MachineType.Q35, True)
    assert args[1].startswith("pcie-root-port,id=rp0,bus=pcie.0")
    assert args[3].endswith(",bus=rp0,x-pcie-pm-no-soft-reset=true")
    assert "no-soft-reset" not in gpu_device(a, MachineType.Q35, False)[3]
    with pytest.raises(ValueError, match="q35 only"):
        gpu_device(a, MachineType.PC, False)
    s: Any = _Assets(SYSTEM)
    assert gpu_device(s, MachineType.PC, False) == ["-device", "virtio-gpu-pci,id=gpu0,xres=64,yres=48"]
    with pytest.raises(ValueError, match=r"9\.1"):
        gpu_device(s, MachineType.Q35, True)


def _config(pmcsr: int, *, loop: bool = False) -> bytes:
    c = bytearray(256)
    c[0x06] = 0x10
    c[0x34] = 0x40
    c[0x40:0x42] = bytes([0x11, 0x7C])  # MSI-X, next 0x7c
    c[0x7C:0x82] = bytes([0x01, 0x40 if loop else 0x00, 0x03, 0x00, pmcsr & 0xFF, pmcsr >> 8])
    if loop:
        c[0x7C] = 0x05
    return bytes(c)


def test_pm_capability_as_the_guest_reads_it() -> None:
    """PCI PM 1.2 §3.2.4: PMCSR bit 3 is No_Soft_Reset; the capability is found by walking the list."""
    assert parse_pm_capability(_config(0x0008)) == (0x7C, 0x0003, 0x0008)
    assert "No_Soft_Reset, D0" in describe_pmcsr(parse_pm_capability(_config(0x0008)))
    assert "no No_Soft_Reset, D3" in describe_pmcsr(parse_pm_capability(_config(0x0003)))
    assert parse_pm_capability(_config(0, loop=True)) is None  # a looping list ends the walk
    assert parse_pm_capability(b"") is None and describe_pmcsr(None) == "no PM capability"


def test_trace_mapped_by_qom_type_overrides_probe_order() -> None:
    log = ("resettable_phase_hold_exec obj=0x10(virtio-blk-device) method=1\n"
           "resettable_phase_hold_exec obj=0x20(virtio-gpu-device) method=1\n"
           "resettable_phase_hold_exec obj=0x30(pcie-root-port) method=1\n"
           "virtio_set_status vdev 0x20 val 15\n"
           "virtio_gpu_cmd_get_edid scanout 0\n"  # would vote 0x20 gpu anyway
           "virtio_set_status vdev 0x10 val 15\n"
           "virtio_gpu_cmd_get_display_info \n")  # probe-order evidence pointing at the wrong device
    recs = statustrace.parse_trace(log)
    assert statustrace.identify_devices(recs, ("gpu", "blk")) == {"0x20": "gpu", "0x10": "blk"}


def _elf_with_depends(deps: str) -> bytes:
    return b"\x7fELF" + b"\0" * 16 + b"license=GPL\0" + f"depends={deps}\0".encode() + b"vermagic=6.12\0"


def test_modinfo_depends() -> None:
    assert modinfo_depends(_elf_with_depends("drm,drm-kms-helper")) == ["drm", "drm_kms_helper"]
    assert modinfo_depends(_elf_with_depends("")) == []
    assert modinfo_depends(b"nothing here") == []


def test_gather_modules_decompresses_skips_builtins_and_orders(tmp_path: Path) -> None:
    mroot = tmp_path / "lib/modules/6.12"
    kdir = mroot / "kernel/drivers"
    kdir.mkdir(parents=True)
    (mroot / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio.ko\n")
    mods = {"virtio_gpu": "drm,virtio_dma_buf", "drm": "", "virtio_dma_buf": "", "virtio_blk": "",
            "virtio_input": "", "virtio_rng": "", "evdev": ""}
    for name, deps in mods.items():
        (kdir / f"{name}.ko.xz").write_bytes(lzma.compress(_elf_with_depends(deps)))
    out = tmp_path / "out"
    order = gather_modules(mroot, out)
    assert order.index("drm.ko") < order.index("virtio_gpu.ko")
    assert order.index("virtio_dma_buf.ko") < order.index("virtio_gpu.ko")
    assert "virtio_pci.ko" not in order and len(order) == len(mods)
    assert (out / "virtio_gpu.ko").read_bytes().startswith(b"\x7fELF")  # decompressed
    (kdir / "evdev.ko.xz").unlink()
    with pytest.raises(ProvisionError, match="evdev"):
        gather_modules(mroot, tmp_path / "out2")


MADISON = ("qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main "
           "amd64 Packages\n"
           "qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n")


def _fake_run(answers: dict[str, tuple[int, str]]) -> Any:
    def run(argv: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        for key, (rc, text) in answers.items():
            if key in argv:
                return subprocess.CompletedProcess(list(argv), rc, text, "" if rc == 0 else text)
        return subprocess.CompletedProcess(list(argv), 100, "", "E: unexpected")
    return run


def test_versions_resolved_from_madison_not_hard_coded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(private_stack, "_run", _fake_run({"madison": (0, MADISON)}))
    apt = PrivateApt(tmp_path / "apt", QEMU10_LINUX612)
    assert apt.version_in("qemu-system-x86", "bookworm-backports", "10.0") == "1:10.0.2+ds-2+deb13u1~bpo12+1"
    assert apt.version_in("qemu-system-x86", "bookworm") == "1:7.2+dfsg-7+deb12u18+b3"
    with pytest.raises(ProvisionError) as e:
        apt.version_in("qemu-system-x86", "bookworm-backports", "11.0")
    msg = str(e.value)
    assert "stack qemu10.0-linux6.12" in msg and "package qemu-system-x86" in msg and "pyvirtio vm provision" in msg
    assert "-o" in apt.options() and f"Dir::State::Lists={tmp_path / 'apt' / 'lists'}" in apt.options()


def test_no_network_is_one_line_naming_stack_and_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(private_stack, "_run", _fake_run({"update": (100, "E: Could not resolve deb.debian.org")}))
    with pytest.raises(ProvisionError) as e:
        provision_private(tmp_path, QEMU10_LINUX612)
    msg = str(e.value)
    assert msg.startswith("stack qemu10.0-linux6.12: package ") and "Could not resolve" in msg and "\n" not in msg


def test_half_provisioned_cache_is_never_used(tmp_path: Path) -> None:
    """A build directory whose stamp was never written (the stamp is written last) does not load."""
    sdir = tmp_path / "stacks" / QEMU10_LINUX612.name
    build = sdir / "b-0"
    (build / "root/usr/bin").mkdir(parents=True)
    for f in ("vmlinuz", "initrd.img", "root/usr/bin/qemu-system-x86_64"):
        (build / f).write_bytes(b"x")
    (sdir / "current").symlink_to("b-0")
    with pytest.raises(ProvisionError, match=r"--stack qemu10\.0-linux6\.12"):
        load_private(tmp_path, QEMU10_LINUX612)
    (build / "stamp.json").write_text('{"layout": 1')  # cut off mid-write
    with pytest.raises(ProvisionError):
        load_private(tmp_path, QEMU10_LINUX612)


def test_compare_runs_every_cell_with_a_real_counterpart() -> None:
    from pyvirtio.cli.compare import wanted_cells
    from pyvirtio.report import SleepState

    cells = wanted_cells((SYSTEM.name, QEMU10_LINUX612.name), (SleepState.S3,), ("pc", "q35"))
    assert cells == [(SYSTEM.name, "baseline", SleepState.S3, "pc", False),
                     (SYSTEM.name, "baseline", SleepState.S3, "q35", False),
                     (QEMU10_LINUX612.name, "baseline", SleepState.S3, "q35", False),
                     (QEMU10_LINUX612.name, "no-soft-reset", SleepState.S3, "q35", False)]
    assert wanted_cells((QEMU10_LINUX612.name,), (SleepState.S3,), ("pc",)) == []
    # virtio-rng behind its own port: only the no-soft-reset cells of a stack with ports
    assert wanted_cells((SYSTEM.name, QEMU10_LINUX612.name), (SleepState.S2IDLE,), ("q35",), rng_port=True) == [
        (QEMU10_LINUX612.name, "no-soft-reset", SleepState.S2IDLE, "q35", True)]


def test_model_is_configured_like_each_real_vm() -> None:
    """On the second stack the gpu sits behind a root port in every cell (NSR only in no-soft-reset ones) and
    virtio-rng on pcie.0 unless the cell put it behind its own port: the model's cell says the same."""
    from pyvirtio.cli.compare import model_for
    from pyvirtio.report import SleepState

    q10 = QEMU10_LINUX612.name
    want = {
        (SYSTEM.name, "baseline", False): {"gpu": "pcie.0", "rng": "pcie.0"},
        (q10, "baseline", False): {"gpu": "root-port", "rng": "pcie.0"},
        (q10, "no-soft-reset", False): {"gpu": "root-port, No_Soft_Reset", "rng": "pcie.0"},
        (q10, "no-soft-reset", True): {"gpu": "root-port, No_Soft_Reset", "rng": "root-port, No_Soft_Reset"},
    }
    for (stack, profile, rp), placement in want.items():
        assert model_for((stack, profile, SleepState.S3, "q35", rp)).placement == placement
