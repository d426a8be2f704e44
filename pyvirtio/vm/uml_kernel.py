"""Provision the User-Mode Linux stack: Debian's ``linux-source-6.12`` built as a UML binary, and its initramfs.

Layout under ``<cache>/stacks/<stack>/``: ``apt/`` (the private apt configuration, as the QEMU 10 stack's),
``src/`` (the source tarball of each resolved version, kept for later builds), ``kernels/<variant>-<key>/``
(``linux``, ``config``, ``build.log``, ``stamp.json``), ``guests/g-<key>/`` (``initrd.img``, ``stamp.json``),
``logs/`` (the log of every failed build), ``tree/t-<key>/`` (the kept build tree: ``src/``, ``out/``) and the
symlinks ``current-<variant>`` and ``current-guest``.

Contract:

* the kernel's key digests the source version, the configuration (:data:`UML_CONFIG`, applied on top of
  ``defconfig`` and checked option by option after ``olddefconfig``) and the variant's patches
  (:class:`KernelVariant`: a name and patch files, digested by content) — a patched kernel (issue 15) is one
  more variant, built beside the stock one and never replacing it;
* the version is the second QEMU stack's kernel: the version of the ABI package ``linux-image-6.12-amd64``
  depends on, from ``bookworm-security``; ``linux-source-6.12`` must exist at exactly that version;
* every variant is built in one kept tree per source version, configuration and build fixes: the first build
  unpacks, configures and builds it whole (the stock kernel); a variant then applies its patches to it, builds
  incrementally (only what the patches touch and what depends on it is compiled: about a minute instead of
  several) and puts every touched file back with a new modification time, whatever happens; ``applied.json``
  records what a variant touched before it is patched, so a build that was killed is undone by the next one;
* a finished kernel is assembled in a temporary directory beside the cache entry; its stamp is written last, then
  it is renamed into place, so an entry without a readable stamp is a half-built leftover that is removed and
  rebuilt (a tree without its stamp likewise);
* host tools (``make``, ``gcc``, ``flex``, ``bison``, ``bc``) are installed with apt when missing (root), else
  the error names the command to run;
* every failure is one line naming the step; a failed build keeps its whole log under ``logs/`` and names it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.vm import uml_guest
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import CpioWriter
from pyvirtio.vm.private_stack import PrivateApt
from pyvirtio.vm.provisioning import (
    BUSYBOX_PACKAGE,
    Log,
    _extract,
    _is_root,
    _last_line,
    _locked,
    _quiet,
    _read_stamp,
    _run,
    default_cache_dir,
)
from pyvirtio.vm.stacks import UML_LINUX612, Stack, get_uml_stack

#: Bump when the layout of a kernel or guest entry changes.
UML_LAYOUT = 1
SOURCE_PACKAGE = "linux-source-6.12"
#: The virtio device id the kernel's PCI-over-virtio driver binds (there is no official one; the default -1
#: disables the driver). The harness passes it in ``virtio_uml.device=<socket>:<id>``.
PCI_OVER_VIRTIO_DEVICE_ID = 1234
#: The kernel configuration on top of ``make ARCH=um defconfig``: option -> value (``y``, ``n`` or a number).
UML_CONFIG: tuple[tuple[str, str], ...] = (
    ("VIRTIO_UML", "y"), ("UML_PCI_OVER_VIRTIO", "y"),
    ("UML_PCI_OVER_VIRTIO_DEVICE_ID", str(PCI_OVER_VIRTIO_DEVICE_ID)),
    ("PCI", "y"), ("VIRTIO_MENU", "y"), ("VIRTIO", "y"), ("VIRTIO_PCI", "y"),
    ("VIRTIO_PCI_LEGACY", "n"),  # UML forwards no I/O-port BARs: legacy virtio cannot work
    ("HW_RANDOM", "y"), ("HW_RANDOM_VIRTIO", "y"),
    ("UML_RANDOM", "n"),  # the host's /dev/random as a second hwrng: not deterministic, and not pyvirtio's
    ("DRM", "y"), ("DRM_VIRTIO_GPU", "y"), ("DRM_FBDEV_EMULATION", "y"), ("FB", "y"), ("FB_DEVICE", "y"),
    ("PM", "y"), ("PM_SLEEP", "y"), ("SUSPEND", "y"), ("PM_DEBUG", "y"), ("PM_SLEEP_DEBUG", "y"),
    ("BLK_DEV_INITRD", "y"), ("DEVTMPFS", "y"), ("DEVTMPFS_MOUNT", "y"), ("HOSTFS", "y"),
    ("UML_TIME_TRAVEL_SUPPORT", "y"), ("UML_RTC", "y"), ("RTC_CLASS", "y"), ("PRINTK_TIME", "y"),
    ("UML_NET", "n"),  # nothing here uses the network; less to build
    ("DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "n"), ("DEBUG_INFO_DWARF4", "n"), ("DEBUG_INFO_DWARF5", "n"),
    ("DEBUG_INFO_NONE", "y"),
)
#: Patches every build gets, before a variant's own (files next to this module, applied with ``patch -p1``):
#: ``host-xstate.patch`` lets Linux 6.12's UML run on hosts whose xstate is larger than the 2696 bytes it keeps
#: per task (AMX: 11008): ptrace only takes NT_X86_XSTATE at the host's full size, so without it every user
#: process dies at its first context switch ("ptrace set fp regs failed, errno = 14").
BUILD_FIXES: tuple[Path, ...] = (Path(__file__).parent / "uml_patches" / "host-xstate.patch",)
HOST_TOOLS: tuple[tuple[str, str], ...] = (("make", "make"), ("gcc", "gcc"), ("flex", "flex"), ("bison", "bison"),
                                           ("bc", "bc"), ("xz", "xz-utils"), ("patch", "patch"))
APT_INSTALL_TOOLS = "apt-get install -y --no-install-recommends"
BUILD_TIMEOUT = 4 * 3600.0


@dataclass(frozen=True)
class KernelVariant:
    """A kernel build: ``stock`` (no patches) or a name with patch files applied in order (``patch -p1``)."""

    name: str = "stock"
    patches: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,39}", self.name):
            raise ProvisionError(f"kernel variant name {self.name[:60]!r}: want lower-case letters, digits, . + -")

    def all_patches(self) -> tuple[Path, ...]:
        """The build fixes, then the variant's own patches: what is applied, in order."""
        return (*BUILD_FIXES, *self.patches)

    def patch_digest(self) -> str:
        """A digest of the contents of :meth:`all_patches`, in order; an unreadable patch is one line."""
        h = hashlib.sha256()
        for p in self.all_patches():
            try:
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
            except OSError as e:
                raise ProvisionError(f"kernel patch {p}: {e.strerror or e}") from None
        return h.hexdigest()[:16]


