"""The vhost-user wire format (QEMU ``docs/interop/vhost-user.rst``, "Message Specification"): header, request
codes, payload structures, and a parser that never raises.

Contract:

* a message is a 12-byte header (``request``, ``flags``, ``size``: 32-bit, native byte order) and ``size`` bytes
  of payload; file descriptors travel beside it as SCM_RIGHTS ancillary data;
* :class:`Framer` splits a byte stream into frames and says how many bytes it needs next, so a reader never
  takes a byte of the following message (the descriptors of a message arrive with its first bytes). A header
  announcing more than :data:`MAX_PAYLOAD` bytes is a :class:`FramingError`: the stream cannot be resynchronised
  and the connection must close;
* :func:`decode` turns a frame and its descriptors into a typed :class:`Message` or a :class:`ProtocolError`
  naming the problem (unknown request, wrong payload size, wrong number of descriptors, bad flags). It never
  raises, and every descriptor it was given ends in exactly one of the two results (``fds``), for the caller to
  keep or close;
* the ``encode_*`` functions build the other direction (replies, and requests for a test frontend).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum

#: Header: request, flags, size (u32 each, native byte order: the spec's "machine native byte order").
HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size
#: Largest payload pyvirtio accepts (QEMU's largest is a crypto session, about 1.6 KiB).
MAX_PAYLOAD = 4096

#: flags: version in the low two bits, then the reply and need_reply bits.
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x1 << 2
FLAG_NEED_REPLY = 0x1 << 3
KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

#: Feature bit 30 in GET/SET_FEATURES: the back-end speaks protocol features (not a virtio bit).
F_PROTOCOL_FEATURES = 30
#: Feature bit 26 in SET_FEATURES: dirty logging for migration (vhost's VHOST_F_LOG_ALL, not a virtio bit).
F_LOG_ALL = 26
#: Feature bits that belong to vhost, not to the virtio device.
VHOST_FEATURE_BITS = (1 << F_PROTOCOL_FEATURES) | (1 << F_LOG_ALL)

#: SET_VRING_KICK/CALL/ERR payload: ring index in bits 0-7, bit 8 = "no descriptor attached".
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x1 << 8
#: SET_VRING_ADDR flags bit 0: log used-ring writes (VHOST_VRING_F_LOG).
VRING_F_LOG = 0x1
#: Most descriptors one message may carry (QEMU: VHOST_MEMORY_BASELINE_NREGIONS).
MAX_FDS = 8
#: Regions in SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS).
MAX_TABLE_REGIONS = 8
#: Largest device configuration space GET/SET_CONFIG carry (QEMU: VHOST_USER_MAX_CONFIG_SIZE).
MAX_CONFIG_SIZE = 256


class Request(IntEnum):
    """Front-end message types ("Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(IntEnum):
    """Back-end message types, sent on the SET_BACKEND_REQ_FD channel ("Back-end message types")."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


class ProtocolFeature(IntEnum):
    """Protocol feature bit numbers ("Protocol features")."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    NET_MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


def request_name(code: int) -> str:
    """``SET_OWNER`` for a known code, ``request 99`` otherwise."""
    try:
        return Request(code).name
    except ValueError:
        return f"request {code}"


# -- payloads -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoPayload:
    """A request without payload."""


@dataclass(frozen=True)
class U64:
    """The payload "a single 64-bit integer"."""

    value: int


@dataclass(frozen=True)
class VringState:
    """The payload "a vring state description": ring index and a number (size, base, enable)."""

    index: int
    num: int


@dataclass(frozen=True)
class VringAddr:
    """The payload "a vring address description": user addresses (the front-end's virtual addresses) of the
    three ring parts."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class MemRegion:
    """One memory region description: where guest-physical ``gpa`` lives in the front-end (``uva``) and in the
    file descriptor (``mmap_offset``)."""

    gpa: int
    size: int
    uva: int
    mmap_offset: int


@dataclass(frozen=True)
class MemTable:
    """SET_MEM_TABLE: the whole memory map, one descriptor per region."""

    regions: tuple[MemRegion, ...]


@dataclass(frozen=True)
class SingleRegion:
    """ADD_MEM_REG / REM_MEM_REG: "single memory region description" (64-bit padding first)."""

    region: MemRegion


@dataclass(frozen=True)
class ConfigSpace:
    """GET_CONFIG / SET_CONFIG: "virtio device config space" (offset, size, flags, then ``size`` bytes)."""

    offset: int
    size: int
    flags: int
    data: bytes


Payload = NoPayload | U64 | VringState | VringAddr | MemTable | SingleRegion | ConfigSpace

_U64 = struct.Struct("=Q")
_STATE = struct.Struct("=II")
_ADDR = struct.Struct("=IIQQQQ")
_REGION = struct.Struct("=QQQQ")
_TABLE_HEAD = struct.Struct("=II")
_CONFIG_HEAD = struct.Struct("=III")


class PayloadKind(Enum):
    """The shape of a request's payload."""

    NONE = "none"
    U64 = "u64"
    STATE = "state"
    ADDR = "addr"
    TABLE = "table"
    REGION = "region"
    CONFIG = "config"
    OPAQUE = "opaque"  # a request pyvirtio never serves: any size, the bytes are not looked at


class FdRule(Enum):
    """How many descriptors a request carries."""

    NONE = "none"
    ONE = "one"
    PER_REGION = "per-region"  # SET_MEM_TABLE: one per region
    UNLESS_NOFD = "unless-nofd"  # SET_VRING_KICK/CALL/ERR: one, or none with VRING_NOFD
    ZERO_OR_ONE = "zero-or-one"  # REM_MEM_REG: none SHOULD be passed, one MAY (closed unused)
    ANY = "any"  # requests pyvirtio never serves


@dataclass(frozen=True)
class RequestSpec:
    """What a request carries and whether it has a reply of its own (beyond REPLY_ACK)."""

    payload: PayloadKind
    fds: FdRule = FdRule.NONE
    reply: bool = False


_N, _Q, _S = PayloadKind.NONE, PayloadKind.U64, PayloadKind.STATE
#: Every request pyvirtio knows, as data. Requests missing here (or OPAQUE) are answered as unsupported.
REQUESTS: dict[Request, RequestSpec] = {
    Request.GET_FEATURES: RequestSpec(_N, reply=True),
    Request.SET_FEATURES: RequestSpec(_Q),
    Request.SET_OWNER: RequestSpec(_N),
    Request.RESET_OWNER: RequestSpec(_N),
    Request.SET_MEM_TABLE: RequestSpec(PayloadKind.TABLE, FdRule.PER_REGION),
    Request.SET_VRING_NUM: RequestSpec(_S),
    Request.SET_VRING_ADDR: RequestSpec(PayloadKind.ADDR),
    Request.SET_VRING_BASE: RequestSpec(_S),
    Request.GET_VRING_BASE: RequestSpec(_S, reply=True),
    Request.SET_VRING_KICK: RequestSpec(_Q, FdRule.UNLESS_NOFD),
    Request.SET_VRING_CALL: RequestSpec(_Q, FdRule.UNLESS_NOFD),
    Request.SET_VRING_ERR: RequestSpec(_Q, FdRule.UNLESS_NOFD),
    Request.GET_PROTOCOL_FEATURES: RequestSpec(_N, reply=True),
    Request.SET_PROTOCOL_FEATURES: RequestSpec(_Q),
    Request.GET_QUEUE_NUM: RequestSpec(_N, reply=True),
    Request.SET_VRING_ENABLE: RequestSpec(_S),
    Request.SET_BACKEND_REQ_FD: RequestSpec(_N, FdRule.ONE),
    Request.GET_CONFIG: RequestSpec(PayloadKind.CONFIG, reply=True),
    Request.SET_CONFIG: RequestSpec(PayloadKind.CONFIG),
    Request.GPU_SET_SOCKET: RequestSpec(_N, FdRule.ONE),
    Request.RESET_DEVICE: RequestSpec(_N),
    Request.VRING_KICK: RequestSpec(_S),  # in-band kick (INBAND_NOTIFICATIONS): served by an extension
    Request.GET_MAX_MEM_SLOTS: RequestSpec(_N, reply=True),
    Request.ADD_MEM_REG: RequestSpec(PayloadKind.REGION, FdRule.ONE),
    Request.REM_MEM_REG: RequestSpec(PayloadKind.REGION, FdRule.ZERO_OR_ONE),
    Request.SET_STATUS: RequestSpec(_Q),
    Request.GET_STATUS: RequestSpec(_N, reply=True),
}


# -- framing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The 12-byte message header."""

    request: int
    flags: int
    size: int

    @property
    def need_reply(self) -> bool:
        """The front-end asks for a REPLY_ACK answer (flags bit 3)."""
        return bool(self.flags & FLAG_NEED_REPLY)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        """Decode exactly :data:`HEADER_SIZE` bytes."""
        return cls(*HEADER.unpack(raw))


@dataclass(frozen=True)
class Frame:
    """One whole message as bytes: its header and payload."""

    header: Header
    payload: bytes


@dataclass(frozen=True)
class FramingError:
    """The stream is broken beyond repair (a payload larger than :data:`MAX_PAYLOAD`): close the connection."""

    header: Header
    reason: str


class Framer:
    """Cuts a byte stream into :class:`Frame` s. Feed it at most :meth:`needed` bytes at a time."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: Header | None = None
        self.broken: FramingError | None = None

    def needed(self) -> int:
        """Bytes still missing from the current header or payload (0 once broken)."""
        if self.broken is not None:
            return 0
        if self._header is None:
            return HEADER_SIZE - len(self._buf)
        return self._header.size - len(self._buf)

    @property
    def mid_message(self) -> bool:
        """Some bytes of a message arrived and the message is not whole yet."""
        return bool(self._buf) or self._header is not None

    def feed(self, data: bytes) -> Frame | FramingError | None:
        """Take ``data`` (at most :meth:`needed` bytes; the excess is a ``ValueError``, a caller bug). Returns the
        frame it completes, the framing error it reveals, or None while incomplete."""
        if self.broken is not None:
            return self.broken
        if len(data) > self.needed():
            raise ValueError("fed more bytes than needed")
        self._buf += data
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            header = Header.unpack(bytes(self._buf))
            self._buf.clear()
            if header.size > MAX_PAYLOAD:
                self.broken = FramingError(header, f"{request_name(header.request)}: payload of {header.size} "
                                                   f"bytes is larger than {MAX_PAYLOAD}")
                return self.broken
            self._header = header
        if len(self._buf) < self._header.size:
            return None
        frame = Frame(self._header, bytes(self._buf))
        self._header = None
        self._buf.clear()
        return frame


# -- decoding -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A well-formed request: its code, payload and descriptors (the receiver owns them now)."""

    request: Request
    flags: int
    payload: Payload
    fds: tuple[int, ...] = ()

    @property
    def need_reply(self) -> bool:
        """The front-end asked for a REPLY_ACK answer."""
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(frozen=True)
class ProtocolError:
    """A request that cannot be served: what was wrong. ``request`` is the raw code; ``fds`` must be closed."""

    request: int
    flags: int
    reason: str
    fds: tuple[int, ...] = field(default=())

    @property
    def need_reply(self) -> bool:
        """The front-end asked for a REPLY_ACK answer."""
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        """The request's name, or ``request <n>``."""
        return request_name(self.request)


def _region(raw: bytes, offset: int) -> MemRegion:
    return MemRegion(*_REGION.unpack_from(raw, offset))


def _decode_none(raw: bytes) -> Payload | str:
    return NoPayload() if not raw else f"expected no payload, got {len(raw)} bytes"


def _decode_u64(raw: bytes) -> Payload | str:
    return U64(_U64.unpack(raw)[0]) if len(raw) == _U64.size else f"expected 8 bytes, got {len(raw)}"


def _decode_state(raw: bytes) -> Payload | str:
    return VringState(*_STATE.unpack(raw)) if len(raw) == _STATE.size else f"expected 8 bytes, got {len(raw)}"


def _decode_addr(raw: bytes) -> Payload | str:
    return VringAddr(*_ADDR.unpack(raw)) if len(raw) == _ADDR.size else f"expected {_ADDR.size} bytes, got {len(raw)}"


def _decode_table(raw: bytes) -> Payload | str:
    if len(raw) < _TABLE_HEAD.size:
        return f"memory table of {len(raw)} bytes is shorter than its {_TABLE_HEAD.size}-byte head"
    n, _padding = _TABLE_HEAD.unpack_from(raw)
    if not 1 <= n <= MAX_TABLE_REGIONS:
        return f"memory table with {n} regions (want 1..{MAX_TABLE_REGIONS})"
    want = _TABLE_HEAD.size + n * _REGION.size
    # UML's virtio_uml sends its whole two-slot array (72 bytes) with num 1: unused slots after the n regions are
    # tolerated, up to the largest table; fewer bytes than the n regions need are not.
    if not want <= len(raw) <= _TABLE_HEAD.size + MAX_TABLE_REGIONS * _REGION.size:
        return f"memory table of {n} regions must be {want} bytes, got {len(raw)}"
    return MemTable(tuple(_region(raw, _TABLE_HEAD.size + i * _REGION.size) for i in range(n)))


def _decode_region(raw: bytes) -> Payload | str:
    want = 8 + _REGION.size
    return SingleRegion(_region(raw, 8)) if len(raw) == want else f"expected {want} bytes, got {len(raw)}"


def _decode_config(raw: bytes) -> Payload | str:
    if len(raw) < _CONFIG_HEAD.size:
        return f"config payload of {len(raw)} bytes is shorter than its {_CONFIG_HEAD.size}-byte head"
    offset, size, flags = _CONFIG_HEAD.unpack_from(raw)
    if size > MAX_CONFIG_SIZE:
        return f"config size {size} is larger than {MAX_CONFIG_SIZE}"
    if len(raw) != _CONFIG_HEAD.size + size:
        return f"config payload says {size} bytes but carries {len(raw) - _CONFIG_HEAD.size}"
    return ConfigSpace(offset, size, flags, bytes(raw[_CONFIG_HEAD.size:]))


_DECODERS: dict[PayloadKind, Callable[[bytes], Payload | str]] = {
    PayloadKind.NONE: _decode_none,
    PayloadKind.U64: _decode_u64,
    PayloadKind.STATE: _decode_state,
    PayloadKind.ADDR: _decode_addr,
    PayloadKind.TABLE: _decode_table,
    PayloadKind.REGION: _decode_region,
    PayloadKind.CONFIG: _decode_config,
}


def _fds_expected(rule: FdRule, payload: Payload) -> tuple[int, int]:
    """(fewest, most) descriptors the request may carry."""
    if rule is FdRule.ONE:
        return 1, 1
    if rule is FdRule.PER_REGION and isinstance(payload, MemTable):
        return len(payload.regions), len(payload.regions)
    if rule is FdRule.UNLESS_NOFD and isinstance(payload, U64):
        n = 0 if payload.value & VRING_NOFD else 1
        return n, n
    if rule is FdRule.ZERO_OR_ONE:
        return 0, 1
    if rule is FdRule.ANY:
        return 0, MAX_FDS
    return 0, 0


def decode(frame: Frame, fds: tuple[int, ...] = ()) -> Message | ProtocolError:
    """The typed message of ``frame`` with its descriptors, or the :class:`ProtocolError` it is. Never raises."""
    h = frame.header
    if h.flags & ~KNOWN_FLAGS or h.flags & VERSION_MASK != VERSION:
        return ProtocolError(h.request, h.flags, f"flags {h.flags:#x}: want version {VERSION}, no other bits", fds)
    if h.flags & FLAG_REPLY:
        return ProtocolError(h.request, h.flags, "a request must not carry the reply flag", fds)
    try:
        request = Request(h.request)
    except ValueError:
        return ProtocolError(h.request, h.flags, "unknown request", fds)
    spec = REQUESTS.get(request)
    if spec is None:
        return ProtocolError(h.request, h.flags, "request not supported by pyvirtio", fds)
    payload = _DECODERS[spec.payload](frame.payload)
    if isinstance(payload, str):
        return ProtocolError(h.request, h.flags, payload, fds)
    lo, hi = _fds_expected(spec.fds, payload)
    if not lo <= len(fds) <= hi:
        want = str(lo) if lo == hi else f"{lo}..{hi}"
        return ProtocolError(h.request, h.flags, f"carries {len(fds)} file descriptors, want {want}", fds)
    return Message(request, h.flags, payload, fds)


# -- encoding -----------------------------------------------------------------------------------------------------


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    """Header and payload of one message."""
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes = b"") -> bytes:
    """A back-end's reply: same request code, flags = version | reply."""
    return encode(request, payload, VERSION | FLAG_REPLY)


