"""The guest virtio-gpu driver's object list: the one record of what it created and how each object is shown.

Every host object the driver created is a :class:`GpuObject` on a :class:`GpuObjectList`, with what it takes to
create it again (Linux 7.3's restore list: id, format, size, guest backing, blob parameters) and its bindings:
the scanouts it is shown on (:class:`ScanoutBinding`, virtio 1.4 §5.7.6.8 SET_SCANOUT / SET_SCANOUT_BLOB) and the
scanouts using it as cursor image (:class:`CursorBinding`, §5.7.6.10). Those per-object bindings are the only
record: which object a scanout shows, or which cursor it has, is looked up here. The list keeps the invariant
that a scanout is bound to at most one object, and has at most one cursor.

:class:`GpuDriverState` is the driver's guest-side state for an S4 image (guest-kernel memory in Linux: the
pixels themselves stay in guest RAM). It is untrusted plain data on the way in: :meth:`GpuDriverState.from_dict`
re-validates every field and raises :class:`~pyvirtio.errors.InvalidStateError` naming the first bad one, and
``from_dict(x.to_dict()) == x``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import NamedTuple, TypeVar

from pyvirtio.errors import InvalidStateError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import GPU_MAX_SCANOUTS, GpuBlobMem

__all__ = [
    "BackingRange",
    "BlobLayout",
    "BlobParams",
    "CursorBinding",
    "GpuDriverState",
    "GpuObject",
    "GpuObjectList",
    "ObjectKind",
    "Rect",
    "Resource3dParams",
    "ScanoutBinding",
]

Rect = tuple[int, int, int, int]  # x, y, width, height

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_I32_MIN = -(1 << 31)
_T = TypeVar("_T")


class ObjectKind(Enum):
    """What an object is, which decides whether guest metadata suffices to re-create it."""

    TWO_D = "2d"  # RESOURCE_CREATE_2D (§5.7.6.8), guest backing
    BLOB = "blob"  # RESOURCE_CREATE_BLOB with BLOB_MEM_GUEST (§5.7.6.8)
    CURSOR = "cursor"  # a 64x64 2D resource used as cursor image (§5.7.6.10)
    VIRGL = "virgl"  # a 3D resource or host blob (§5.7.6.9): its content lives on the host only


@dataclass(frozen=True, slots=True)
class BackingRange:
    """One guest memory range of an object's backing (one ``virtio_gpu_mem_entry``, §5.7.6.8)."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class BlobParams:
    """The RESOURCE_CREATE_BLOB parameters (§5.7.6.8) an object was created with."""

    blob_mem: int
    blob_flags: int
    blob_id: int
    size: int


@dataclass(frozen=True, slots=True)
class Resource3dParams:
    """The RESOURCE_CREATE_3D parameters (§5.7.6.9) after the resource id."""

    target: int
    format: int
    bind: int
    width: int
    height: int
    depth: int
    array_size: int
    last_level: int
    nr_samples: int
    flags: int


class BlobLayout(NamedTuple):
    """How SET_SCANOUT_BLOB (§5.7.6.8) reads a blob: size, format, stride and offset of plane 0."""

    width: int
    height: int
    format: int
    stride: int
    offset: int


@dataclass(frozen=True, slots=True)
class ScanoutBinding:
    """How an object is shown on a scanout: the rect, and for a blob the SET_SCANOUT_BLOB layout."""

    rect: Rect
    blob_layout: tuple[int, int, int, int, int] | None = None  # a BlobLayout when the driver made it


@dataclass(frozen=True, slots=True)
class CursorBinding:
    """An object used as the cursor image of a scanout: position and hotspot (§5.7.6.10 UPDATE_CURSOR)."""

    x: int
    y: int
    hot_x: int
    hot_y: int