STOCK = KernelVariant()
#: Where our kernel patches live: ``guest/linux`` at the root of the source tree.
PATCH_DIR = Path(__file__).resolve().parents[2] / "guest" / "linux"
#: The kernels of the proposals pyvirtio runs for real (issue 15), each one patch of ours on top of the stock
#: tree: the virtio 1.4 SUSPEND bit (virtio core + virtio_pci), the 2023 ``freeze_mode`` field (virtio_pci) and
#: the 2023 virtio-gpu FREEZING command (virtio-gpu).
PROPOSAL_VARIANTS: dict[str, KernelVariant] = {
    "suspend": KernelVariant("suspend", (PATCH_DIR / "virtio-suspend.patch",)),
    # the freeze-mode profile's gpu needs .freeze/.restore (6.12 has none): the FREEZING patch's, with bit 5 not
    # offered by the device, are plain hooks
    "freeze-mode": KernelVariant("freeze-mode", (PATCH_DIR / "virtio-gpu-freezing.patch",
                                                 PATCH_DIR / "virtio-pci-freeze-mode.patch")),
    "freezing": KernelVariant("freezing", (PATCH_DIR / "virtio-gpu-freezing.patch",)),
}


@dataclass(frozen=True)
class UmlAssets:
    """A provisioned UML stack: the kernel binary, the initramfs and where they came from."""

    stack: str
    variant: str
    kernel: Path
    initrd: Path
    source_version: str  # linux-source-6.12 apt version, e.g. 6.12.117-1~deb12u1
    kernel_release: str  # from the build, e.g. 6.12.117
    config_digest: str
    patch_digest: str
    busybox_version: str
    build_seconds: float
    kernel_dir: Path
    guest_dir: Path
    extras: dict[str, str] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        """Versions for a report's ``meta``."""
        out = {"stack": self.stack, "variant": self.variant, "kernel": f"{SOURCE_PACKAGE} {self.source_version}",
               "kernel_release": self.kernel_release, "config": self.config_digest, "busybox": self.busybox_version}
        if self.patch_digest:
            out["patches"] = self.patch_digest
        return out


