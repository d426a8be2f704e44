"""Our virtio-gpu module for a private stack's guest kernel: ``guest/linux``'s patch applied to Debian's
``linux-source`` at the kernel's exact version, built out of tree against the matching headers, cached, and the
variant initramfs that carries it instead of the stock ``virtio_gpu.ko``.

Layout under ``<cache>/stacks/<stack>/kmod/``:

* ``src-<key>/`` — ``root/``: the kernel's headers (``linux-headers-<abi>-<flavour>``, ``-common``,
  ``linux-kbuild-<abi>``) unpacked; ``linux/``: only ``drivers/gpu/drm/virtio`` and ``scripts/checkpatch.pl`` of
  ``linux-source-<series>``, pristine. Key: kernel release and package version. Shared by every patch.
* ``m-<key>/`` — one built module: ``virtio-gpu.ko`` (debug info stripped), ``build.log``, ``checkpatch.txt``,
  ``initrd-<digest>.img`` (the stock initramfs of that digest with the module swapped in). Key: kernel release,
  package version, the patch's SHA-256 and :data:`KMOD_LAYOUT` (the build recipe).
* ``failed.log`` — the whole log of the last build that failed.

Every directory is made in a temporary one, stamped last and renamed into place; one without a stamp that matches
exactly what is wanted (release, version, patch digest) is rebuilt, never used, so a module built for another
kernel or another patch cannot be loaded.

Contract: every failure is a :class:`ModuleBuildError`, one line naming the step (``tools``, ``download``,
``extract``, ``headers``, ``fixup``, ``patch``, ``make``, ``check``), the file and the first error (the
compiler's, patch's, make's), with the log kept in ``failed.log``. :func:`provision_modules` builds what is
missing; :func:`load_modules` only looks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pyvirtio.atomicio import write_atomic, write_text_atomic
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import read_cpio, replace_files
from pyvirtio.vm.provisioning import GuestAssets, Log, _quiet, _read_stamp, _run

#: Bump when the build recipe (fix-ups, make flags, stripping) changes: every cached module is rebuilt.
KMOD_LAYOUT = 1
#: The virtio-gpu modules we build, by name (the mechanism they implement): the patch in ``guest/linux``.
GPU_MODULES: dict[str, str] = {"s4-replay": "virtio-gpu-s4-replay.patch"}
#: Where the patches live: ``guest/linux`` at the root of the source tree.
PATCH_DIR = Path(__file__).resolve().parents[2] / "guest" / "linux"
#: The module's name in the variant initramfs (the one it replaces).
INITRAMFS_MODULE = "lib/modules/virtio_gpu.ko"
MODULE_FILE = "virtio-gpu.ko"
MODULE_DIR = "drivers/gpu/drm/virtio"
#: Files of ``linux-source`` the build needs besides the driver (checkpatch and its data).
SOURCE_EXTRAS = ("scripts/checkpatch.pl", "scripts/spelling.txt", "scripts/const_structs.checkpatch")
#: Host tools the build runs (the kernel's compiler is read from the headers).
TOOLS = ("make", "patch", "objcopy", "tar", "dpkg-deb")
INSTALL_HINT = "apt-get install gcc-12 make patch binutils xz-utils"
#: ``make -j`` for the module build.
JOBS = 2

Download = Callable[[dict[str, str], Path], dict[str, Path]]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]

_CC_ERROR = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.+)$", re.M)
_LD_ERROR = re.compile(r"^(?:ERROR|error): (?P<msg>.+)$", re.M)
_MAKE_ERROR = re.compile(r"^make(?:\[\d+\])?: \*\*\* (?P<msg>.+)$", re.M)


class ModuleBuildError(ProvisionError):
    """Building the module failed: one line naming the step, the file and the first error."""

    def __init__(self, step: str, file: str, detail: str, log: Path | None = None, what: str = "virtio-gpu module"):
        self.step, self.file, self.detail, self.log = step, file, detail, log
        where = f" (log: {log})" if log else ""
        super().__init__(f"{what}: step {step}: {file}: {detail}{where}")


@dataclass(frozen=True)
class KernelSource:
    """The Debian kernel a module is built for: release ``6.12.117+deb12-amd64``, package version
    ``6.12.117-1~deb12u1``; the package names follow from them."""

    release: str
    version: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+\.\d+[^\s/]*-[a-z0-9]+", self.release) or not re.fullmatch(r"[^\s/=]+",
                                                                                             self.version):
            raise ProvisionError(f"kernel release {self.release!r} / version {self.version!r} is not a Debian "
                                 "kernel's (want e.g. 6.12.117+deb12-amd64 / 6.12.117-1~deb12u1)")

    @classmethod
    def of(cls, assets: GuestAssets) -> KernelSource:
        """The kernel of a provisioned stack."""
        return cls(assets.kernel_release, assets.kernel_package_version)

    @property
    def abi(self) -> str:
        """``6.12.117+deb12`` (the release without its flavour)."""
        return self.release.rsplit("-", 1)[0]

    @property
    def series(self) -> str:
        """``6.12``: which ``linux-source-<series>`` holds the source."""
        m = re.match(r"\d+\.\d+", self.release)
        assert m is not None  # checked in __post_init__
        return m.group(0)

    def packages(self) -> dict[str, str]:
        """Every package the build downloads, pinned to the kernel's version."""
        return {f"linux-headers-{self.release}": self.version, f"linux-headers-{self.abi}-common": self.version,
                f"linux-kbuild-{self.abi}": self.version, f"linux-source-{self.series}": self.version}

    def headers(self, root: Path) -> Path:
        """The headers tree to build against (``make -C``)."""
        return root / "usr/src" / f"linux-headers-{self.release}"