@dataclass
class GpuObject:
    """A host object this driver created, with what it takes to create it again (Linux ``virtio_gpu_object``).

    ``scanout_bindings`` and ``cursor_bindings`` are the driver's only record of what is shown where; change them
    through :class:`GpuObjectList` (``bind_scanout`` / ``bind_cursor``) so that a scanout stays bound once.
    """

    id: int
    kind: ObjectKind
    format: int = 0
    width: int = 0
    height: int = 0
    stride: int = 0
    backing: list[BackingRange] = field(default_factory=list)
    attached: bool = False  # backing attached on the host
    blob: BlobParams | None = None
    scanout_bindings: dict[int, ScanoutBinding] = field(default_factory=dict)  # how it is shown, per scanout
    cursor_bindings: dict[int, CursorBinding] = field(default_factory=dict)  # cursor position + hotspot
    uuid: uuid.UUID | None = None
    ctx_ids: set[int] = field(default_factory=set)
    params_3d: Resource3dParams | None = None

    @property
    def scanouts(self) -> frozenset[int]:
        """The scanouts showing this object (a view of ``scanout_bindings``)."""
        return frozenset(self.scanout_bindings)

    @property
    def cursor_scanouts(self) -> frozenset[int]:
        """The scanouts using this object as cursor image (a view of ``cursor_bindings``)."""
        return frozenset(self.cursor_bindings)

    @property
    def size(self) -> int:
        """Bytes of guest backing."""
        return sum(r.length for r in self.backing)

    @property
    def restorable(self) -> bool:
        """Whether guest-side metadata suffices to re-create it (virgl objects are not, as in Linux 7.3)."""
        return self.kind is not ObjectKind.VIRGL

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able data; :meth:`from_dict` reads it back."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "format": int(self.format),
            "width": int(self.width),
            "height": int(self.height),
            "stride": int(self.stride),
            "backing": [{"addr": int(r.addr), "length": int(r.length)} for r in self.backing],
            "attached": self.attached,
            "blob": None if self.blob is None else _fields_dict(self.blob),
            "scanout_bindings": [_scanout_binding_dict(s, b) for s, b in sorted(self.scanout_bindings.items())],
            "cursor_bindings": [{"scanout": s, **_fields_dict(c)} for s, c in sorted(self.cursor_bindings.items())],
            "uuid": None if self.uuid is None else str(self.uuid),
            "ctx_ids": sorted(self.ctx_ids),
            "params_3d": None if self.params_3d is None else _fields_dict(self.params_3d),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "object") -> GpuObject:
        """Validate ``data`` (from :meth:`to_dict`, maybe from a file) field by field; ``where`` names it in
        errors. Raises :class:`InvalidStateError` naming the first bad field."""
        r = _Record(data, where, _OBJECT_FIELDS)
        kind_value = r.raw("kind")
        try:
            kind = ObjectKind(kind_value)
        except ValueError:
            raise r.bad("kind", f"not one of {[k.value for k in ObjectKind]}") from None
        obj = cls(
            id=r.integer("id", 1, _U32),
            kind=kind,
            format=r.integer("format", 0, _U32),
            width=r.integer("width", 0, _U32),
            height=r.integer("height", 0, _U32),
            stride=r.integer("stride", 0, _U32),
            backing=[_backing(b, f"{r.where}.backing[{i}]") for i, b in enumerate(r.items("backing"))],
            attached=r.boolean("attached"),
            blob=_optional(r, "blob", _blob_params),
            scanout_bindings=_scanout_bindings(r),
            cursor_bindings=_cursor_bindings(r),
            uuid=_optional(r, "uuid", _uuid),
            ctx_ids=_int_set(r, "ctx_ids", 1, _U32),
            params_3d=_optional(r, "params_3d", _params_3d),
        )
        _check_kind(obj, r)
        return obj


