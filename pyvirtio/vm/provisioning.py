"""Provision what the real VM needs: QEMU (Debian package), a Debian guest kernel and a busybox initramfs.

Everything but QEMU lands in a cache directory (default ``~/.cache/pyvirtio/vm``, env ``PYVIRTIO_VM_CACHE``).
A guest is built in a private temporary directory, stamped with the versions it was built from and renamed
into place as ``guest-<kernel release>-<layout>``; ``current`` is a symlink replaced atomically. Re-running is
a no-op when the stamp matches the kernel that ``linux-image-amd64`` currently depends on.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyvirtio.atomicio import loads_json, write_text_atomic
from pyvirtio.errors import UserInputError
from pyvirtio.vm import image
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import WANTED_MODULES, build_initramfs, parse_modules_dep, resolve_load_order
from pyvirtio.vm.stacks import DEFAULT_STACK, Stack, get_stack

#: Bump when the guest's layout or /init changes, so old caches are rebuilt.
LAYOUT_VERSION = 4
CACHE_ENV = "PYVIRTIO_VM_CACHE"
QEMU_BINARY = "qemu-system-x86_64"
QEMU_PACKAGE = "qemu-system-x86"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
APT_INSTALL_QEMU = f"apt-get install -y --no-install-recommends {QEMU_PACKAGE}"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_cache_dir() -> Path:
    """``$PYVIRTIO_VM_CACHE`` or ``~/.cache/pyvirtio/vm``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyvirtio" / "vm"


@dataclass(frozen=True)
class GuestAssets:
    """A provisioned guest: kernel, initramfs and the versions they came from."""

    root: Path
    kernel: Path
    initrd: Path
    kernel_package: str  # linux-image-6.1.0-56-amd64
    kernel_package_version: str  # 6.1.192-2
    kernel_release: str  # 6.1.0-56-amd64
    busybox_version: str
    modules: tuple[str, ...]  # basenames, load order
    frame_size: tuple[int, int]
    blk_pattern_md5: str
    qemu: Path
    qemu_version: str
    stack: str = DEFAULT_STACK
    #: Extra environment for QEMU (a private stack's ``QEMU_MODULE_DIR``), as (name, value) pairs.
    qemu_env: tuple[tuple[str, str], ...] = ()
    #: Extra QEMU arguments (a private stack's ``-L`` firmware paths).
    qemu_args: tuple[str, ...] = ()
    #: QEMU package version as apt knows it (private stacks), e.g. ``1:10.0.2+ds-2+deb13u1~bpo12+1``.
    qemu_package_version: str = ""
    #: Our virtio-gpu modules built for this kernel (:mod:`pyvirtio.vm.kmod`), as (name, initramfs carrying it)
    #: pairs: the name is the mechanism the module implements (``s4-replay``).
    gpu_modules: tuple[tuple[str, Path], ...] = ()

    def versions(self) -> dict[str, str]:
        """Versions for a report's ``meta`` (the stack's name included)."""
        out = {"stack": self.stack, "qemu": self.qemu_version,
               "kernel": f"{self.kernel_package} {self.kernel_package_version}",
               "kernel_release": self.kernel_release, "busybox": self.busybox_version}
        if self.qemu_package_version:
            out["qemu_package"] = self.qemu_package_version
        return out

    def initrd_for(self, gpu_module: str | None) -> Path:
        """The initramfs to boot: the stock one, or (``gpu_module``) the variant carrying that virtio-gpu module."""
        if gpu_module is None:
            return self.initrd
        found = dict(self.gpu_modules).get(gpu_module)
        if found is None:
            raise ProvisionError(f"stack {self.stack} has no virtio-gpu module {gpu_module!r} built (have: "
                                 f"{', '.join(dict(self.gpu_modules)) or 'none'}); run: pyvirtio vm provision "
                                 f"--stack {self.stack}")
        return found

    @property
    def stack_info(self) -> Stack:
        """The :class:`~pyvirtio.vm.stacks.Stack` these assets belong to."""
        return get_stack(self.stack)

    def env(self) -> dict[str, str]:
        """The environment QEMU runs with: this process's plus :attr:`qemu_env`."""
        return {**os.environ, **dict(self.qemu_env)}


def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 600,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=env, check=False)
    except FileNotFoundError:
        raise ProvisionError(f"{argv[0]} not found: this needs a Debian system with apt and dpkg") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None