def patch_file(name: str) -> Path:
    """The patch of the module called ``name`` (one of :data:`GPU_MODULES`)."""
    if name not in GPU_MODULES:
        raise ProvisionError(f"unknown virtio-gpu module {name!r} (want one of {', '.join(GPU_MODULES)})")
    return PATCH_DIR / GPU_MODULES[name]


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def source_key(ks: KernelSource) -> str:
    """The source cache's directory name: kernel release and version."""
    return "src-" + _digest(KMOD_LAYOUT, ks.release, ks.version)


def module_key(ks: KernelSource, patch: bytes) -> str:
    """A built module's directory name: kernel release and version, the patch's digest, the recipe."""
    return "m-" + _digest(KMOD_LAYOUT, ks.release, ks.version, hashlib.sha256(patch).hexdigest())


# -- reading logs -------------------------------------------------------------------------------------------------


def first_compiler_error(log: str) -> tuple[str, str] | None:
    """(file, message) of the first error in a kbuild log: the compiler's ``file:line:col: error: msg`` (file as
    its base name, ``line N: msg``), else the linker's or modpost's ``ERROR: msg``, else make's ``*** msg``."""
    m = _CC_ERROR.search(log)
    if m:
        return Path(m.group("file")).name, f"line {m.group('line')}: {m.group('msg').strip()}"
    m = _LD_ERROR.search(log)
    if m:
        return ("modpost" if "modpost" in m.group("msg") else "ld"), m.group("msg").strip()
    m = _MAKE_ERROR.search(log)
    if m:
        target = re.search(r"\[([^\]\s]+)\]", m.group("msg"))
        return (Path(target.group(1)).name if target else "Makefile"), m.group("msg").strip()
    return None


def first_patch_error(output: str) -> tuple[str, str] | None:
    """(file, message) of the first thing ``patch`` could not do: a hunk that failed, a file it cannot find, a
    hunk already applied, a malformed patch."""
    current = "(patch)"
    for line in output.splitlines():
        m = re.match(r"(?:patching|checking) file (.+)$", line)
        if m:
            current = Path(m.group(1).strip().strip("'")).name
            continue
        if re.search(r"Hunk #\d+ FAILED|can't find file|Reversed \(or previously applied\)|malformed patch|"
                     r"Only garbage", line):
            return current, line.strip().rstrip(".")
    return None