def config_digest() -> str:
    """A digest of :data:`UML_CONFIG` (with the layout version)."""
    return hashlib.sha256(json.dumps([UML_LAYOUT, UML_CONFIG]).encode()).hexdigest()[:16]


def kernel_key(source_version: str, variant: KernelVariant) -> str:
    """The kernel entry's directory name."""
    text = json.dumps([source_version, config_digest(), variant.name, variant.patch_digest()])
    return f"{variant.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def guest_key(busybox_version: str) -> str:
    """The initramfs entry's directory name."""
    text = json.dumps([UML_LAYOUT, busybox_version, uml_guest.inputs_digest()])
    return "g-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# -- host tools ---------------------------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    """The Debian packages of the host tools not on PATH (and ``libc6-dev`` when ``gcc -static`` has no libc)."""
    missing = [pkg for tool, pkg in HOST_TOOLS if shutil.which(tool) is None]
    if not Path("/usr/lib/x86_64-linux-gnu/libc.a").is_file() and shutil.which("dpkg") is not None:
        missing.append("libc6-dev")
    return missing


def ensure_tools(log: Log = _quiet) -> None:
    """Install the missing host tools with apt (root); a one-line error naming the command otherwise."""
    missing = missing_tools()
    if not missing:
        return
    cmd = f"{APT_INSTALL_TOOLS} {' '.join(missing)}"
    if not _is_root():
        raise ProvisionError(f"building the UML kernel needs {', '.join(missing)}; install with: sudo {cmd}")
    log(f"installing host tools: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cp = _run(cmd.split(), env=env, timeout=1200)
    if cp.returncode != 0:
        _run(["apt-get", "update"], env=env, timeout=600)
        cp = _run(cmd.split(), env=env, timeout=1200)
    if cp.returncode != 0 or missing_tools():
        raise ProvisionError(f"'{cmd}' failed ({_last_line(cp)}); install the tools and run: pyvirtio vm provision "
                             f"--stack {UML_LINUX612.name}")


# -- resolving ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UmlResolved:
    """Versions resolved for one provisioning."""

    source_version: str
    busybox_version: str


def resolve(apt: PrivateApt, stack: Stack) -> UmlResolved:
    """The kernel version of the second QEMU stack (its ABI package from ``stack.kernel_suite``) and the
    ``linux-source`` package at exactly that version; busybox from bookworm."""
    kpkg = apt.depends(stack.kernel_meta_package)
    version = apt.version_in(kpkg, stack.kernel_suite)
    if not any(v == version for v, _ in apt.madison(SOURCE_PACKAGE)):
        raise apt.fail(SOURCE_PACKAGE, f"version {version} (the kernel of {kpkg}) is not known to apt")
    return UmlResolved(source_version=version, busybox_version=apt.version_in(BUSYBOX_PACKAGE, "bookworm"))


# -- building -----------------------------------------------------------------------------------------------------


class BuildLog:
    """Every command of a build and its output, in one file; a failing step becomes one line naming it."""

    def __init__(self, path: Path, stack: str, keep_dir: Path) -> None:
        self.path = path
        self.stack = stack
        self.keep_dir = keep_dir
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by close())

    def close(self) -> None:
        """Close the log file."""
        self._f.close()

    def run(self, step: str, argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 3600.0,
            env: dict[str, str] | None = None) -> None:
        """Run ``argv``, appending its output; a failure raises one :class:`ProvisionError` line."""
        self._f.write(f"\n### {step}: {' '.join(argv)}\n")
        self._f.flush()
        try:
            cp = subprocess.run(list(argv), cwd=cwd, stdout=self._f, stderr=subprocess.STDOUT, timeout=timeout,
                                env=env, check=False)
        except FileNotFoundError:
            raise self.fail(step, f"{argv[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise self.fail(step, f"did not finish within {timeout:.0f} s") from None
        if cp.returncode != 0:
            raise self.fail(step, f"exit status {cp.returncode}")

    def note(self, text: str) -> None:
        """Append a line."""
        self._f.write(text.rstrip("\n") + "\n")
        self._f.flush()

    def fail(self, step: str, why: str) -> ProvisionError:
        """The one-line error of a failed step; the log is copied under ``logs/`` first."""
        self._f.flush()
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        kept = self.keep_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.path.parent.name}.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(self.path, kept)
        last = ""
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.path.read_text(errors="replace").splitlines() if ln.strip()]
            last = f": {lines[-1].strip()[:160]}" if lines else ""
        return ProvisionError(f"stack {self.stack}: UML kernel build failed at step '{step}' ({why}){last}; "
                              f"log: {kept}")


def read_config(path: Path) -> dict[str, str]:
    """A kernel ``.config`` as option -> value (``n`` for ``# CONFIG_X is not set``)."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = re.fullmatch(r"CONFIG_([A-Za-z0-9_]+)=(.*)", line)
        if m:
            out[m.group(1)] = m.group(2).strip('"')
            continue
        m = re.fullmatch(r"# CONFIG_([A-Za-z0-9_]+) is not set", line)
        if m:
            out[m.group(1)] = "n"
    return out


def check_config(have: dict[str, str], want: Sequence[tuple[str, str]] = UML_CONFIG) -> list[str]:
    """The options of ``want`` whose value did not stick (a missing option counts as ``n``)."""
    return [f"{k}={v} (got {have.get(k, 'n')})" for k, v in want if have.get(k, "n") != v]


def _source_tarball(sdir: Path, apt: PrivateApt, version: str, log: Log) -> Path:
    """The source tarball of ``version``, downloaded once and kept under ``src/``."""
    src = sdir / "src"
    tar = src / f"{SOURCE_PACKAGE}_{version.replace(':', '_')}.tar.xz"
    if tar.is_file():
        return tar
    src.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=src))
    try:
        log(f"downloading {SOURCE_PACKAGE}={version}")
        debs = apt.download({SOURCE_PACKAGE: version}, tmp / "debs")
        _extract(debs[SOURCE_PACKAGE], tmp / "x")
        found = sorted((tmp / "x/usr/src").glob("linux-source-*.tar.xz"))
        if len(found) != 1:
            raise apt.fail(SOURCE_PACKAGE, f"holds {len(found)} source tarballs, expected one")
        os.replace(found[0], tar)
        return tar
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def patched_files(patch: Path) -> tuple[list[str], list[str]]:
    """The files a unified diff (``patch -p1``) changes or creates, and those it deletes, as paths inside the
    tree; a path that is absolute or leaves the tree is an error (a patch file is user input)."""
    try:
        text = patch.read_text(errors="replace")
    except OSError as e:
        raise ProvisionError(f"kernel patch {patch}: {e.strerror or e}") from None
    changed: list[str] = []
    deleted: list[str] = []
    old: str | None = None
    for line in text.splitlines():
        if line.startswith("--- "):
            old = line[4:].split("\t")[0].strip()
        elif line.startswith("+++ ") and old is not None:
            new = line[4:].split("\t")[0].strip()
            target, into = (old, deleted) if new == "/dev/null" else (new, changed)
            parts = Path(target).parts[1:]  # -p1
            if not parts or target.startswith("/") or ".." in parts:
                raise ProvisionError(f"kernel patch {patch.name}: bad path {target[:80]!r}")
            rel = "/".join(parts)
            if rel not in changed and rel not in deleted:
                into.append(rel)
            old = None
    if not changed and not deleted:
        raise ProvisionError(f"kernel patch {patch.name}: no file header (--- / +++) found")
    return changed, deleted