def _last_line(cp: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (cp.stderr + "\n" + cp.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit status {cp.returncode}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def qemu_version(qemu: Path, env: dict[str, str] | None = None) -> str:
    """``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`` from ``qemu-system-x86_64 --version``."""
    cp = _run([str(qemu), "--version"], timeout=30, env=env)
    m = re.search(r"version\s+(.+)", cp.stdout)
    if cp.returncode != 0 or not m:
        raise ProvisionError(f"{qemu} --version failed: {_last_line(cp)}")
    return m.group(1).strip()


def find_qemu() -> Path | None:
    """The QEMU binary on PATH, if any."""
    found = shutil.which(QEMU_BINARY)
    return Path(found) if found else None


def ensure_qemu(*, install: bool = True, log: Log = _quiet) -> Path:
    """Find ``qemu-system-x86_64``; install the Debian package when missing (needs root)."""
    found = find_qemu()
    if found:
        return found
    how = f"install it with: sudo {APT_INSTALL_QEMU}"
    if not install:
        raise ProvisionError(f"{QEMU_BINARY} not found; {how} (or run: pyvirtio vm provision)")
    if not _is_root():
        raise ProvisionError(f"{QEMU_BINARY} not found and installing needs root; {how}")
    log(f"installing {QEMU_PACKAGE} with apt-get")
    cp = _run(APT_INSTALL_QEMU.split(), env=_apt_env())
    if cp.returncode != 0:
        log("apt-get install failed; running apt-get update and trying again")
        _run(["apt-get", "update"], env=_apt_env())
        cp = _run(APT_INSTALL_QEMU.split(), env=_apt_env())
    found = find_qemu()
    if cp.returncode != 0 or not found:
        raise ProvisionError(f"'{APT_INSTALL_QEMU}' failed ({_last_line(cp)}); {how}")
    return found


def resolve_kernel_package(*, allow_update: bool = True) -> str:
    """The ABI package ``linux-image-amd64`` depends on now, e.g. ``linux-image-6.1.0-56-amd64``."""
    for attempt in range(2):
        cp = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60)
        m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*)", cp.stdout)
        if cp.returncode == 0 and m:
            return m.group(1)
        if attempt == 0 and allow_update and _is_root():
            _run(["apt-get", "update"], env=_apt_env())
    raise ProvisionError(f"apt-cache does not know {KERNEL_META_PACKAGE}; run: sudo apt-get update")


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(packages: Sequence[str], into: Path) -> dict[str, Path]:
    cp = _run(["apt-get", "download", *packages], cwd=into)
    debs: dict[str, Path] = {}
    for deb in into.glob("*.deb"):
        debs[deb.name.split("_", 1)[0]] = deb
    missing = [p for p in packages if p not in debs]
    if cp.returncode != 0 or missing:
        raise ProvisionError(f"apt-get download {' '.join(missing or packages)} failed ({_last_line(cp)}); "
                             "check network access to the Debian archive and run: sudo apt-get update")
    return debs


def _deb_field(deb: Path, name: str) -> str:
    cp = _run(["dpkg-deb", "-f", str(deb), name], timeout=60)
    if cp.returncode != 0:
        raise ProvisionError(f"dpkg-deb -f {deb.name} failed: {_last_line(cp)}")
    return cp.stdout.strip()


def _extract(deb: Path, into: Path) -> None:
    cp = _run(["dpkg-deb", "-x", str(deb), str(into)])
    if cp.returncode != 0:
        raise ProvisionError(f"dpkg-deb -x {deb.name} failed: {_last_line(cp)}")


def _depmod(kroot: Path, release: str, busybox: Path) -> None:
    """Run ``depmod -b`` (kmod's, else busybox's applet) to write ``modules.dep``."""
    depmod = shutil.which("depmod")
    argv = [depmod] if depmod else [str(busybox), "depmod"]
    cp = _run([*argv, "-b", str(kroot), release], timeout=300)
    if cp.returncode != 0 or not (kroot / "lib/modules" / release / "modules.dep").is_file():
        raise ProvisionError(f"depmod -b failed: {_last_line(cp)}")


def _read_stamp(guest: Path) -> dict[str, object] | None:
    """The guest's stamp, or None when it is missing or not a bounded JSON object (the guest is rebuilt)."""
    try:
        data = loads_json((guest / "stamp.json").read_bytes(), f"stamp {guest / 'stamp.json'}")
    except (OSError, UserInputError):
        return None
    return data if isinstance(data, dict) else None