def vermagic(ko: bytes) -> str | None:
    """The ``vermagic=`` entry of a module's ``.modinfo``."""
    m = re.search(rb"(?:^|\0)vermagic=([^\0]*)\0", ko)
    return m.group(1).decode(errors="replace").strip() if m else None


def _modinfo(ko: bytes, key: str) -> str | None:
    m = re.search(rb"(?:^|\0)" + key.encode() + rb"=([^\0]*)\0", ko)
    return m.group(1).decode(errors="replace") if m else None


# -- the build ----------------------------------------------------------------------------------------------------


@dataclass
class _Step:
    """Runs the build's commands, keeping one log; a failure names the step and the file."""

    log_path: Path
    what: str
    run: Runner = _run
    _log: list[str] | None = None

    def __post_init__(self) -> None:
        self._log = []

    def text(self) -> str:
        assert self._log is not None
        return "".join(self._log)

    def note(self, line: str) -> None:
        assert self._log is not None
        self._log.append(line.rstrip("\n") + "\n")

    def fail(self, step: str, file: str, detail: str) -> ModuleBuildError:
        self.note(f"FAILED: step {step}: {file}: {detail}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.log_path, self.text())
        return ModuleBuildError(step, file, detail, self.log_path, self.what)

    def cmd(self, step: str, file: str, argv: Sequence[str], *, cwd: Path | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        self.note(f"$ {' '.join(argv)}")
        try:
            cp = self.run(list(argv), cwd=cwd, timeout=timeout)
        except ProvisionError as e:  # the tool is missing or hung
            raise self.fail(step, file, str(e)) from None
        self.note(cp.stdout + cp.stderr)
        return cp


def _tools(step: _Step, headers: Path) -> None:
    """Every host tool the build runs, and the compiler the kernel was built with (``.kernelvariables``)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    try:
        kvars = (headers / ".kernelvariables").read_text()
    except OSError:
        kvars = ""
    cross = re.search(r"CROSS_COMPILE\s*=\s*(\S+)", kvars)
    gcc = re.search(r"\b(gcc-\d+)\b", kvars)
    if gcc:
        cc = (cross.group(1) if cross else "") + gcc.group(1)
        if shutil.which(cc) is None:
            missing.append(cc)
    if missing:
        raise step.fail("tools", missing[0], f"not found (the kernel was built with {gcc.group(1) if gcc else 'gcc'})"
                        f"; install: {INSTALL_HINT}")


def _fixup(step: _Step, path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in ``path`` (the build environment's fix-ups); it must be there."""
    try:
        text = path.read_text()
    except OSError as e:
        raise step.fail("fixup", path.name, f"cannot read: {e.strerror}") from None
    if old not in text:
        raise step.fail("fixup", path.name, f"expected {old.strip()!r}, not found")
    path.write_text(text.replace(old, new, 1))
    step.note(f"fixup {path.name}: {old.strip()!r} -> {new.strip()!r}")


def _stamp_matches(d: Path, want: dict[str, object]) -> dict[str, object] | None:
    st = _read_stamp(d)
    if not st or any(st.get(k) != v for k, v in want.items()):
        return None
    return st


@dataclass
class _Tmp:
    """A temporary directory in ``parent``, renamed to ``final`` by :meth:`commit`, else removed."""

    parent: Path
    path: Path | None = None

    def __enter__(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".build-", dir=self.parent))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, src: Path, final: Path) -> None:
        if final.exists():
            shutil.rmtree(final)
        os.rename(src, final)