def tree_key(source_version: str) -> str:
    """The build tree's directory name: source version, configuration and the build fixes (not a variant's
    patches: every variant is built in the same tree)."""
    text = json.dumps([UML_LAYOUT, source_version, config_digest(), KernelVariant("tree").patch_digest()])
    return "t-" + hashlib.sha256(text.encode()).hexdigest()[:16]


#: Inside a build tree: the source with the build fixes, the build output, the stamp written when the first whole
#: build finished, and — while a variant's patches are applied — the list of what they touched and its backup.
_TREE_SRC, _TREE_OUT, _TREE_STAMP, _TREE_APPLIED, _TREE_BACKUP = "src", "out", "stamp.json", "applied.json", "backup"


def _touch(path: Path) -> None:
    now = time.time()
    os.utime(path, (now, now))


def _restore_tree(tree: Path) -> None:
    """Undo the variant patches recorded in ``applied.json`` (a build that ended, or one that was interrupted):
    every touched file gets its saved content back with a new modification time, so that ``make`` rebuilds what
    depends on it; files the patches created are removed."""
    applied = tree / _TREE_APPLIED
    if not applied.is_file():
        return
    rec = json.loads(applied.read_text())
    src, backup = tree / _TREE_SRC, tree / _TREE_BACKUP
    for rel in rec.get("saved", []):
        shutil.copyfile(backup / rel, src / rel)
        _touch(src / rel)
    for rel in rec.get("created", []):
        with contextlib.suppress(FileNotFoundError):
            (src / rel).unlink()
    shutil.rmtree(backup, ignore_errors=True)
    applied.unlink()