class GpuObjectList:
    """Every live object the driver created, by resource id, in creation order; a scanout is bound to at most one
    object and has at most one cursor object."""

    def __init__(self) -> None:
        self._objects: dict[int, GpuObject] = {}

    def add(self, obj: GpuObject) -> None:
        """List ``obj``; ValueError if its id is listed or one of its scanouts or cursors is already bound."""
        if obj.id in self._objects:
            raise ValueError(f"object {obj.id} is already listed")
        for s in obj.scanout_bindings:
            if self.on_scanout(s) is not None:
                raise ValueError(f"scanout {s} is already bound")
        for s in obj.cursor_bindings:
            if self.cursor_on(s) is not None:
                raise ValueError(f"scanout {s} already has a cursor")
        self._objects[obj.id] = obj

    def remove(self, obj_id: int) -> GpuObject:
        """Take object ``obj_id`` off the list (its bindings go with it); KeyError if it is not listed."""
        return self._objects.pop(obj_id)

    def get(self, obj_id: int) -> GpuObject | None:
        """Object ``obj_id``, or None."""
        return self._objects.get(obj_id)

    def __getitem__(self, obj_id: int) -> GpuObject:
        return self._objects[obj_id]

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._objects

    def __iter__(self) -> Iterator[GpuObject]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)

    def ids(self) -> list[int]:
        """Resource ids in creation order."""
        return list(self._objects)

    def of_kind(self, kind: ObjectKind) -> list[GpuObject]:
        """The objects of ``kind``, in creation order."""
        return [o for o in self._objects.values() if o.kind is kind]

    def restorable(self) -> list[GpuObject]:
        """The objects guest metadata can re-create, in creation order (Linux 7.3's restore list)."""
        return [o for o in self._objects.values() if o.restorable]

    def clear(self) -> None:
        """Forget every object."""
        self._objects.clear()

    # -- bindings: the one record of what is shown where -----------------------------------------------------

    def bind_scanout(self, scanout: int, obj: GpuObject | None, binding: ScanoutBinding | None = None) -> None:
        """Record that ``scanout`` shows ``obj`` as ``binding`` (None: the scanout is disabled)."""
        for o in self._objects.values():
            o.scanout_bindings.pop(scanout, None)
        if obj is not None:
            obj.scanout_bindings[scanout] = binding or ScanoutBinding((0, 0, obj.width, obj.height))

    def bind_cursor(self, scanout: int, obj: GpuObject | None, binding: CursorBinding | None = None) -> None:
        """Record that ``scanout``'s cursor is ``obj`` at ``binding`` (None: the cursor is hidden)."""
        for o in self._objects.values():
            o.cursor_bindings.pop(scanout, None)
        if obj is not None:
            obj.cursor_bindings[scanout] = binding or CursorBinding(0, 0, 0, 0)

    def on_scanout(self, scanout: int) -> GpuObject | None:
        """The object ``scanout`` shows, or None."""
        return next((o for o in self._objects.values() if scanout in o.scanout_bindings), None)

    def cursor_on(self, scanout: int) -> GpuObject | None:
        """The cursor object of ``scanout``, or None."""
        return next((o for o in self._objects.values() if scanout in o.cursor_bindings), None)

    def scanout_map(self) -> dict[int, GpuObject]:
        """Scanout -> the object it shows, by scanout."""
        return dict(sorted((s, o) for o in self._objects.values() for s in o.scanout_bindings))

    def cursor_map(self) -> dict[int, GpuObject]:
        """Scanout -> its cursor object, by scanout."""
        return dict(sorted((s, o) for o in self._objects.values() for s in o.cursor_bindings))


