"""A served device driven through the vhost-user protocol by a Python front-end (what QEMU does), on virtual
time: set-up, the model unchanged behind it, ring stop and restart, notifications, faults, the monitor."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from pyvirtio.clock import MS, US
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.rng import EntropySource, Rng
from pyvirtio.host.testdev import TestDevice
from pyvirtio.spec.constants import DescFlag, Feature, Status, bit
from pyvirtio.vhost_user.backend import BASE_PROTOCOL_FEATURES
from pyvirtio.vhost_user.catalog import ExtensionHost, ServeSpec
from pyvirtio.vhost_user.messages import (
    F_PROTOCOL_FEATURES,
    FLAG_REPLY,
    VERSION,
    Message,
    ProtocolFeature,
    Request,
    pack_config,
    pack_state,
    pack_u64,
)
from pyvirtio.vhost_user.transport import StopPolicy

from .frontend import Frontend, publish_raw

SEED = 7
EVENT_IDX, INDIRECT = bit(Feature.EVENT_IDX), bit(Feature.INDIRECT_DESC)


@pytest.fixture
def fe() -> Iterator[Frontend]:
    f = Frontend(seed=SEED)
    yield f
    f.close()


def test_rng_serves_its_entropy_stream(fe: Frontend) -> None:
    """virtio 1.4 §5.4.6: the served Rng fills each buffer from its seeded stream and says how many bytes; the
    used-buffer notification is a write to the ring's call eventfd."""
    fe.start()
    a = fe.submit(0, 48)
    b = fe.submit(0, 64)
    fe.run()
    assert fe.used(0) == [(0, 48), (1, 64)]
    stream = EntropySource(SEED).read(112)
    assert fe.mem.read(a, 48) + fe.mem.read(b, 64) == stream
    assert fe.calls(0) >= 1
    dev = fe.server.device
    assert dev.lifecycle is DeviceLifecycle.LIVE
    assert fe.server.monitor.record.status_sequence == [0x01, 0x03, 0x0B, 0x0F]
    assert dev.driver_features == bit(Feature.VERSION_1) | EVENT_IDX | INDIRECT


def test_protocol_answers(fe: Frontend) -> None:
    """GET_* answers: the features with VHOST_USER_F_PROTOCOL_FEATURES, the protocol features offered, one
    queue, 32 memory slots; REPLY_ACK answers 0 on success."""
    f = fe.request(Request.GET_FEATURES)
    assert f is not None and f.header.flags == VERSION | FLAG_REPLY
    assert f.u64 & (1 << F_PROTOCOL_FEATURES) and f.u64 & bit(Feature.VERSION_1)
    pf = fe.request(Request.GET_PROTOCOL_FEATURES)
    assert pf is not None and pf.u64 == BASE_PROTOCOL_FEATURES  # no CONFIG: the rng has no config space
    assert fe.ack(Request.SET_PROTOCOL_FEATURES, pack_u64(pf.u64)) == 0
    q = fe.request(Request.GET_QUEUE_NUM)
    slots = fe.request(Request.GET_MAX_MEM_SLOTS)
    assert q is not None and q.u64 == 1 and slots is not None and slots.u64 == 32
    assert fe.ack(Request.SET_OWNER) == 0
    st = fe.request(Request.GET_STATUS)
    assert st is not None and st.u64 == 0
    assert fe.ack(Request.SET_STATUS, pack_u64(Status.FEATURES_OK)) == 0
    st = fe.request(Request.GET_STATUS)
    assert st is not None and st.u64 == Status.FEATURES_OK


def test_set_mem_table_path(fe: Frontend) -> None:
    """Without CONFIGURE_MEM_SLOTS the memory comes whole with SET_MEM_TABLE; the device works the same."""
    fe.init(protocol_mask=~(1 << ProtocolFeature.CONFIGURE_MEM_SLOTS))
    fe.set_memory()
    fe.set_features()
    fe.setup_ring(0)
    addr = fe.submit(0, 32)
    fe.run()
    assert fe.used(0) == [(0, 32)] and fe.mem.read(addr, 32) == EntropySource(SEED).read(32)


def test_without_protocol_features_rings_start_enabled() -> None:
    """VHOST_USER_F_PROTOCOL_FEATURES not negotiated: a ring is enabled as soon as it starts (no ENABLE)."""
    fe = Frontend(seed=SEED)
    try:
        fe.init()
        fe.set_memory()
        fe.features = bit(Feature.VERSION_1)
        assert fe.ack(Request.SET_FEATURES, pack_u64(fe.features)) == 0
        fe.setup_ring(0, enable=False)
        fe.submit(0, 16)
        fe.run()
        assert fe.used(0) == [(0, 16)]
    finally:
        fe.close()