def _assets_from(guest: Path, qemu: Path, qver: str) -> GuestAssets | None:
    st = _read_stamp(guest)
    if not st or st.get("layout") != LAYOUT_VERSION:
        return None
    kernel, initrd = guest / "vmlinuz", guest / "initrd.img"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    try:
        frame = st["frame_size"]
        modules = st["modules"]
        if not (isinstance(frame, list) and len(frame) == 2 and isinstance(modules, list)):
            return None
        return GuestAssets(
            root=guest.resolve(), kernel=kernel.resolve(), initrd=initrd.resolve(),
            kernel_package=str(st["kernel_package"]), kernel_package_version=str(st["kernel_package_version"]),
            kernel_release=str(st["kernel_release"]), busybox_version=str(st["busybox_version"]),
            modules=tuple(str(m) for m in modules), frame_size=(int(frame[0]), int(frame[1])),
            blk_pattern_md5=str(st["blk_pattern_md5"]), qemu=qemu, qemu_version=qver)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _build_guest(cache: Path, kernel_pkg: str, log: Log) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        work = tmp / "work"
        work.mkdir()
        log(f"downloading {kernel_pkg} and {BUSYBOX_PACKAGE}")
        debs = _download([kernel_pkg, BUSYBOX_PACKAGE], work)
        kroot, bbroot = work / "kroot", work / "bb"
        _extract(debs[kernel_pkg], kroot)
        _extract(debs[BUSYBOX_PACKAGE], bbroot)
        releases = sorted(p.name for p in (kroot / "lib/modules").iterdir() if p.is_dir())
        if len(releases) != 1:
            raise ProvisionError(f"{kernel_pkg} holds {len(releases)} module trees, expected one")
        release = releases[0]
        busybox = bbroot / "bin/busybox"
        if not busybox.is_file():
            raise ProvisionError(f"{BUSYBOX_PACKAGE} has no bin/busybox")
        log(f"depmod -b for {release}")
        _depmod(kroot, release, busybox)
        mroot = kroot / "lib/modules" / release
        dep = parse_modules_dep((mroot / "modules.dep").read_text())
        order = resolve_load_order(dep, WANTED_MODULES)
        pattern = image.blk_pattern()
        frames = {f"data/frame-{k}.gz": gzip.compress(image.frame_to_xrgb8888(image.make_frame(k)), mtime=0)
                  for k in ("a", "b")}
        extra = {**frames, "data/blk-pattern.bin": pattern}
        guest = tmp / "guest"
        guest.mkdir()
        names = build_initramfs(guest / "initrd.img", busybox.read_bytes(), mroot, order, extra)
        shutil.copyfile(kroot / "boot" / f"vmlinuz-{release}", guest / "vmlinuz")
        shutil.copyfile(mroot / "modules.dep", guest / "modules.dep")
        stamp = {"layout": LAYOUT_VERSION, "kernel_package": kernel_pkg,
                 "kernel_package_version": _deb_field(debs[kernel_pkg], "Version"), "kernel_release": release,
                 "busybox_version": _deb_field(debs[BUSYBOX_PACKAGE], "Version"), "modules": names,
                 "frame_size": [image.FRAME_WIDTH, image.FRAME_HEIGHT],
                 "blk_pattern_md5": hashlib.md5(pattern).hexdigest()}
        write_text_atomic(guest / "stamp.json", json.dumps(stamp, indent=2) + "\n")
        final = cache / f"guest-{release}-l{LAYOUT_VERSION}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(guest, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _point_current(cache: Path, guest: Path) -> None:
    link = cache / "current"
    tmp = cache / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(guest.name)
    os.replace(tmp, link)


def load_assets(cache_dir: Path | None = None) -> GuestAssets:
    """The provisioned guest, without provisioning anything; a clear error when something is missing."""
    cache = cache_dir or default_cache_dir()
    qemu = ensure_qemu(install=False)
    assets = _assets_from(cache / "current", qemu, qemu_version(qemu))
    if assets is None:
        raise ProvisionError(f"no provisioned guest in {cache}; run: pyvirtio vm provision")
    return assets


def provision(cache_dir: Path | None = None, *, install_qemu: bool = True, refresh: bool = False,
              log: Log = _quiet) -> GuestAssets:
    """Make sure QEMU and a guest built from the current Debian kernel are there; idempotent.

    With ``refresh`` the guest is rebuilt even if its stamp matches. This is the default stack; any stack by
    name: :func:`pyvirtio.vm.private_stack.provision_stack`.
    """
    cache = (cache_dir or default_cache_dir()).expanduser()
    with _locked(cache):
        qemu = ensure_qemu(install=install_qemu, log=log)
        qver = qemu_version(qemu)
        current = _assets_from(cache / "current", qemu, qver)
        try:
            kernel_pkg = resolve_kernel_package()
        except ProvisionError:
            if current is not None and not refresh:
                log("apt-cache unavailable; keeping the provisioned guest")
                return current
            raise
        if current is not None and not refresh and current.kernel_package == kernel_pkg:
            log(f"guest up to date: {kernel_pkg}, {current.root}")
            return current
        guest = _build_guest(cache, kernel_pkg, log)
        _point_current(cache, guest)
        assets = _assets_from(cache / "current", qemu, qver)
        if assets is None:
            raise ProvisionError(f"freshly built guest in {guest} is unreadable")
        log(f"guest ready: {kernel_pkg}, {guest}")
        return assets