def _ensure_tree(sdir: Path, tarball: Path, r: UmlResolved, stack: Stack, blog: BuildLog, log: Log) -> Path:
    """The kept build tree for this source version and configuration: unpacked, fixed, configured and built once
    (the stock kernel), at its final path (kbuild records absolute paths: a tree that moved would rebuild from
    scratch). A tree without its stamp is a leftover and is made again."""
    tree = sdir / "tree" / tree_key(r.source_version)
    if (_read_stamp(tree) or {}).get("kind") == "tree":
        _restore_tree(tree)
        return tree
    if tree.exists():
        log(f"{stack.name}: {tree} has no stamp (an interrupted build); making it again")
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    work = tree / "unpack"
    work.mkdir()
    log(f"{stack.name}: unpacking {tarball.name}")
    blog.run("unpack", ["tar", "-xJf", str(tarball), "-C", str(work)], timeout=1800)
    trees = [p for p in work.iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise blog.fail("unpack", f"{len(trees)} top-level directories in the tarball, expected one")
    os.rename(trees[0], tree / _TREE_SRC)
    work.rmdir()
    src, out = tree / _TREE_SRC, tree / _TREE_OUT
    for p in BUILD_FIXES:
        blog.run(f"patch {p.name}", ["patch", "-p1", "--batch", "--forward", "-i", str(p.resolve())], cwd=src,
                 timeout=600)
    make = ["make", "-C", str(src), f"O={out}", "ARCH=um"]
    blog.run("defconfig", [*make, "defconfig"], timeout=600)
    cfg_args: list[str] = []
    for opt, val in UML_CONFIG:
        cfg_args += (["-e", opt] if val == "y" else ["-d", opt] if val == "n" else ["--set-val", opt, val])
    blog.run("configure", [str(src / "scripts/config"), "--file", str(out / ".config"), *cfg_args])
    blog.run("olddefconfig", [*make, "olddefconfig"], timeout=600)
    bad = check_config(read_config(out / ".config"))
    if bad:
        raise blog.fail("configure", f"options did not stick: {', '.join(bad)}")
    jobs = _jobs()
    log(f"{stack.name}: building the UML kernel with {jobs} jobs (nice; several minutes, once per version)")
    blog.run("build", ["nice", "-n", "10", *make, f"-j{jobs}", "linux"], timeout=BUILD_TIMEOUT)
    write_text_atomic(tree / _TREE_STAMP, json.dumps({"kind": "tree", "source_version": r.source_version,
                                                       "config_digest": config_digest()}, indent=2) + "\n")
    return tree


def _build_in_tree(tree: Path, variant: KernelVariant, stack: Stack, blog: BuildLog, log: Log) -> Path:
    """Apply ``variant``'s own patches to the kept tree, build incrementally (only what they touch, and what
    depends on it, is compiled), and put the tree's source back as it was, whatever happens; the binary."""
    src, out, backup = tree / _TREE_SRC, tree / _TREE_OUT, tree / _TREE_BACKUP
    _restore_tree(tree)
    saved: list[str] = []
    created: list[str] = []
    for p in variant.patches:
        changed, deleted = patched_files(Path(p))
        for rel in (*changed, *deleted):
            if rel in saved or rel in created:
                continue
            (saved if (src / rel).is_file() else created).append(rel)
    for rel in saved:
        (backup / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, backup / rel)
    write_text_atomic(tree / _TREE_APPLIED, json.dumps({"variant": variant.name, "saved": saved,
                                                         "created": created}, indent=2) + "\n")
    try:
        for p in variant.patches:
            blog.run(f"patch {Path(p).name}", ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch",
                                                "--reject-file=-", "-i", str(Path(p).resolve())], cwd=src, timeout=600)
        for rel in saved + created:  # a new mtime even when a hunk leaves a file's size alone
            if (src / rel).is_file():
                _touch(src / rel)
        make = ["make", "-C", str(src), f"O={out}", "ARCH=um"]
        jobs = _jobs()
        what = f"{variant.name} ({len(saved) + len(created)} patched files)" if variant.patches else variant.name
        log(f"{stack.name}: building the UML kernel {what} in the kept tree with {jobs} jobs")
        blog.run("build", ["nice", "-n", "10", *make, f"-j{jobs}", "linux"], timeout=BUILD_TIMEOUT)
        binary = out / "linux"
        if not binary.is_file():
            raise blog.fail("build", "no linux binary was produced")
        kept = tree / f"linux-{variant.name}"
        shutil.copyfile(binary, kept)
        return kept
    finally:
        _restore_tree(tree)