def test_indirect_chain_and_no_event_idx(fe: Frontend) -> None:
    """INDIRECT_DESC: a two-segment buffer arrives as one indirect table and both segments are filled in
    order; without EVENT_IDX the device's notification follows avail.flags (§2.7.7)."""
    fe.init()
    fe.set_memory()
    fe.set_features(bit(Feature.VERSION_1) | INDIRECT)
    ring = fe.setup_ring(0)
    a, b = fe.alloc.alloc(24), fe.alloc.alloc(40)
    ring.queue.add([], [(a, 24), (b, 40)], "two")
    os.eventfd_write(ring.kick, 1)
    fe.run()
    assert fe.used(0) == [("two", 64)]
    assert fe.mem.read(a, 24) + fe.mem.read(b, 40) == EntropySource(SEED).read(64)
    assert fe.calls(0) == 1
    assert not fe.server.device.queues[0].event_idx and fe.server.device.queues[0].indirect


def test_get_vring_base_stops_and_restart_continues(fe: Frontend) -> None:
    """GET_VRING_BASE stops the ring (kicks are then ignored) and answers the next index to process; a
    restart from that base serves the buffers made available meanwhile, and nothing twice."""
    fe.start()
    fe.submit(0, 16)
    fe.run()
    assert fe.used(0) == [(0, 16)]
    base = fe.stop_ring(0)
    assert base == 1
    fe.submit(0, 16)  # made available while stopped: not served
    fe.run()
    assert fe.used(0) == []
    fe.restart_ring(0, base)
    fe.run()
    assert fe.used(0) == [(1, 16)]
    seq = fe.server.monitor.record.status_sequence
    assert seq == [0x01, 0x03, 0x0B, 0x0F, 0x00, 0x01, 0x03, 0x0B, 0x0F]  # StopPolicy.RESET for the rng


def test_stop_drains_requests_in_flight() -> None:
    """A request in flight when GET_VRING_BASE arrives completes before the answer (here: 5 ms of injected
    delay), so the base counts it and a restart does not take it again."""
    fe = Frontend(seed=SEED, faults=("delay=5",))
    try:
        fe.start()
        fe.submit(0, 16)
        fe.pump()
        fe.scheduler.run_for(6 * MS)  # taken after one 5 ms step, filled after another
        assert fe.server.device.inflight() == 1
        base = fe.stop_ring(0)
        assert base == 1 and fe.used(0) == [(0, 16)]
    finally:
        fe.close()


def test_stop_abandons_a_hung_request() -> None:
    """hang-after: a request that never completes is abandoned at the stop (after the bound), and noted."""
    fe = Frontend(seed=SEED, faults=("hang-after=1",))
    try:
        fe.start()
        fe.submit(0, 16)
        fe.run()
        fe.submit(0, 16)
        fe.run(10 * MS)
        assert fe.used(0) == [(0, 16)]
        assert fe.server.device.faults.backend_hangs
        fe.stop_ring(0)
        rec = fe.server.monitor.record
        assert any("abandoned" in n.text for n in rec.notes)
        assert any(f.what == "hang-after" for f in rec.faults)
    finally:
        fe.close()


def test_disabled_ring_defers_kicks(fe: Frontend) -> None:
    """SET_VRING_ENABLE 0: a kick is not passed on to the model; enabling the ring again looks at the queue."""
    fe.start()
    fe.run()
    assert fe.ack(Request.SET_VRING_ENABLE, pack_state(0, 0)) == 0
    fe.submit(0, 16)
    fe.run()
    assert fe.used(0) == []
    assert fe.ack(Request.SET_VRING_ENABLE, pack_state(0, 1)) == 0
    fe.run()
    assert fe.used(0) == [(0, 16)]


def test_unoffered_features_from_the_front_end_are_noted(fe: Frontend) -> None:
    """QEMU 7.2 passes bits the back-end did not offer: they are noted and ignored, the device still works."""
    fe.init()
    fe.set_memory()
    fe.features = bit(Feature.VERSION_1) | EVENT_IDX | bit(Feature.NOTIFY_ON_EMPTY)
    assert fe.ack(Request.SET_FEATURES, pack_u64(fe.features | 1 << F_PROTOCOL_FEATURES)) == 0
    fe.setup_ring(0)
    fe.submit(0, 8)
    fe.run()
    assert fe.used(0) == [(0, 8)]
    assert any("does not offer" in n.text for n in fe.server.monitor.record.notes)


