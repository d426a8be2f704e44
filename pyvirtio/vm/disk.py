"""The scratch disk: a sparse raw image with an MBR holding a swap partition (S4) and a scratch partition.

Linux refuses writes to a block device that is active swap, so the blk probe writes to its own partition.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
PART_SWAP = 0x82
PART_LINUX = 0x83


@dataclass(frozen=True)
class Partition:
    """One primary partition, in sectors."""

    start: int
    sectors: int
    kind: int

    @property
    def offset(self) -> int:
        """Byte offset of the partition in the image."""
        return self.start * SECTOR

    @property
    def size(self) -> int:
        """Size of the partition in bytes."""
        return self.sectors * SECTOR


#: Guest names: /dev/vda1 (swap), /dev/vda2 (scratch).
DISK_MB = 160
SWAP = Partition(start=2048, sectors=128 * 2048, kind=PART_SWAP)
SCRATCH = Partition(start=2048 + 129 * 2048, sectors=(DISK_MB - 130) * 2048, kind=PART_LINUX)
SWAP_DEV = "vda1"
SCRATCH_DEV = "vda2"


def mbr(partitions: list[Partition]) -> bytes:
    """A 512-byte MBR with up to four primary LBA partitions (CHS fields set to the LBA-only marker)."""
    if len(partitions) > 4:
        raise ValueError("at most four primary partitions")
    table = b""
    for p in partitions:
        table += struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", p.kind, b"\xfe\xff\xff", p.start, p.sectors)
    table = table.ljust(64, b"\0")
    return bytes(446) + table + MBR_SIGNATURE


def parse_mbr(block: bytes) -> list[Partition]:
    """The non-empty primary partitions of an MBR (for tests and checks)."""
    if len(block) < SECTOR or block[510:512] != MBR_SIGNATURE:
        raise ValueError("no MBR signature")
    out = []
    for i in range(4):
        _, _, kind, _, start, sectors = struct.unpack_from("<B3sB3sII", block, 446 + 16 * i)
        if kind:
            out.append(Partition(start, sectors, kind))
    return out


def create_disk(path: Path, size_mb: int = DISK_MB) -> None:
    """Create the sparse image with its partition table."""
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
        f.write(mbr([SWAP, SCRATCH]))
