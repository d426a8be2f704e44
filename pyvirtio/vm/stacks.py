"""The named real-VM stacks: which QEMU runs which Debian guest kernel, and where each comes from.

``qemu7.2-linux6.1`` (the default) is the system's QEMU from apt with Debian 12's own kernel.
``qemu10.0-linux6.12`` is QEMU 10.0 from bookworm-backports and Linux 6.12 from bookworm-security, both
unpacked privately into the cache directory through a private apt configuration; the system's QEMU is never
replaced. Versions are resolved at provision time (``apt-cache madison`` / ``apt-cache depends``).

``uml-linux6.12`` is not a QEMU stack: the same Linux 6.12 version built from ``linux-source-6.12`` as a
User-Mode Linux binary (:mod:`pyvirtio.vm.uml_kernel`), whose PCI bus pyvirtio serves (:mod:`pyvirtio.uml`). It
is listed in :data:`UML_STACKS`, not in :data:`STACKS` (nothing that runs QEMU takes it); ``vm provision``
takes both (:data:`PROVISIONABLE_NAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtio.errors import UserInputError


@dataclass(frozen=True)
class Stack:
    """One stack: its name, whether it is private (unpacked into the cache) and what its guest needs."""

    name: str
    private: bool
    kernel_meta_package: str
    #: Suite the kernel comes from (private stacks), e.g. ``bookworm-security``.
    kernel_suite: str = ""
    #: Suite QEMU comes from (private stacks), e.g. ``bookworm-backports``.
    qemu_suite: str = ""
    #: QEMU's upstream series the stack wants (``10.0``): the newest candidate of that series is taken.
    qemu_series: str = ""
    #: QEMU packages unpacked into the private root (modules of one build only, or ``-device help`` aborts).
    qemu_packages: tuple[str, ...] = ()
    #: Whether ``x-pcie-pm-no-soft-reset`` exists (QEMU >= 9.1) and the gpu sits behind a pcie-root-port.
    pcie_ports: bool = False
    description: str = ""
    #: A User-Mode Linux stack (no QEMU: the kernel is built from source; see :data:`UML_STACKS`).
    uml: bool = False


SYSTEM = Stack(name="qemu7.2-linux6.1", private=False, kernel_meta_package="linux-image-amd64",
               description="system QEMU (apt) + Debian 12 kernel")
QEMU10_LINUX612 = Stack(
    name="qemu10.0-linux6.12", private=True, kernel_meta_package="linux-image-6.12-amd64",
    kernel_suite="bookworm-security", qemu_suite="bookworm-backports", qemu_series="10.0",
    qemu_packages=("qemu-system-x86", "qemu-system-common", "qemu-system-data", "qemu-system-modules-opengl",
                   "qemu-system-modules-spice", "seabios"),
    pcie_ports=True, description="QEMU 10.0 (bookworm-backports) + Linux 6.12 (bookworm-security), private")

#: Every stack by name, default first.
STACKS: dict[str, Stack] = {s.name: s for s in (SYSTEM, QEMU10_LINUX612)}
DEFAULT_STACK = SYSTEM.name
#: The model profile a real cell with No_Soft_Reset on the gpu corresponds to (QEMU >= 9.1 + Linux >= 6.8).
NSR_PROFILE = "no-soft-reset"
STACK_NAMES = tuple(STACKS)
#: The User-Mode Linux stacks: the second QEMU stack's kernel version, built from source as a UML binary.
UML_LINUX612 = Stack(
    name="uml-linux6.12", private=True, kernel_meta_package="linux-image-6.12-amd64", kernel_suite="bookworm-security",
    uml=True, description="User-Mode Linux 6.12 (linux-source-6.12 from bookworm-security, built here), PCI over "
                          "virtio served by pyvirtio")
UML_STACKS: dict[str, Stack] = {UML_LINUX612.name: UML_LINUX612}
#: Every name ``vm provision --stack`` takes.
PROVISIONABLE_NAMES = STACK_NAMES + tuple(UML_STACKS)


def get_stack(name: str | Stack) -> Stack:
    """The stack called ``name``; an unknown name is a one-line :class:`UserInputError`."""
    if isinstance(name, Stack):
        return name
    try:
        return STACKS[name]
    except KeyError:
        raise UserInputError(f"unknown stack {name!r} (want one of {', '.join(STACK_NAMES)})") from None


def get_uml_stack(name: str | Stack) -> Stack:
    """The User-Mode Linux stack called ``name``; anything else is a one-line :class:`UserInputError`."""
    if isinstance(name, Stack) and name.uml:
        return name
    key = name.name if isinstance(name, Stack) else name
    try:
        return UML_STACKS[key]
    except KeyError:
        raise UserInputError(f"unknown UML stack {key!r} (want one of {', '.join(UML_STACKS)})") from None