def prepare_source(kdir: Path, ks: KernelSource, download: Download, *, log: Log = _quiet,
                   run: Runner = _run) -> Path:
    """The headers and the pristine driver source for ``ks`` (``src-<key>``), downloaded and unpacked if they
    are not cached yet."""
    key = source_key(ks)
    final = kdir / key
    want: dict[str, object] = {"kmod_layout": KMOD_LAYOUT, "release": ks.release, "version": ks.version}
    if _stamp_matches(final, want):
        return final
    if final.exists():
        log(f"kmod: {final} is incomplete (no valid stamp); unpacking again")
    step = _Step(kdir / "failed.log", f"virtio-gpu module sources for {ks.release}", run)
    tmp = _Tmp(kdir)
    with tmp as t:
        log(f"kmod: downloading {', '.join(f'{p}={v}' for p, v in ks.packages().items())}")
        try:
            debs = download(ks.packages(), t / "debs")
        except ProvisionError as e:
            raise step.fail("download", " ".join(ks.packages()), str(e)) from None
        root, linux = t / "src" / "root", t / "src" / "linux"
        root.mkdir(parents=True)
        linux.mkdir()
        for name in ks.packages():
            if not name.startswith("linux-source-"):
                cp = step.cmd("extract", debs[name].name, ["dpkg-deb", "-x", str(debs[name]), str(root)])
                if cp.returncode != 0:
                    raise step.fail("extract", debs[name].name, _last(cp))
        _extract_source(step, debs[f"linux-source-{ks.series}"], t, linux)
        headers = ks.headers(root)
        rel_file = headers / "include/config/kernel.release"
        try:
            rel = rel_file.read_text().strip()
        except OSError:
            raise step.fail("headers", str(rel_file.relative_to(root)), "missing") from None
        if rel != ks.release:
            raise step.fail("headers", str(rel_file.relative_to(root)),
                            f"the headers are for {rel}, the kernel is {ks.release}")
        # The headers' Makefile includes the common part by its installed path; point it at ours (where it will be).
        _fixup(step, headers / "Makefile", f"include /usr/src/linux-headers-{ks.abi}-common/Makefile",
               f"include {final.resolve() / 'root/usr/src' / f'linux-headers-{ks.abi}-common' / 'Makefile'}")
        shutil.rmtree(t / "debs", ignore_errors=True)
        write_text_atomic(t / "src" / "stamp.json", json.dumps(want, indent=2) + "\n")
        tmp.commit(t / "src", final)
    return final