def test_needs_reset_fault_signals_the_error_eventfd() -> None:
    """needs-reset-after=K: after K completions the model sets DEVICE_NEEDS_RESET, stops serving, signals the
    rings' error eventfds, and GET_STATUS shows the bit; a ring restart after the stop brings it back."""
    fe2 = Frontend(seed=SEED, faults=("needs-reset-after=2",))
    try:
        fe2.start()
        fe2.submit(0, 8)
        fe2.submit(0, 8)
        fe2.run()
        fe2.submit(0, 8)
        fe2.run()
        assert [n for _, n in fe2.used(0)] == [8, 8]
        assert fe2.errors(0) == 1
        st = fe2.request(Request.GET_STATUS)
        assert st is not None and st.u64 & Status.DEVICE_NEEDS_RESET
        assert fe2.server.device.lifecycle is DeviceLifecycle.NEEDS_RESET
    finally:
        fe2.close()


def test_reset_device_releases_the_rings(fe: Frontend) -> None:
    """RESET_DEVICE: every ring's descriptors closed, the model reset, ready to be set up again."""
    fe.start()
    session = fe.session
    kick = session.rings[0].kick_fd
    assert kick is not None
    assert fe.ack(Request.RESET_DEVICE) == 0
    assert session.rings[0].kick_fd is None and fe.server.device.status == 0
    with pytest.raises(OSError):
        os.fstat(kick)
    fe.set_features()
    fe.setup_ring(0)
    fe.submit(0, 8)
    fe.run()
    assert fe.used(0) == [(0, 8)]


def test_reset_owner_disables_the_rings(fe: Frontend) -> None:
    """RESET_OWNER (deprecated): rings disabled, nothing else."""
    fe.start()
    assert fe.ack(Request.RESET_OWNER) == 0
    assert not fe.session.rings[0].enabled


def test_disconnect_releases_every_descriptor() -> None:
    """The front-end goes away: no descriptor it passed stays open in the back-end, the memory is unmapped,
    the model is reset, and the summary is printed."""
    before = set(os.listdir("/proc/self/fd"))
    fe = Frontend(seed=SEED)
    fe.start()
    fe.submit(0, 8)
    fe.run()
    fe.sock.close()
    fe.pump()
    assert fe.session.closed and fe.server.memory.mapped == ()
    assert fe.server.device.status == 0
    assert any("connection 1 (rng) ended" in line for line in fe.out)
    fe.close()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_device_with_config_space() -> None:
    """PROTOCOL_F_CONFIG is offered when the model has a config space: GET_CONFIG reads it, SET_CONFIG writes
    the writable field through the model's own rules."""
    fe = Frontend(ServeSpec("testdev", lambda seed: TestDevice(), StopPolicy.KEEP), seed=SEED)
    try:
        fe.init()
        assert fe.protocol & (1 << ProtocolFeature.CONFIG)
        dev = fe.server.device
        assert isinstance(dev, TestDevice)
        dev.config[0:4] = (0x11223344).to_bytes(4, "little")
        r = fe.request(Request.GET_CONFIG, pack_config(0, bytes(8)))
        assert r is not None and r.payload[12:16] == bytes.fromhex("44332211")
        assert fe.ack(Request.SET_CONFIG, pack_config(4, (7).to_bytes(4, "little"))) == 0
        assert dev.config[4] == 7
        bad = fe.request(Request.GET_CONFIG, pack_config(12, bytes(8)))
        assert bad is not None and bad.payload == b""  # outside the 16 bytes: the empty error answer
    finally:
        fe.close()


def test_monitor_records_driver_violations_with_statements(fe: Frontend) -> None:
    """A guest ring breaking driver rules: a device-readable buffer on the entropy queue (drv:rng/operation#1)
    and a writable descriptor before a readable one (drv:split/framing#1) are recorded with their statement
    ids and times; the device still answers each buffer."""
    fe.start()
    buf = fe.alloc.alloc(64)
    f_next, f_write = int(DescFlag.NEXT), int(DescFlag.WRITE)
    publish_raw(fe, 0, [(buf, 16, f_next, 9), (buf + 16, 16, f_write, 0)], 8)  # readable then writable
    fe.run()
    publish_raw(fe, 0, [(buf, 16, f_write | f_next, 11), (buf + 16, 16, 0, 0)], 10)  # writable then readable
    fe.run()
    rec = fe.server.monitor.record
    ids = {s for f in rec.findings for s in f.statements}
    assert {"drv:rng/operation#1", "drv:split/framing#1"} <= ids
    assert all(f.t_ns >= 0 and f.source == "device-model" for f in rec.findings)
    report = fe.server.report()
    v = report["connections"][0]["violations"]
    assert v and {"t_s", "time", "statements", "clause", "rule", "detail"} <= set(v[0])