def pack_u64(value: int) -> bytes:
    """A u64 payload."""
    return _U64.pack(value & 0xFFFFFFFFFFFFFFFF)


def pack_state(index: int, num: int) -> bytes:
    """A vring state payload."""
    return _STATE.pack(index & 0xFFFFFFFF, num & 0xFFFFFFFF)


def pack_addr(a: VringAddr) -> bytes:
    """A vring address payload."""
    return _ADDR.pack(a.index, a.flags, a.desc, a.used, a.avail, a.log)


def pack_region(r: MemRegion) -> bytes:
    """One memory region description (32 bytes)."""
    return _REGION.pack(r.gpa, r.size, r.uva, r.mmap_offset)


def pack_table(regions: tuple[MemRegion, ...] | list[MemRegion]) -> bytes:
    """A SET_MEM_TABLE payload."""
    return _TABLE_HEAD.pack(len(regions), 0) + b"".join(pack_region(r) for r in regions)


def pack_single_region(r: MemRegion) -> bytes:
    """An ADD_MEM_REG / REM_MEM_REG payload."""
    return bytes(8) + pack_region(r)


def pack_config(offset: int, data: bytes, flags: int = 0) -> bytes:
    """A GET_CONFIG / SET_CONFIG payload."""
    return _CONFIG_HEAD.pack(offset, len(data), flags) + data