def _last(cp: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (cp.stderr + "\n" + cp.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit status {cp.returncode}"


def _extract_source(step: _Step, deb: Path, tmp: Path, linux: Path) -> None:
    """Only the driver and checkpatch out of ``linux-source-<series>.tar.xz`` (xz: the whole tarball is read)."""
    unpacked = tmp / "source-deb"
    cp = step.cmd("extract", deb.name, ["dpkg-deb", "-x", str(deb), str(unpacked)])
    if cp.returncode != 0:
        raise step.fail("extract", deb.name, _last(cp))
    tars = sorted((unpacked / "usr/src").glob("linux-source-*.tar.xz"))
    if len(tars) != 1:
        raise step.fail("extract", deb.name, f"holds {len(tars)} linux-source tarballs, expected one")
    top = tars[0].name[: -len(".tar.xz")]
    cp = step.cmd("extract", tars[0].name, ["tar", "-xJf", str(tars[0]), "-C", str(linux), "--strip-components=1",
                                            "--wildcards", f"{top}/{MODULE_DIR}/*",
                                            *(f"{top}/{x}" for x in SOURCE_EXTRAS)])
    if cp.returncode != 0 or not (linux / MODULE_DIR / "Makefile").is_file():
        raise step.fail("extract", tars[0].name, _last(cp))
    shutil.rmtree(unpacked, ignore_errors=True)


def build_module(kdir: Path, src: Path, ks: KernelSource, name: str, patch: bytes, stock: bytes, *,
                 log: Log = _quiet, run: Runner = _run) -> Path:
    """Apply the patch to a copy of the pristine driver, build it against the headers, check it against the stock
    module (same ``vermagic``, same name), strip its debug info; returns the cached ``m-<key>`` directory."""
    key = module_key(ks, patch)
    step = _Step(kdir / "failed.log", f"virtio-gpu module {name} for {ks.release}", run)
    headers = ks.headers(src / "root")
    _tools(step, headers)
    tmp = _Tmp(kdir)
    with tmp as t:
        out = t / "module"
        out.mkdir()
        tree = t / "tree"
        shutil.copytree(src / "linux" / MODULE_DIR, tree / MODULE_DIR)
        patch_path = t / GPU_MODULES.get(name, "module.patch")
        patch_path.write_bytes(patch)
        log(f"kmod: applying {patch_path.name} to {MODULE_DIR} of linux-source-{ks.series} {ks.version}")
        cp = step.cmd("patch", patch_path.name, ["patch", "-p1", "--batch", "--forward", "-d", str(tree), "-i",
                                                 str(patch_path)])
        if cp.returncode != 0:
            found = first_patch_error(cp.stdout + cp.stderr)
            raise step.fail("patch", *(found or (patch_path.name, _last(cp))))
        checkpatch = _checkpatch(step, src, patch_path)
        mdir = tree / MODULE_DIR
        # The trace header names its own directory relative to the kernel tree; out of tree it is ".".
        _fixup(step, mdir / "virtgpu_trace.h", "#define TRACE_INCLUDE_PATH ../../drivers/gpu/drm/virtio",
               "#define TRACE_INCLUDE_PATH .")
        with open(mdir / "Makefile", "a") as f:
            f.write("CFLAGS_virtgpu_trace_points.o := -I$(src)\n")
        log(f"kmod: make -C {headers.name} M=... modules (-j{JOBS})")
        # No pahole here: no BTF for the module (it is optional; the kernel loads it without).
        cp = step.cmd("make", MODULE_FILE, ["make", "-C", str(headers), f"M={mdir}", f"-j{JOBS}",
                                            "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"])
        built = mdir / MODULE_FILE
        if cp.returncode != 0 or not built.is_file():
            found = first_compiler_error(cp.stdout + cp.stderr)
            raise step.fail("make", *(found or (MODULE_FILE, _last(cp))))
        ko = built.read_bytes()
        want_magic, got_magic = vermagic(stock), vermagic(ko)
        if got_magic != want_magic:
            raise step.fail("check", MODULE_FILE, f"vermagic {got_magic!r} is not the kernel's {want_magic!r}")
        if _modinfo(ko, "name") != "virtio_gpu":
            raise step.fail("check", MODULE_FILE, f"module name {_modinfo(ko, 'name')!r}, expected 'virtio_gpu'")
        cp = step.cmd("check", MODULE_FILE, ["objcopy", "--strip-debug", str(built), str(out / MODULE_FILE)])
        if cp.returncode != 0:
            raise step.fail("check", MODULE_FILE, _last(cp))
        write_text_atomic(out / "build.log", step.text())
        write_text_atomic(out / "checkpatch.txt", checkpatch + "\n")
        stamp = {"kmod_layout": KMOD_LAYOUT, "name": name, "release": ks.release, "version": ks.version,
                 "patch_sha256": hashlib.sha256(patch).hexdigest(), "vermagic": got_magic,
                 "checkpatch": checkpatch.splitlines()[-1] if checkpatch else ""}
        write_text_atomic(out / "stamp.json", json.dumps(stamp, indent=2) + "\n")  # last: the build is whole
        tmp.commit(out, kdir / key)
    return kdir / key


def _checkpatch(step: _Step, src: Path, patch: Path) -> str:
    """``scripts/checkpatch.pl`` of the kernel source on the patch (kernel style; the commit-level checks that do
    not apply out of tree are off). Its summary line, or why it did not run; never fails the build."""
    script = src / "linux/scripts/checkpatch.pl"
    if shutil.which("perl") is None or not script.is_file():
        return "checkpatch not run (no perl or no scripts/checkpatch.pl)"
    cp = step.cmd("checkpatch", patch.name, ["perl", str(script), "--no-tree", "--strict", "--no-signoff",
                                             "--ignore", "FILE_PATH_CHANGES", "--no-color", str(patch)],
                  cwd=src / "linux", timeout=300)
    lines = [ln for ln in (cp.stdout + cp.stderr).splitlines() if ln.strip()]
    summary = next((ln for ln in lines if ln.startswith("total:")), "checkpatch: no summary")
    issues = [ln for ln in lines if ln.startswith(("ERROR:", "WARNING:", "CHECK:"))]
    return "\n".join([*issues, summary])


# -- the variant initramfs and the cache, as the stack sees it ----------------------------------------------------


def _stock_module(initrd: bytes) -> bytes:
    try:
        raw = gzip.decompress(initrd)
    except (OSError, EOFError) as e:
        raise ProvisionError(f"stock initramfs is not gzip-compressed: {e}") from None
    for entry in read_cpio(raw):
        if entry.name == INITRAMFS_MODULE:
            return entry.data
    raise ProvisionError(f"stock initramfs has no {INITRAMFS_MODULE}")


def variant_name(stock: bytes) -> str:
    """The variant initramfs's file name in a module directory: it depends on the stock initramfs too."""
    return f"initrd-{hashlib.sha256(stock).hexdigest()[:16]}.img"


def _valid_module(kdir: Path, ks: KernelSource, name: str, patch: bytes) -> Path | None:
    d = kdir / module_key(ks, patch)
    want: dict[str, object] = {"kmod_layout": KMOD_LAYOUT, "name": name, "release": ks.release,
                               "version": ks.version, "patch_sha256": hashlib.sha256(patch).hexdigest()}
    if _stamp_matches(d, want) and (d / MODULE_FILE).is_file():
        return d
    return None


def _patches(log: Log) -> Iterator[tuple[str, bytes]]:
    for name in GPU_MODULES:
        try:
            yield name, patch_file(name).read_bytes()
        except OSError:
            log(f"kmod: {patch_file(name)} not found (the patches ship with the source tree): no {name} module")


def load_modules(kdir: Path, assets: GuestAssets, *, log: Log = _quiet) -> GuestAssets:
    """``assets`` with :attr:`~GuestAssets.gpu_modules` set to every module already built for this kernel and
    this patch whose variant initramfs of this stock initramfs exists; builds nothing."""
    ks = KernelSource.of(assets)
    stock = assets.initrd.read_bytes()
    found: list[tuple[str, Path]] = []
    for name, patch in _patches(log):
        d = _valid_module(kdir, ks, name, patch)
        if d is not None and (d / variant_name(stock)).is_file():
            found.append((name, (d / variant_name(stock)).resolve()))
    return replace(assets, gpu_modules=tuple(found))


def provision_modules(kdir: Path, assets: GuestAssets, download: Download, *, log: Log = _quiet,
                      run: Runner = _run) -> GuestAssets:
    """Make sure every module of :data:`GPU_MODULES` is built for ``assets``' kernel and its patch, with a variant
    of ``assets``' initramfs carrying it; returns ``assets`` with :attr:`~GuestAssets.gpu_modules` set."""
    ks = KernelSource.of(assets)
    stock = assets.initrd.read_bytes()
    found: list[tuple[str, Path]] = []
    for name, patch in _patches(log):
        d = _valid_module(kdir, ks, name, patch)
        if d is None:
            if (kdir / module_key(ks, patch)).exists():
                log(f"kmod: {kdir / module_key(ks, patch)} is incomplete (no valid stamp); building again")
            src = prepare_source(kdir, ks, download, log=log, run=run)
            d = build_module(kdir, src, ks, name, patch, _stock_module(stock), log=log, run=run)
            log(f"kmod: {name} built ({d})")
        else:
            log(f"kmod: {name} up to date ({d})")
        variant = d / variant_name(stock)
        if not variant.is_file():
            write_atomic(variant, replace_files(stock, {INITRAMFS_MODULE: (d / MODULE_FILE).read_bytes()}))
        found.append((name, variant.resolve()))
    return replace(assets, gpu_modules=tuple(found))
