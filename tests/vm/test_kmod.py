"""Building our virtio-gpu module, without building it: cache keys, the one-line failure of every step (with the
log kept), a stale or half-built cache never used, the variant initramfs. The commands are faked."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.vm import kmod
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import CpioWriter, read_cpio
from pyvirtio.vm.kmod import KernelSource, ModuleBuildError
from pyvirtio.vm.provisioning import GuestAssets

REL, VER = "6.12.117+deb12-amd64", "6.12.117-1~deb12u1"
KS = KernelSource(REL, VER)
MAGIC = b"vermagic=6.12.117+deb12-amd64 SMP preempt mod_unload modversions \0"
STOCK_KO = b"\x7fELF stock\0name=virtio_gpu\0" + MAGIC
GOOD_KO = b"\x7fELF ours\0name=virtio_gpu\0" + MAGIC
PATCH = b"--- a/drivers/gpu/drm/virtio/virtgpu_drv.c\n+++ b/drivers/gpu/drm/virtio/virtgpu_drv.c\n"


def test_kernel_source_names_the_packages_of_exactly_that_kernel() -> None:
    assert (KS.abi, KS.series) == ("6.12.117+deb12", "6.12")
    assert KS.packages() == {"linux-headers-6.12.117+deb12-amd64": VER, "linux-headers-6.12.117+deb12-common": VER,
                             "linux-kbuild-6.12.117+deb12": VER, "linux-source-6.12": VER}
    for rel, ver in (("", VER), ("6.12.117", VER), ("6.12.117+deb12-amd64", "a b"), ("../x-amd64", VER)):
        with pytest.raises(ProvisionError):
            KernelSource(rel, ver)


def test_cache_keys_cover_the_kernel_and_the_patch() -> None:
    key = kmod.module_key(KS, PATCH)
    assert key == kmod.module_key(KernelSource(REL, VER), PATCH)
    assert key != kmod.module_key(KS, PATCH + b" ")
    assert key != kmod.module_key(KernelSource(REL, "6.12.117-1~deb12u2"), PATCH)
    assert key != kmod.module_key(KernelSource("6.12.117+deb12-cloud-amd64", VER), PATCH)
    assert kmod.source_key(KS) == kmod.source_key(KernelSource(REL, VER)) != kmod.source_key(
        KernelSource(REL, "6.12.118-1"))


def test_first_compiler_error() -> None:
    log = ("  CC [M]  /x/virtgpu_kms.o\n/tmp/b/drivers/gpu/drm/virtio/virtgpu_pm.c: In function 'f':\n"
           "/tmp/b/drivers/gpu/drm/virtio/virtgpu_pm.c:42:9: error: 'vgdev' undeclared (first use in this function)\n"
           "/tmp/b/drivers/gpu/drm/virtio/virtgpu_pm.c:50:1: error: second\nmake[2]: *** [x] Error 1\n")
    assert kmod.first_compiler_error(log) == ("virtgpu_pm.c", "line 42: 'vgdev' undeclared (first use in this "
                                              "function)")
    assert kmod.first_compiler_error("a.c:1:2: fatal error: drm/x.h: No such file or directory\n") == (
        "a.c", "line 1: drm/x.h: No such file or directory")
    assert kmod.first_compiler_error("ERROR: modpost: \"foo\" [/x/virtio-gpu.ko] undefined!\n") == (
        "modpost", "modpost: \"foo\" [/x/virtio-gpu.ko] undefined!")
    found = kmod.first_compiler_error("make[1]: *** No rule to make target '/h/Makefile'.  Stop.\n")
    assert found is not None and found[0] == "Makefile"
    assert kmod.first_compiler_error("  LD [M]  virtio-gpu.ko\n") is None


def test_first_patch_error() -> None:
    out = ("patching file drivers/gpu/drm/virtio/Makefile\npatching file drivers/gpu/drm/virtio/virtgpu_drv.c\n"
           "Hunk #2 FAILED at 120.\n1 out of 3 hunks FAILED -- saving rejects to file virtgpu_drv.c.rej\n")
    assert kmod.first_patch_error(out) == ("virtgpu_drv.c", "Hunk #2 FAILED at 120")
    found = kmod.first_patch_error("patching file virtgpu_vq.c\nReversed (or previously applied) patch detected! "
                                   "Skipping patch.\n")
    assert found is not None and found[0] == "virtgpu_vq.c"
    assert kmod.first_patch_error("patch: **** malformed patch at line 7: x\n") == (
        "(patch)", "patch: **** malformed patch at line 7: x")
    assert kmod.first_patch_error("patching file a.c\n") is None


def test_vermagic() -> None:
    assert kmod.vermagic(GOOD_KO) == "6.12.117+deb12-amd64 SMP preempt mod_unload modversions"
    assert kmod.vermagic(b"\x7fELF") is None


# -- the build, with every command faked --------------------------------------------------------------------------


class FakeTools:
    """Plays dpkg-deb, tar, patch, make, objcopy and perl; each can be told to fail."""

    def __init__(self, *, release: str = REL, patch_out: str = "", make_log: str = "", ko: bytes = GOOD_KO) -> None:
        self.release, self.patch_out, self.make_log, self.ko = release, patch_out, make_log, ko
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], *, cwd: Path | None = None,
                 timeout: float = 0) -> subprocess.CompletedProcess[str]:
        tool = argv[0]
        self.calls.append(tool)
        rc, out = 0, ""
        if tool == "dpkg-deb":
            deb, dest = Path(argv[2]), Path(argv[3])
            if deb.name.startswith("linux-source"):
                (dest / "usr/src").mkdir(parents=True)
                (dest / "usr/src/linux-source-6.12.tar.xz").write_bytes(b"xz")
            elif "-amd64" in deb.name:
                h = dest / f"usr/src/linux-headers-{REL}"
                (h / "include/config").mkdir(parents=True)
                (h / "include/config/kernel.release").write_text(self.release + "\n")
                (h / "Makefile").write_text(f"include /usr/src/linux-headers-{KS.abi}-common/Makefile\n")
                (h / ".kernelvariables").write_text("override CROSS_COMPILE = x86_64-linux-gnu-\nCC = gcc-12\n")
        elif tool == "tar":
            d = Path(argv[argv.index("-C") + 1]) / kmod.MODULE_DIR
            d.mkdir(parents=True)
            (d / "Makefile").write_text("obj-m += virtio-gpu.o\n")
            (d / "virtgpu_trace.h").write_text("#define TRACE_INCLUDE_PATH ../../drivers/gpu/drm/virtio\n")
            (d.parents[3] / "scripts").mkdir()
            (d.parents[3] / "scripts/checkpatch.pl").write_text("#!/usr/bin/perl\n")
        elif tool == "patch":
            rc, out = (1, self.patch_out) if self.patch_out else (0, "patching file virtgpu_drv.c\n")
        elif tool == "make":
            if self.make_log:
                rc, out = 2, self.make_log
            else:
                mdir = Path(next(a for a in argv if a.startswith("M="))[2:])
                (mdir / kmod.MODULE_FILE).write_bytes(self.ko)
        elif tool == "objcopy":
            Path(argv[-1]).write_bytes(Path(argv[-2]).read_bytes())
        elif tool == "perl":
            out = "total: 0 errors, 0 warnings, 0 checks, 9 lines checked\n"
        return subprocess.CompletedProcess(list(argv), rc, out, "")


def _download(pins: dict[str, str], into: Path) -> dict[str, Path]:
    into.mkdir(parents=True, exist_ok=True)
    out = {}
    for p, v in pins.items():
        (into / f"{p}_{v}_amd64.deb").write_bytes(b"deb")
        out[p] = into / f"{p}_{v}_amd64.deb"
    return out


@pytest.fixture
def tools_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")


def _initrd(ko: bytes) -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("lib")
    w.directory("lib/modules")
    w.file("lib/modules/drm.ko", b"drm")
    w.file(kmod.INITRAMFS_MODULE, ko)
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.trailer()
    return gzip.compress(buf.getvalue(), mtime=0)


def _assets(tmp: Path) -> GuestAssets:
    initrd = tmp / "initrd.img"
    initrd.write_bytes(_initrd(STOCK_KO))
    return GuestAssets(root=tmp, kernel=tmp / "vmlinuz", initrd=initrd, kernel_package=f"linux-image-{REL}",
                       kernel_package_version=VER, kernel_release=REL, busybox_version="1", modules=(),
                       frame_size=(1280, 800), blk_pattern_md5="0" * 32, qemu=tmp / "qemu", qemu_version="10.0",
                       stack="qemu10.0-linux6.12")


@pytest.fixture
def patches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "patches"
    d.mkdir()
    (d / kmod.GPU_MODULES["s4-replay"]).write_bytes(PATCH)
    monkeypatch.setattr(kmod, "PATCH_DIR", d)
    return d


@pytest.mark.usefixtures("tools_present")
def test_build_then_cached_then_rebuilt_for_another_patch(tmp_path: Path, patches: Path) -> None:
    kdir, assets = tmp_path / "kmod", _assets(tmp_path)
    assert kmod.load_modules(kdir, assets).gpu_modules == ()  # nothing built: nothing loaded, nothing built
    tools = FakeTools()
    got = kmod.provision_modules(kdir, assets, _download, run=tools)
    (name, initrd), = got.gpu_modules
    assert name == "s4-replay" and got.initrd_for("s4-replay") == initrd and got.initrd_for(None) == assets.initrd
    assert initrd.parent.name == kmod.module_key(KS, PATCH)
    entries = {e.name: e.data for e in read_cpio(gzip.decompress(initrd.read_bytes()))}
    assert entries[kmod.INITRAMFS_MODULE] == GOOD_KO and entries["lib/modules/drm.ko"] == b"drm"
    stamp = json.loads((initrd.parent / "stamp.json").read_text())
    assert stamp["release"] == REL and stamp["checkpatch"].startswith("total: 0 errors")
    headers = (kdir / kmod.source_key(KS) / f"root/usr/src/linux-headers-{REL}/Makefile").read_text()
    assert str(kdir / kmod.source_key(KS)) in headers  # pointed at the private copy
    # cached: nothing runs again, load finds it
    again = FakeTools()
    assert kmod.provision_modules(kdir, assets, _download, run=again).gpu_modules == got.gpu_modules
    assert again.calls == [] and kmod.load_modules(kdir, assets).gpu_modules == got.gpu_modules
    # another patch: another key, built again from the cached sources (no download, no unpacking)
    (patches / kmod.GPU_MODULES["s4-replay"]).write_bytes(PATCH + b"+x\n")
    assert kmod.load_modules(kdir, assets).gpu_modules == ()  # the old module is never used for the new patch
    third = FakeTools()
    (_, initrd3), = kmod.provision_modules(kdir, assets, _download, run=third).gpu_modules
    assert initrd3.parent.name == kmod.module_key(KS, PATCH + b"+x\n") != initrd.parent.name
    assert "dpkg-deb" not in third.calls and "make" in third.calls


@pytest.mark.usefixtures("tools_present")
def test_half_built_or_stale_module_is_rebuilt(tmp_path: Path, patches: Path) -> None:
    kdir, assets = tmp_path / "kmod", _assets(tmp_path)
    kmod.provision_modules(kdir, assets, _download, run=FakeTools())
    mdir = kdir / kmod.module_key(KS, PATCH)
    (mdir / "stamp.json").unlink()  # half-built: no stamp
    assert kmod.load_modules(kdir, assets).gpu_modules == ()
    tools = FakeTools()
    kmod.provision_modules(kdir, assets, _download, run=tools)
    assert "make" in tools.calls and (mdir / "stamp.json").is_file()
    # a directory of the right name whose stamp says another kernel: never used
    stamp = json.loads((mdir / "stamp.json").read_text())
    (mdir / "stamp.json").write_text(json.dumps({**stamp, "version": "6.12.116-1"}))
    assert kmod.load_modules(kdir, assets).gpu_modules == ()
    # the sources: a directory without its stamp is unpacked again
    (kdir / kmod.source_key(KS) / "stamp.json").unlink()
    tools = FakeTools()
    kmod.provision_modules(kdir, assets, _download, run=tools)
    assert "dpkg-deb" in tools.calls


def _fails(tmp_path: Path, tools: FakeTools) -> ModuleBuildError:
    with pytest.raises(ModuleBuildError) as e:
        kmod.provision_modules(tmp_path / "kmod", _assets(tmp_path), _download, run=tools)
    err = e.value
    assert isinstance(err, UserInputError) and "\n" not in str(err)
    assert err.log is not None and err.log.is_file() and f"FAILED: step {err.step}" in err.log.read_text()
    assert not (tmp_path / "kmod" / kmod.module_key(KS, PATCH)).exists()  # nothing half-built is left to use
    return err


@pytest.mark.usefixtures("tools_present", "patches")
def test_headers_for_another_kernel(tmp_path: Path) -> None:
    err = _fails(tmp_path, FakeTools(release="6.12.116+deb12-amd64"))
    assert (err.step, err.file) == ("headers", f"usr/src/linux-headers-{REL}/include/config/kernel.release")
    assert "6.12.116+deb12-amd64" in err.detail and REL in err.detail


@pytest.mark.usefixtures("tools_present", "patches")
def test_patch_that_does_not_apply(tmp_path: Path) -> None:
    err = _fails(tmp_path, FakeTools(patch_out="patching file drivers/gpu/drm/virtio/virtgpu_drv.c\n"
                                               "Hunk #1 FAILED at 97.\n"))
    assert (err.step, err.file, err.detail) == ("patch", "virtgpu_drv.c", "Hunk #1 FAILED at 97")
    assert str(err).startswith(f"virtio-gpu module s4-replay for {REL}: step patch: virtgpu_drv.c: Hunk #1 FAILED")


@pytest.mark.usefixtures("tools_present", "patches")
def test_compiler_error(tmp_path: Path) -> None:
    err = _fails(tmp_path, FakeTools(make_log="x/virtgpu_pm.c:7:3: error: unknown type name 'foo'\n"
                                              "make[3]: *** [virtgpu_pm.o] Error 1\n"))
    assert (err.step, err.file, err.detail) == ("make", "virtgpu_pm.c", "line 7: unknown type name 'foo'")
    assert "unknown type name 'foo'" in err.log.read_text() if err.log else False


@pytest.mark.usefixtures("tools_present", "patches")
def test_module_for_another_kernel_is_refused(tmp_path: Path) -> None:
    err = _fails(tmp_path, FakeTools(ko=GOOD_KO.replace(b"mod_unload", b"mod_UNload")))
    assert (err.step, err.file) == ("check", kmod.MODULE_FILE) and "vermagic" in err.detail


@pytest.mark.usefixtures("patches")
def test_missing_compiler_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None if "gcc" in name else f"/usr/bin/{name}")
    err = _fails(tmp_path, FakeTools())
    assert (err.step, err.file) == ("tools", "x86_64-linux-gnu-gcc-12") and "apt-get install gcc-12" in err.detail


def test_download_failure(tmp_path: Path, patches: Path) -> None:
    def offline(pins: dict[str, str], into: Path) -> dict[str, Path]:
        raise ProvisionError("apt-get download failed (Temporary failure resolving 'deb.debian.org')")

    with pytest.raises(ModuleBuildError) as e:
        kmod.provision_modules(tmp_path / "kmod", _assets(tmp_path), offline, run=FakeTools())
    assert e.value.step == "download" and "Temporary failure resolving" in str(e.value)


def test_no_patch_no_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmod, "PATCH_DIR", tmp_path / "nowhere")
    said: list[str] = []
    assert kmod.provision_modules(tmp_path / "kmod", _assets(tmp_path), _download, run=FakeTools(),
                                  log=said.append).gpu_modules == ()
    assert any("not found" in s for s in said)
    with pytest.raises(ProvisionError, match=r"has no virtio-gpu module 's4-replay' built.*pyvirtio vm provision"):
        _assets(tmp_path).initrd_for("s4-replay")
