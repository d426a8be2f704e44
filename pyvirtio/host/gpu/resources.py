"""Host-side virtio-gpu objects: resources, their guest backing, 3D contexts (virtio 1.4 §5.7.6.8-§5.7.6.9).

A 2D resource owns a host image — a ``(height, width * 4)`` uint8 numpy array in the resource's format, which
is what QEMU's pixman image is. A blob resource (BLOB_MEM_GUEST) has no host copy: its pixels are its guest
backing. Virgl resources (3D, and HOST3D blobs) are bookkeeping only; ``virgl=True`` marks them as the objects
a guest cannot re-create after a reset (Linux keeps them off its restore list).

Backing access is zero-copy where it can be: a byte range that lies inside one mem entry is a numpy view of
guest memory (:meth:`GuestMemory.view`); a range that spans entries is gathered with one copy per entry.
"""

from __future__ import annotations

import bisect
import mmap
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import GPU_BYTES_PER_PIXEL

Bytes = npt.NDArray[np.uint8]

#: Host images of at least this many bytes get their own anonymous mapping (see :func:`host_image`).
MAPPED_IMAGE_MIN = 1 << 20


def host_image(height: int, stride: int) -> Bytes:
    """A zero-filled ``(height, stride)`` host image. A large one is an anonymous mapping: the kernel's pages are
    zero until written, so a resource costs host memory only for the rows transferred into it, and destroying it
    returns the memory at once. (``np.zeros`` gives no such promise: ``calloc`` clears recycled heap memory by
    writing it, which makes a never-written GiB of resources resident.)"""
    n = height * stride
    if n < MAPPED_IMAGE_MIN:
        return np.zeros((height, stride), dtype=np.uint8)
    mm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)  # as numpy does for large arrays: fewer TLB misses when a frame is copied in
    return np.frombuffer(mm, dtype=np.uint8).reshape(height, stride)


@dataclass(frozen=True, slots=True)
class MemEntry:
    """One ``struct virtio_gpu_mem_entry`` of an attached backing."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """The parameters of RESOURCE_CREATE_BLOB."""

    blob_mem: int
    blob_flags: int
    blob_id: int
    size: int


@dataclass
class Resource:
    """A host resource as the device sees it (inspect through ``Gpu.resources``)."""

    id: int
    format: int  # 0 for blobs (the format comes with SET_SCANOUT_BLOB)
    width: int
    height: int
    backing: list[MemEntry] | None = None  # None: no backing attached
    blob: BlobInfo | None = None
    uuid: uuid.UUID | None = None
    virgl: bool = False
    image: Bytes | None = field(default=None, repr=False)  # (height, stride) host copy of a 2D resource
    hostmem: int = 0
    scanouts: set[int] = field(default_factory=set)  # scanouts showing this resource
    contexts: set[int] = field(default_factory=set)  # 3D contexts it is attached to
    params_3d: tuple[int, ...] | None = None  # RESOURCE_CREATE_3D fields after resource_id
    _starts: list[int] = field(default_factory=list, repr=False)

    @property
    def resource_id(self) -> int:
        """The resource id (alias of ``id``)."""
        return self.id

    @property
    def stride(self) -> int:
        """Bytes per row of the host image (4 bytes per pixel)."""
        return self.width * GPU_BYTES_PER_PIXEL

    @property
    def backing_size(self) -> int:
        """Total bytes of the attached mem entries (0 without backing)."""
        b = self.backing
        if not b:
            return 0
        return b[0].length if len(b) == 1 else sum(e.length for e in b)

    def attach(self, entries: list[MemEntry]) -> None:
        """RESOURCE_ATTACH_BACKING: remember the mem entries (already validated against guest RAM)."""
        self.backing = entries
        self._starts = []
        pos = 0
        for e in entries:
            self._starts.append(pos)
            pos += e.length

    def detach(self) -> None:
        """RESOURCE_DETACH_BACKING: forget the mem entries."""
        self.backing = None
        self._starts = []

    def backing_bytes(self, mem: GuestMemory, offset: int, n: int, *, copy: bool = False) -> Bytes:
        """Bytes ``[offset, offset+n)`` of the backing as a 1-D uint8 array.

        A view of guest memory when the range lies in one entry (and not ``copy``), else a gathered copy.
        The caller has checked ``offset + n <= backing_size``.
        """
        entries = self.backing or []
        k = max(0, bisect.bisect_right(self._starts, offset) - 1)
        # skip zero-length entries that share a start
        while k < len(entries) - 1 and self._starts[k] + entries[k].length <= offset:
            k += 1
        if n == 0:
            return np.zeros(0, dtype=np.uint8)
        e = entries[k]
        rel = offset - self._starts[k]
        if rel + n <= e.length:
            view: Bytes = np.frombuffer(mem.view(e.addr + rel, n), dtype=np.uint8)
            return view.copy() if copy else view
        out = np.empty(n, dtype=np.uint8)
        pos = 0
        while pos < n:
            e = entries[k]
            take = min(e.length - rel, n - pos)
            if take > 0:
                out[pos : pos + take] = np.frombuffer(mem.view(e.addr + rel, take), dtype=np.uint8)
                pos += take
            k += 1
            rel = 0
        return out


def rows_view(flat: Bytes, rows: int, row_bytes: int, stride: int) -> npt.NDArray[Any]:
    """``rows`` rows of ``row_bytes`` bytes, ``stride`` apart, of the 1-D array ``flat`` (no copy)."""
    if rows == 0 or row_bytes == 0:
        return np.zeros((rows, row_bytes), dtype=np.uint8)
    if stride == row_bytes:
        return flat[: rows * row_bytes].reshape(rows, row_bytes)
    if not flat.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(flat, shape=(rows, row_bytes), strides=(stride, 1), writeable=False)
    # the same read-only strided view, built directly over the buffer (as_strided costs microseconds per call);
    # numpy checks that the last row ends inside ``flat``
    view: npt.NDArray[Any] = np.ndarray((rows, row_bytes), np.uint8, flat, 0, (stride, 1))
    view.flags.writeable = False
    return view


@dataclass
class Context:
    """A virgl rendering context (CTX_CREATE): tracked so power management can see what cannot be restored."""

    id: int
    name: str
    context_init: int
    resources: set[int] = field(default_factory=set)
    submits: int = 0
    submitted_bytes: int = 0