def build_kernel(sdir: Path, key: str, tarball: Path, r: UmlResolved, variant: KernelVariant, stack: Stack,
                 log: Log) -> Path:
    """Build ``variant`` in the kept build tree (made, and the stock kernel built, the first time: ``nice``, all
    cores; a variant afterwards recompiles only what its patches touch); the finished entry's directory."""
    kernels = sdir / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=kernels))
    blog = BuildLog(tmp / "build.log", stack.name, sdir / "logs")
    t0 = time.monotonic()
    try:
        had_tree = (_read_stamp(sdir / "tree" / tree_key(r.source_version)) or {}).get("kind") == "tree"
        tree = _ensure_tree(sdir, tarball, r, stack, blog, log)
        binary = _build_in_tree(tree, variant, stack, blog, log)
        out = tree / _TREE_OUT
        release = (out / "include/config/kernel.release").read_text().strip() \
            if (out / "include/config/kernel.release").is_file() else ""
        entry = tmp / "entry"
        entry.mkdir()
        os.replace(binary, entry / "linux")
        os.chmod(entry / "linux", 0o755)
        shutil.copyfile(out / ".config", entry / "config")
        seconds = round(time.monotonic() - t0, 1)
        blog.note(f"### done in {seconds} s")
        blog.close()
        shutil.copyfile(tmp / "build.log", entry / "build.log")
        stamp = {"layout": UML_LAYOUT, "stack": stack.name, "kind": "kernel", "key": key, "variant": variant.name,
                 "patches": [Path(p).name for p in variant.all_patches()], "patch_digest": variant.patch_digest(),
                 "source_version": r.source_version, "kernel_release": release, "config_digest": config_digest(),
                 "build_seconds": seconds, "jobs": _jobs(), "tree": tree.name, "incremental": had_tree}
        write_text_atomic(entry / "stamp.json", json.dumps(stamp, indent=2) + "\n")  # last: the entry is whole
        final = kernels / key
        if final.exists():
            shutil.rmtree(final)
        os.rename(entry, final)
        log(f"{stack.name}: kernel {variant.name} built in {seconds:.0f} s ({final})")
        return final
    finally:
        with contextlib.suppress(Exception):
            blog.close()
        shutil.rmtree(tmp, ignore_errors=True)


