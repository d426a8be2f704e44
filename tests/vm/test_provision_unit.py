"""Provisioning without a VM: clear one-line errors, cache location, idempotence from the stamp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.vm import provisioning as prov
from pyvirtio.vm.errors import ProvisionError


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(prov.CACHE_ENV, str(tmp_path / "c"))
    assert prov.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(prov.CACHE_ENV)
    assert prov.default_cache_dir().parts[-3:] == (".cache", "pyvirtio", "vm")


def test_missing_qemu_without_root_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "find_qemu", lambda: None)
    monkeypatch.setattr(prov, "_is_root", lambda: False)
    with pytest.raises(ProvisionError) as e:
        prov.ensure_qemu()
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install -y --no-install-recommends qemu-system-x86" in msg
    assert isinstance(e.value, UserInputError)
    with pytest.raises(ProvisionError, match="pyvirtio vm provision"):
        prov.ensure_qemu(install=False)


def test_failed_apt_install_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prov, "find_qemu", lambda: None)
    monkeypatch.setattr(prov, "_is_root", lambda: True)
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> object:
        calls.append(list(argv))
        import subprocess
        return subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package qemu-system-x86")

    monkeypatch.setattr(prov, "_run", fake_run)
    with pytest.raises(ProvisionError, match=r"Unable to locate package.*install it with"):
        prov.ensure_qemu()
    assert ["apt-get", "update"] in calls


def _fake_guest(cache: Path, kernel_pkg: str) -> Path:
    guest = cache / f"guest-x-l{prov.LAYOUT_VERSION}"
    guest.mkdir(parents=True)
    (guest / "vmlinuz").write_bytes(b"k")
    (guest / "initrd.img").write_bytes(b"i")
    (guest / "stamp.json").write_text(json.dumps({
        "layout": prov.LAYOUT_VERSION, "kernel_package": kernel_pkg, "kernel_package_version": "1",
        "kernel_release": "6.1.0-x-amd64", "busybox_version": "1", "modules": ["virtio.ko"],
        "frame_size": [1280, 800], "blk_pattern_md5": "0" * 32}))
    (cache / "current").symlink_to(guest.name)
    return guest


def test_provision_is_a_no_op_when_the_stamp_matches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    guest = _fake_guest(tmp_path, "linux-image-6.1.0-x-amd64")
    monkeypatch.setattr(prov, "ensure_qemu", lambda **_: Path("/usr/bin/qemu-system-x86_64"))
    monkeypatch.setattr(prov, "qemu_version", lambda _: "7.2.22")
    monkeypatch.setattr(prov, "resolve_kernel_package", lambda **_: "linux-image-6.1.0-x-amd64")

    def no_build(*_: object) -> Path:
        raise AssertionError("must not rebuild")

    monkeypatch.setattr(prov, "_build_guest", no_build)
    a = prov.provision(tmp_path)
    assert a.root == guest.resolve() and a.kernel_release == "6.1.0-x-amd64"
    assert prov.load_assets(tmp_path).kernel_package == "linux-image-6.1.0-x-amd64"


def test_provision_rebuilds_for_a_new_kernel_abi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_guest(tmp_path, "linux-image-6.1.0-old-amd64")
    monkeypatch.setattr(prov, "ensure_qemu", lambda **_: Path("/usr/bin/qemu-system-x86_64"))
    monkeypatch.setattr(prov, "qemu_version", lambda _: "7.2.22")
    monkeypatch.setattr(prov, "resolve_kernel_package", lambda **_: "linux-image-6.1.0-new-amd64")
    built: list[str] = []

    def fake_build(cache: Path, pkg: str, log: object) -> Path:
        built.append(pkg)
        return _fake_guest_new(cache, pkg)

    monkeypatch.setattr(prov, "_build_guest", fake_build)
    a = prov.provision(tmp_path)
    assert built == ["linux-image-6.1.0-new-amd64"] and a.kernel_package == "linux-image-6.1.0-new-amd64"


def _fake_guest_new(cache: Path, pkg: str) -> Path:
    tmp = cache / "tmpnew"
    tmp.mkdir()
    g = _fake_guest(tmp, pkg)
    final = cache / "guest-new"
    g.rename(final)
    return final


def test_load_assets_without_guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prov, "ensure_qemu", lambda **_: Path("/usr/bin/qemu-system-x86_64"))
    monkeypatch.setattr(prov, "qemu_version", lambda _: "7.2.22")
    with pytest.raises(ProvisionError, match="run: pyvirtio vm provision"):
        prov.load_assets(tmp_path)


@pytest.mark.parametrize("stamp", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"NaN",
                                   b'{"layout": 4, "frame_size": [Infinity, 800]}', b"[]"],
                         ids=["nested 100000 deep", "not UTF-8", "NaN", "Infinity", "a list"])
def test_a_hostile_stamp_means_no_guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stamp: bytes) -> None:
    """A cache stamp that is nested too deep, not UTF-8, not JSON or holds an infinite size is no guest (one
    line saying to provision), not a RecursionError or OverflowError traceback."""
    guest = _fake_guest(tmp_path, "linux-image-6.1.0-x-amd64")
    (guest / "stamp.json").write_bytes(stamp)
    monkeypatch.setattr(prov, "ensure_qemu", lambda **_: Path("/usr/bin/qemu-system-x86_64"))
    monkeypatch.setattr(prov, "qemu_version", lambda _: "7.2.22")
    with pytest.raises(ProvisionError, match="no provisioned guest") as e:
        prov.load_assets(tmp_path)
    assert "\n" not in str(e.value)
