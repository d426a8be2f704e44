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
    PATCH_DIR,
    PROPOSAL_VARIANTS,
    STOCK,
    UML_CONFIG,
    UML_LAYOUT,
    BuildLog,
    KernelVariant,
    _assets,
    _build_in_tree,
    check_config,
    config_digest,
    kernel_key,
    patched_files,
    read_config,
    tree_key,
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


def test_patched_files_are_read_from_the_diff_headers_and_stay_inside_the_tree(tmp_path: Path) -> None:
    p = tmp_path / "a.patch"
    p.write_text("A description.\n--- a/drivers/virtio/virtio.c\t2025-01-01\n+++ b/drivers/virtio/virtio.c\n@@\n"
                 "--- /dev/null\n+++ b/drivers/virtio/new.c\n@@\n--- a/old.c\n+++ /dev/null\n@@\n")
    assert patched_files(p) == (["drivers/virtio/virtio.c", "drivers/virtio/new.c"], ["old.c"])
    for bad in ("--- a/../etc/passwd\n+++ b/../etc/passwd\n", "--- /etc/x\n+++ /etc/x\n", "no diff here\n"):
        p.write_text(bad)
        with pytest.raises(ProvisionError, match=r"kernel patch a\.patch"):
            patched_files(p)


def _fake_tree(tmp_path: Path) -> Path:
    """A kept tree whose "kernel build" copies the two source files into the binary (make, no compiler)."""
    tree = tmp_path / "tree"
    src = tree / "src"
    src.mkdir(parents=True)
    (tree / "out").mkdir()
    (src / "Makefile").write_text("linux:\n\tcat $(CURDIR)/a.c $(CURDIR)/b.c > $(O)/linux\n")
    (src / "a.c").write_text("stock a\n")
    (src / "b.c").write_text("stock b\n")
    (tree / "stamp.json").write_text('{"kind": "tree"}')
    return tree


def test_a_variant_is_built_in_the_kept_tree_and_the_tree_is_put_back(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path)
    src = tree / "src"
    patch = tmp_path / "v.patch"
    patch.write_text("--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-stock a\n+patched a\n"
                     "--- /dev/null\n+++ b/c.c\n@@ -0,0 +1 @@\n+new c\n")
    before = (src / "a.c").stat().st_mtime_ns
    blog = BuildLog(tmp_path / "log" / "build.log", "uml-linux6.12", tmp_path / "logs")
    binary = _build_in_tree(tree, KernelVariant("v", (patch,)), UML_LINUX612, blog, lambda _m: None)
    assert binary.read_text() == "patched a\nstock b\n"
    assert (src / "a.c").read_text() == "stock a\n" and not (src / "c.c").exists()
    assert (src / "a.c").stat().st_mtime_ns > before  # make rebuilds what the variant changed
    assert not (tree / "applied.json").exists() and not (tree / "backup").exists()
    stock = _build_in_tree(tree, STOCK, UML_LINUX612, blog, lambda _m: None)
    assert stock.read_text() == "stock a\nstock b\n"


def test_a_failed_or_interrupted_variant_build_leaves_the_stock_tree(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path)
    src = tree / "src"
    bad = tmp_path / "bad.patch"  # the first file patches, the second hunk does not apply
    bad.write_text("--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-stock a\n+patched a\n"
                   "--- a/b.c\n+++ b/b.c\n@@ -1 +1 @@\n-not there\n+x\n")
    blog = BuildLog(tmp_path / "log" / "build.log", "uml-linux6.12", tmp_path / "logs")
    with pytest.raises(ProvisionError, match=r"failed at step 'patch bad\.patch'"):
        _build_in_tree(tree, KernelVariant("bad", (bad,)), UML_LINUX612, blog, lambda _m: None)
    assert (src / "a.c").read_text() == "stock a\n" and not (tree / "applied.json").exists()
    assert sorted(f.name for f in src.iterdir()) == ["Makefile", "a.c", "b.c"]  # no .rej or .orig left
    # a build killed with its patch applied: the record of what it touched puts the tree back next time
    (tree / "backup").mkdir()
    (tree / "backup" / "b.c").write_text("stock b\n")
    (src / "b.c").write_text("half-patched\n")
    (src / "d.c").write_text("created\n")
    (tree / "applied.json").write_text(json.dumps({"variant": "x", "saved": ["b.c"], "created": ["d.c"]}))
    assert _build_in_tree(tree, STOCK, UML_LINUX612, blog, lambda _m: None).read_text() == "stock a\nstock b\n"
    assert not (src / "d.c").exists()


def test_the_proposal_kernels_are_variants_of_the_patch_folder() -> None:
    assert set(PROPOSAL_VARIANTS) == {"suspend", "freeze-mode", "freezing"}
    for v in PROPOSAL_VARIANTS.values():
        assert all(p.parent == PATCH_DIR and p.suffix == ".patch" for p in v.patches)
    assert (PATCH_DIR / "virtio-gpu-s4-replay.patch").is_file()
    assert tree_key("6.12.117-1~deb12u1") != tree_key("6.12.118-1~deb12u1")