def build_guest(sdir: Path, key: str, apt: PrivateApt, r: UmlResolved, stack: Stack, log: Log) -> Path:
    """The initramfs: busybox-static, ``/init`` and ``pvfb`` (compiled here with ``gcc -static``)."""
    guests = sdir / "guests"
    guests.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=guests))
    try:
        log(f"{stack.name}: building the initramfs (busybox {r.busybox_version}, pvfb)")
        debs = apt.download({BUSYBOX_PACKAGE: r.busybox_version}, tmp / "debs")
        _extract(debs[BUSYBOX_PACKAGE], tmp / "bb")
        busybox = tmp / "bb/bin/busybox"
        if not busybox.is_file():
            raise apt.fail(BUSYBOX_PACKAGE, "has no bin/busybox")
        pvfb = tmp / "pvfb"
        cp = uml_guest.compile_helper(uml_guest.PVFB_SOURCE, pvfb)
        if cp.returncode != 0:
            (sdir / "logs").mkdir(parents=True, exist_ok=True)
            kept = sdir / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-pvfb.log"
            kept.write_text(cp.stdout + cp.stderr)
            raise ProvisionError(f"stack {stack.name}: compiling pvfb with gcc -static failed ({_last_line(cp)}); "
                                 f"log: {kept}")
        entry = tmp / "entry"
        entry.mkdir()
        buf = io.BytesIO()
        w = CpioWriter(buf)
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "host", "etc", "root"):
            w.directory(d)
        w.char_device("dev/console", 5, 1)
        w.char_device("dev/null", 1, 3, 0o666)
        w.file("bin/busybox", busybox.read_bytes(), 0o755)
        w.symlink("bin/sh", "busybox")
        w.file("bin/pvfb", pvfb.read_bytes(), 0o755)
        w.file("init", uml_guest.INIT_SCRIPT.encode(), 0o755)
        w.trailer()
        (entry / "initrd.img").write_bytes(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
        stamp = {"layout": UML_LAYOUT, "stack": stack.name, "kind": "guest", "key": key,
                 "busybox_version": r.busybox_version, "inputs": uml_guest.inputs_digest()}
        write_text_atomic(entry / "stamp.json", json.dumps(stamp, indent=2) + "\n")
        final = guests / key
        if final.exists():
            shutil.rmtree(final)
        os.rename(entry, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- entries ------------------------------------------------------------------------------------------------------


def _stamp_of(entry: Path, kind: str, stack: Stack) -> dict[str, object] | None:
    st = _read_stamp(entry)
    if not st or st.get("layout") != UML_LAYOUT or st.get("kind") != kind or st.get("stack") != stack.name:
        return None
    return st


def _assets(kdir: Path, gdir: Path, stack: Stack) -> UmlAssets | None:
    ks, gs = _stamp_of(kdir, "kernel", stack), _stamp_of(gdir, "guest", stack)
    if ks is None or gs is None or not (kdir / "linux").is_file() or not (gdir / "initrd.img").is_file():
        return None
    try:
        return UmlAssets(stack=stack.name, variant=str(ks["variant"]), kernel=(kdir / "linux").resolve(),
                         initrd=(gdir / "initrd.img").resolve(), source_version=str(ks["source_version"]),
                         kernel_release=str(ks["kernel_release"]), config_digest=str(ks["config_digest"]),
                         patch_digest=str(ks.get("patch_digest", "")), busybox_version=str(gs["busybox_version"]),
                         build_seconds=float(str(ks["build_seconds"])), kernel_dir=kdir.resolve(),
                         guest_dir=gdir.resolve())
    except (KeyError, TypeError, ValueError):
        return None


def _point(sdir: Path, name: str, target: Path) -> None:
    link = sdir / name
    tmp = sdir / f".{name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target.relative_to(sdir))
    os.replace(tmp, link)


def _stack_dir(cache: Path, stack: Stack) -> Path:
    return cache / "stacks" / stack.name


def load_uml(cache_dir: Path | None = None, *, stack: str | Stack = UML_LINUX612,
             variant: KernelVariant = STOCK) -> UmlAssets:
    """The provisioned UML stack (``variant``'s kernel), without provisioning; a one-line error when missing."""
    st = get_uml_stack(stack)
    cache = (cache_dir or default_cache_dir()).expanduser()
    sdir = _stack_dir(cache, st)
    assets = _assets(sdir / f"current-{variant.name}", sdir / "current-guest", st)
    if assets is None:
        extra = f" (variant {variant.name})" if variant is not STOCK else ""
        raise ProvisionError(f"stack {st.name}{extra} is not provisioned in {cache}; run: pyvirtio vm provision "
                             f"--stack {st.name}")
    return assets


def provision_uml(cache_dir: Path | None = None, *, stack: str | Stack = UML_LINUX612, refresh: bool = False,
                  variant: KernelVariant = STOCK, log: Log = _quiet) -> UmlAssets:
    """Resolve the versions now and make sure a whole kernel (of ``variant``) and initramfs are in the cache;
    idempotent. When apt cannot resolve anything, an existing whole build is kept."""
    st = get_uml_stack(stack)
    cache = (cache_dir or default_cache_dir()).expanduser()
    sdir = _stack_dir(cache, st)
    with _locked(sdir):
        apt = PrivateApt(sdir / "apt", st)
        current = _assets(sdir / f"current-{variant.name}", sdir / "current-guest", st)
        try:
            apt.update()
            r = resolve(apt, st)
        except ProvisionError:
            if current is not None and not refresh:
                log(f"{st.name}: cannot resolve versions now; keeping the provisioned build")
                return current
            raise
        kkey, gkey = kernel_key(r.source_version, variant), guest_key(r.busybox_version)
        kdir, gdir = sdir / "kernels" / kkey, sdir / "guests" / gkey
        if refresh or _stamp_of(kdir, "kernel", st) is None:
            if kdir.exists():
                log(f"{st.name}: {kdir} is incomplete (no valid stamp); rebuilding")
                shutil.rmtree(kdir)
            ensure_tools(log)
            tarball = _source_tarball(sdir, apt, r.source_version, log)
            kdir = build_kernel(sdir, kkey, tarball, r, variant, st, log)
        else:
            log(f"{st.name}: kernel up to date ({kdir})")
        if refresh or _stamp_of(gdir, "guest", st) is None:
            if gdir.exists():
                shutil.rmtree(gdir)
            ensure_tools(log)
            gdir = build_guest(sdir, gkey, apt, r, st, log)
        _point(sdir, f"current-{variant.name}", kdir)
        _point(sdir, "current-guest", gdir)
        assets = _assets(kdir, gdir, st)
        if assets is None:
            raise ProvisionError(f"stack {st.name}: freshly built {kdir} or {gdir} is unreadable")
        return assets


__all__ = ["PATCH_DIR", "PCI_OVER_VIRTIO_DEVICE_ID", "PROPOSAL_VARIANTS", "SOURCE_PACKAGE", "STOCK", "UML_CONFIG",
           "KernelVariant", "UmlAssets", "UmlResolved", "build_guest", "build_kernel", "check_config",
           "config_digest", "ensure_tools", "guest_key", "kernel_key", "load_uml", "missing_tools", "patched_files",
           "provision_uml", "read_config", "resolve", "tree_key"]
