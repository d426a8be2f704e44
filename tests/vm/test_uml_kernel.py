"""The UML kernel's provisioning without building anything: configuration checks, cache keys (by version,
configuration and patches), half-built entries, one-line build failures with the log kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.stacks import PROVISIONABLE_NAMES, STACK_NAMES, UML_LINUX612, get_uml_stack
from pyvirtio.vm.uml_kernel import (
    BUILD_FIXES,
    STOCK,
    UML_CONFIG,
    UML_LAYOUT,
    BuildLog,
    KernelVariant,
    _assets,
    check_config,
    config_digest,
    kernel_key,
    read_config,
)


def test_the_uml_stack_is_provisionable_but_runs_no_qemu() -> None:
    assert UML_LINUX612.name in PROVISIONABLE_NAMES and UML_LINUX612.name not in STACK_NAMES
    assert get_uml_stack("uml-linux6.12") is UML_LINUX612
    with pytest.raises(UserInputError, match="unknown UML stack"):
        get_uml_stack("qemu10.0-linux6.12")


def test_config_parsing_and_checking(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_VIRTIO_UML=y\n# CONFIG_UML_RANDOM is not set\nCONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID=1234\n"
                   'CONFIG_DEFAULT_HOSTNAME="(none)"\n')
    have = read_config(cfg)
    assert have == {"VIRTIO_UML": "y", "UML_RANDOM": "n", "UML_PCI_OVER_VIRTIO_DEVICE_ID": "1234",
                    "DEFAULT_HOSTNAME": "(none)"}
    bad = check_config(have)
    assert "VIRTIO_UML=y (got y)" not in " ".join(bad)
    assert any(b.startswith("UML_PCI_OVER_VIRTIO=y") for b in bad)  # missing counts as n
    assert not check_config(dict(UML_CONFIG))


def test_cache_keys_follow_version_config_and_patches(tmp_path: Path) -> None:
    a = kernel_key("6.12.117-1~deb12u1", STOCK)
    assert a == kernel_key("6.12.117-1~deb12u1", KernelVariant())
    assert a != kernel_key("6.12.118-1~deb12u1", STOCK)
    patch = tmp_path / "x.patch"
    patch.write_text("--- a/x\n+++ b/x\n")
    patched = KernelVariant("freeze-mode", (patch,))
    assert kernel_key("6.12.117-1~deb12u1", patched).startswith("freeze-mode-")
    assert patched.all_patches() == (*BUILD_FIXES, patch)
    before = patched.patch_digest()
    patch.write_text("--- a/x\n+++ b/x\n@@\n")
    assert patched.patch_digest() != before  # by content, not by name
    assert len(config_digest()) == 16
    with pytest.raises(ProvisionError, match="variant name"):
        KernelVariant("Bad Name")
    with pytest.raises(ProvisionError, match="kernel patch"):
        KernelVariant("gone", (tmp_path / "missing.patch",)).patch_digest()
    assert all(p.is_file() for p in BUILD_FIXES)


def _entry(path: Path, kind: str, stamp: dict[str, object] | None, files: tuple[str, ...]) -> Path:
    path.mkdir(parents=True)
    for f in files:
        (path / f).write_bytes(b"x")
    if stamp is not None:
        (path / "stamp.json").write_text(json.dumps({"layout": UML_LAYOUT, "stack": UML_LINUX612.name, "kind": kind,
                                                     **stamp}))
    return path


def test_a_half_built_entry_is_never_used(tmp_path: Path) -> None:
    kstamp = {"variant": "stock", "source_version": "6.12.117-1~deb12u1", "kernel_release": "6.12.117",
              "config_digest": "c", "patch_digest": "p", "build_seconds": 300.5}
    g = _entry(tmp_path / "g", "guest", {"busybox_version": "1:1.35"}, ("initrd.img",))
    whole = _entry(tmp_path / "k1", "kernel", kstamp, ("linux",))
    assets = _assets(whole, g, UML_LINUX612)
    assert assets is not None and assets.build_seconds == 300.5 and assets.versions()["variant"] == "stock"
    assert _assets(_entry(tmp_path / "k2", "kernel", None, ("linux",)), g, UML_LINUX612) is None  # no stamp
    assert _assets(_entry(tmp_path / "k3", "kernel", kstamp, ()), g, UML_LINUX612) is None  # no binary
    assert _assets(_entry(tmp_path / "k4", "guest", kstamp, ("linux",)), g, UML_LINUX612) is None  # wrong kind
    (tmp_path / "k5").mkdir()
    (tmp_path / "k5" / "linux").write_bytes(b"x")
    (tmp_path / "k5" / "stamp.json").write_text("{not json")
    assert _assets(tmp_path / "k5", g, UML_LINUX612) is None


def test_a_failed_step_is_one_line_and_keeps_the_log(tmp_path: Path) -> None:
    log = BuildLog(tmp_path / "b" / "build.log", "uml-linux6.12", tmp_path / "logs")
    log.run("configure", ["true"])
    with pytest.raises(ProvisionError) as e:
        log.run("build", ["sh", "-c", "echo 'flex: not found' >&2; exit 2"])
    log.close()
    msg = str(e.value)
    assert "\n" not in msg and "step 'build'" in msg and "exit status 2" in msg and "flex: not found" in msg
    kept = Path(msg.rsplit("log: ", 1)[1])
    assert kept.parent == tmp_path / "logs" and "flex: not found" in kept.read_text()
    with pytest.raises(ProvisionError, match=r"step 'unpack'.*not found"):
        BuildLog(tmp_path / "c" / "build.log", "uml-linux6.12", tmp_path / "logs").run("unpack", ["/nonexistent/x"])