def test_monitor_checks_avail_flags(fe: Frontend) -> None:
    """With EVENT_IDX the driver keeps avail.flags at 0 (drv:split/used-event#2): a kick with flags 1 is a
    finding."""
    fe.start()
    lay = fe.rings[0].layout
    fe.mem.write_u16(lay.avail, 1)
    fe.submit(0, 8)
    os.eventfd_write(fe.rings[0].kick, 1)
    fe.run()
    assert any("drv:split/used-event#2" in f.statements for f in fe.server.monitor.record.findings)


def test_garbage_avail_index_sets_needs_reset(fe: Frontend) -> None:
    """A driver that moves avail.idx by more than the queue size: DEVICE_NEEDS_RESET (the spec's answer), the
    violation recorded as drv:split/avail#1, nothing raised."""
    fe.start()
    lay = fe.rings[0].layout
    fe.mem.write_u16(lay.avail + 2, 1000)
    os.eventfd_write(fe.rings[0].kick, 1)
    fe.run()
    assert fe.server.device.lifecycle is DeviceLifecycle.NEEDS_RESET
    assert any("drv:split/avail#1" in f.statements for f in fe.server.monitor.record.findings)


def test_delay_fault_slows_requests() -> None:
    """delay=MS: each device step takes that much longer (virtual time here)."""
    fe = Frontend(seed=SEED, faults=("delay=3",))
    try:
        fe.start()
        fe.submit(0, 8)
        fe.pump()
        fe.scheduler.run_for(5 * MS)
        assert fe.used(0) == []
        fe.scheduler.run_for(2 * MS)
        assert fe.used(0) == [(0, 8)]
        assert fe.server.device.latency == 3 * MS
    finally:
        fe.close()


def test_served_model_answers_at_host_speed() -> None:
    """The catalog serves the rng with no modelled latency (``--fault delay`` adds it back)."""
    fe = Frontend(seed=SEED)
    try:
        fe.start()
        fe.submit(0, 8)
        fe.pump()
        fe.scheduler.run_for(1 * US)
        assert fe.used(0) == [(0, 8)]
    finally:
        fe.close()


class _SocketExtension:
    """What the gpu display protocol will look like to the core: GPU_SET_SOCKET hands over a socket to watch."""

    requests = frozenset({Request.GPU_SET_SOCKET})

    def __init__(self, host: ExtensionHost) -> None:
        self.host = host
        self.sock: socket.socket | None = None
        self.seen: list[str] = []
        self.closed = False
        host.trace.listeners.append(lambda ev: self.seen.append(ev.kind.value))

    def handle(self, msg: Message) -> str | None:
        self.sock = socket.socket(fileno=msg.fds[0])
        self.host.readers.add_reader(self.sock.fileno(), lambda: None)
        return None

    def close(self) -> None:
        if self.sock is not None:
            self.host.readers.remove_reader(self.sock.fileno())
            self.sock.close()
        self.closed = True


def test_extension_requests_reach_the_extension() -> None:
    """A catalog entry with an extension gets its own requests (descriptors included) after SET_OWNER, follows
    the model's trace, and is closed with the connection; without one the request is refused."""
    made: list[_SocketExtension] = []

    def make(host: ExtensionHost) -> _SocketExtension:
        made.append(_SocketExtension(host))
        return made[-1]

    spec = ServeSpec("rng+ext", lambda seed: Rng("rng", seed=seed, latency=0), StopPolicy.KEEP, extension=make)
    fe = Frontend(spec, seed=SEED)
    a, b = socket.socketpair()
    try:
        assert fe.ack(Request.GPU_SET_SOCKET, b"", [b.fileno()]) == 1  # before SET_OWNER
        fe.start()
        assert fe.ack(Request.GPU_SET_SOCKET, b"", [b.fileno()]) == 0
        ext = made[0]
        assert ext.sock is not None and "status" in ext.seen
    finally:
        fe.close()
        a.close()
        b.close()
    assert made[0].closed
    plain = Frontend(seed=SEED)
    try:
        plain.init()
        c, d = socket.socketpair()
        assert plain.ack(Request.GPU_SET_SOCKET, b"", [d.fileno()]) == 1
        c.close()
        d.close()
    finally:
        plain.close()