@dataclass
class GpuDriverState:
    """The virtio-gpu driver's guest-side state in an S4 image: the object list (with its bindings), the
    contexts, the id counters and the hibernation flag. Validated on the way in by :meth:`from_dict`."""

    num_scanouts: int
    next_resource: int
    next_fence: int
    next_ctx: int
    contexts: list[int]
    hibernation: bool
    objects: list[GpuObject]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able data; :meth:`from_dict` reads it back."""
        return {
            "num_scanouts": self.num_scanouts,
            "next_resource": self.next_resource,
            "next_fence": self.next_fence,
            "next_ctx": self.next_ctx,
            "contexts": sorted(self.contexts),
            "hibernation": self.hibernation,
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, data: object, memory: GuestMemory | None = None) -> GpuDriverState:
        """Validate ``data`` field by field and across objects; with ``memory``, every backing range must lie in
        guest RAM. Raises :class:`InvalidStateError` naming the first bad field."""
        r = _Record(data, "gpu", _STATE_FIELDS)
        num_scanouts = r.integer("num_scanouts", 1, GPU_MAX_SCANOUTS)
        next_resource = r.integer("next_resource", 1, _U32 + 1)
        next_ctx = r.integer("next_ctx", 1, _U32 + 1)
        contexts = sorted(_int_set(r, "contexts", 1, next_ctx - 1))
        state = cls(
            num_scanouts=num_scanouts,
            next_resource=next_resource,
            next_fence=r.integer("next_fence", 1, _U64),
            next_ctx=next_ctx,
            contexts=contexts,
            hibernation=r.boolean("hibernation"),
            objects=[GpuObject.from_dict(o, f"gpu.objects[{i}]") for i, o in enumerate(r.items("objects"))],
        )
        state._check_objects(memory)
        return state

    def _check_objects(self, memory: GuestMemory | None) -> None:
        seen: dict[int, int] = {}
        shown: dict[int, int] = {}
        cursor: dict[int, int] = {}
        for i, o in enumerate(self.objects):
            where = f"gpu.objects[{i}]"
            if o.id in seen:
                raise _bad(f"{where}.id", o.id, f"also the id of gpu.objects[{seen[o.id]}]")
            if o.id >= self.next_resource:
                raise _bad(f"{where}.id", o.id, f"not below next_resource {self.next_resource}")
            seen[o.id] = i
            for name, bound in (("scanout_bindings", shown), ("cursor_bindings", cursor)):
                record: Mapping[int, object] = getattr(o, name)
                for s in sorted(record):
                    path = f"{where}.{name}"
                    if s >= self.num_scanouts:
                        raise _bad(path, s, f"not below num_scanouts {self.num_scanouts}")
                    if s in bound:
                        raise _bad(path, s, f"also bound by gpu.objects[{bound[s]}]")
                    bound[s] = i
            for c in sorted(o.ctx_ids):
                if c not in self.contexts:
                    raise _bad(f"{where}.ctx_ids", c, "not a listed context")
            if memory is not None:
                for j, b in enumerate(o.backing):
                    if not memory.contains(b.addr, b.length):
                        raise _bad(f"{where}.backing[{j}]", (b.addr, b.length), "not in guest RAM")


# -- validation helpers -------------------------------------------------------------------------------------------

_OBJECT_FIELDS = frozenset(f.name for f in fields(GpuObject))
_STATE_FIELDS = frozenset(f.name for f in fields(GpuDriverState))


def _bad(path: str, value: object, why: str) -> InvalidStateError:
    return InvalidStateError(f"gpu driver state field {path!r} = {value!r}: {why}")


class _Record:
    """A JSON object read field by field; every error names ``where.field``."""

    def __init__(self, data: object, where: str, names: frozenset[str]) -> None:
        self.where = where
        if not isinstance(data, dict):
            raise InvalidStateError(f"gpu driver state field {where!r}: expected an object, got {type(data).__name__}")
        extra = sorted(map(str, set(data) - names))
        missing = sorted(names - set(data))
        if extra or missing:
            raise InvalidStateError(f"gpu driver state field {where!r}: unknown fields {extra}, "
                                    f"missing fields {missing}")
        self.data: dict[str, object] = data

    def bad(self, name: str, why: str) -> InvalidStateError:
        return _bad(f"{self.where}.{name}", self.data[name], why)

    def raw(self, name: str) -> object:
        return self.data[name]

    def integer(self, name: str, lo: int, hi: int) -> int:
        v = self.data[name]
        if type(v) is not int or not lo <= v <= hi:
            raise self.bad(name, f"not an integer in {lo}..{hi}")
        return v

    def boolean(self, name: str) -> bool:
        v = self.data[name]
        if type(v) is not bool:
            raise self.bad(name, "not a boolean")
        return v

    def items(self, name: str) -> list[object]:
        v = self.data[name]
        if not isinstance(v, list):
            raise self.bad(name, "not a list")
        return v

    def child(self, name: str, names: frozenset[str]) -> _Record:
        return _Record(self.data[name], f"{self.where}.{name}", names)


def _fields_dict(obj: BlobParams | CursorBinding | Resource3dParams) -> dict[str, int]:
    return {f.name: int(getattr(obj, f.name)) for f in fields(obj)}


def _scanout_binding_dict(scanout: int, b: ScanoutBinding) -> dict[str, object]:
    layout = None if b.blob_layout is None else dict(zip(BlobLayout._fields, map(int, b.blob_layout), strict=True))
    return {"scanout": scanout, "rect": [int(v) for v in b.rect], "blob_layout": layout}


def _optional(r: _Record, name: str, read: Callable[[_Record, str], _T]) -> _T | None:
    return None if r.raw(name) is None else read(r, name)


def _backing(data: object, where: str) -> BackingRange:
    r = _Record(data, where, frozenset({"addr", "length"}))
    return BackingRange(r.integer("addr", 0, _U64), r.integer("length", 1, _U32))


def _blob_params(r: _Record, name: str) -> BlobParams:
    b = r.child(name, frozenset(f.name for f in fields(BlobParams)))
    return BlobParams(b.integer("blob_mem", 1, _U32), b.integer("blob_flags", 0, _U32), b.integer("blob_id", 0, _U64),
                      b.integer("size", 1, _U64))


def _params_3d(r: _Record, name: str) -> Resource3dParams:
    p = r.child(name, frozenset(f.name for f in fields(Resource3dParams)))
    return Resource3dParams(**{f.name: p.integer(f.name, 0, _U32) for f in fields(Resource3dParams)})


def _uuid(r: _Record, name: str) -> uuid.UUID:
    v = r.raw(name)
    try:
        if not isinstance(v, str):
            raise ValueError
        return uuid.UUID(v)
    except ValueError:
        raise r.bad(name, "not a UUID string") from None


def _int_set(r: _Record, name: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for v in r.items(name):
        if type(v) is not int or not lo <= v <= hi or v in out:
            raise _bad(f"{r.where}.{name}", v, f"not a distinct integer in {lo}..{hi}")
        out.add(v)
    return out


def _scanout_index(r: _Record, seen: Mapping[int, object]) -> int:
    s = r.integer("scanout", 0, GPU_MAX_SCANOUTS - 1)
    if s in seen:
        raise r.bad("scanout", "listed twice")
    return s


def _scanout_bindings(r: _Record) -> dict[int, ScanoutBinding]:
    out: dict[int, ScanoutBinding] = {}
    for i, item in enumerate(r.items("scanout_bindings")):
        b = _Record(item, f"{r.where}.scanout_bindings[{i}]", frozenset({"scanout", "rect", "blob_layout"}))
        s = _scanout_index(b, out)
        rect = b.raw("rect")
        if not (isinstance(rect, list) and len(rect) == 4 and all(type(v) is int and 0 <= v <= _U32 for v in rect)):
            raise b.bad("rect", "not 4 integers in 0..2**32-1")
        layout = None
        if b.raw("blob_layout") is not None:
            lr = b.child("blob_layout", frozenset(BlobLayout._fields))
            layout = BlobLayout(*(lr.integer(n, 0, _U32) for n in BlobLayout._fields))
        out[s] = ScanoutBinding((rect[0], rect[1], rect[2], rect[3]), layout)
    return out


def _cursor_bindings(r: _Record) -> dict[int, CursorBinding]:
    out: dict[int, CursorBinding] = {}
    names = frozenset({"scanout", *(f.name for f in fields(CursorBinding))})
    for i, item in enumerate(r.items("cursor_bindings")):
        c = _Record(item, f"{r.where}.cursor_bindings[{i}]", names)
        s = _scanout_index(c, out)
        out[s] = CursorBinding(c.integer("x", _I32_MIN, _U32), c.integer("y", _I32_MIN, _U32),
                               c.integer("hot_x", 0, _U32), c.integer("hot_y", 0, _U32))
    return out


def _check_kind(obj: GpuObject, r: _Record) -> None:
    """What each kind may carry: a guest blob has GUEST blob parameters, 2D and cursor objects none; only blobs
    have a blob layout; only cursor objects are cursors; only virgl objects have 3D parameters."""
    guest_blob = obj.blob is not None and obj.blob.blob_mem == GpuBlobMem.GUEST
    if obj.kind is ObjectKind.BLOB and not guest_blob:
        raise r.bad("blob", "a blob object needs guest blob parameters (blob_mem GUEST)")
    if obj.kind in (ObjectKind.TWO_D, ObjectKind.CURSOR) and obj.blob is not None:
        raise r.bad("blob", f"a {obj.kind.value} object has no blob parameters")
    if obj.kind is not ObjectKind.VIRGL and obj.params_3d is not None:
        raise r.bad("params_3d", f"a {obj.kind.value} object has no 3D parameters")
    if obj.blob is None and any(b.blob_layout is not None for b in obj.scanout_bindings.values()):
        raise r.bad("scanout_bindings", "a blob layout on an object that is not a blob")
    if obj.kind is not ObjectKind.CURSOR and obj.cursor_bindings:
        raise r.bad("cursor_bindings", f"a {obj.kind.value} object is not a cursor image")
