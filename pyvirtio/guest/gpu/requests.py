"""How the guest virtio-gpu driver talks to the device: one request per command, its response, fences.

Every command is one chain ``[request (readable), response (writable)]`` (Linux ``virtio_gpu_queue_ctrl_buffer``,
virtio 1.4 §5.7.6.7 request header); mem entries and 3D streams travel as a second readable segment; cursor
commands (§5.7.6.10) carry no response buffer. Responses are reclaimed in :meth:`GpuRequests.vq_callback`.
Fenced commands get increasing fence ids; completing fence N signals every fence <= N (§5.7.6.5, like
``virtio_gpu_fence_event_process``). Requests still queued when the device is reset are reclaimed unanswered
(:meth:`GpuRequests.reclaim`): their guest memory is freed and they are marked ``lost``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError
from pyvirtio.guest.driver import SubmissionsStopped, VirtioDriver
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import GPU_CONTROLQ, GPU_CTRL_HDR_SIZE, GPU_CURSORQ, GpuResp
from pyvirtio.virtqueue.driver import QueueFull

__all__ = ["GpuCommandError", "GpuRequest", "GpuRequests"]

_HDR_PACK = protocol.HDR.pack
_HDR_UNPACK = protocol.HDR.unpack_from
_OK_NODATA = int(GpuResp.OK_NODATA)
_ERR_UNSPEC = int(GpuResp.ERR_UNSPEC)


class GpuCommandError(DriverError):
    """The device answered a command with an error response (Linux logs ``response 0x%x (command 0x%x)``)."""

    def __init__(self, cmd: int, resp: int) -> None:
        super().__init__(f"{protocol.command_name(cmd)} answered {protocol.command_name(resp)}")
        self.cmd = cmd
        self.resp = resp


@dataclass(eq=False)
class GpuRequest:
    """One submitted command and, once ``done``, its response."""

    cmd: int
    queue: int
    block: int  # guest allocation: request, then response
    resp_addr: int
    resp_len: int
    fence_id: int | None = None
    extra: int | None = None  # guest allocation of the second readable segment
    on_done: Callable[[GpuRequest], None] | None = None
    done: bool = False
    resp_type: int = 0
    resp_flags: int = 0
    resp_fence_id: int = 0
    resp_ctx_id: int = 0
    resp_ring_idx: int = 0
    response: bytes = b""
    written: int = 0
    lost: bool = False  # reclaimed unanswered after a reset

    @property
    def ok(self) -> bool:
        """A cursor command (no response), or an OK_* response (§5.7.6.7)."""
        return self.queue == GPU_CURSORQ or GpuResp.OK_NODATA <= self.resp_type < GpuResp.ERR_UNSPEC

    @property
    def payload(self) -> bytes:
        """The response after its header."""
        return self.response[GPU_CTRL_HDR_SIZE:]


class GpuRequests(VirtioDriver):
    """The request layer of the virtio-gpu driver: submit, complete, wait, fences, reclaim."""

    TIMEOUT = 1000 * MS

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.errors: list[tuple[int, int]] = []  # (command, error response) pairs
        self.lost: list[GpuRequest] = []  # requests reclaimed unanswered after a reset
        self.last_fence = 0
        self._next_fence = 1
        self._pending: set[GpuRequest] = set()

    def submit(
        self,
        cmd: int,
        body: bytes = b"",
        *,
        queue: int = GPU_CONTROLQ,
        fence: bool = False,
        ctx_id: int = 0,
        ring_idx: int | None = None,
        resp_len: int = GPU_CTRL_HDR_SIZE,
        extra: bytes | None = None,
        on_done: Callable[[GpuRequest], None] | None = None,
    ) -> GpuRequest:
        """Queue one command (§5.7.6.7): ``[header+body, extra?]`` readable, a ``resp_len`` response writable
        (none on the cursor queue); ``fence`` sets VIRTIO_GPU_FLAG_FENCE with the next fence id, ``ring_idx``
        sets VIRTIO_GPU_FLAG_INFO_RING_IDX.

        Refused with :class:`~pyvirtio.guest.driver.SubmissionsStopped` while submissions are stopped (the device
        is being suspended or is suspended: Device Suspend, no new buffers, no notifications), before anything is
        allocated; :class:`DriverError` when the queue is not set up."""
        # spec: drv:suspend#3
        if not self.submitting:
            raise SubmissionsStopped(f"{self.name}: {protocol.command_name(cmd)} refused: submissions are "
                                     "stopped (device suspended)")
        flags = 0
        fence_id = 0
        if fence:
            flags |= protocol.FLAG_FENCE
            fence_id = self._next_fence
            self._next_fence += 1
        if ring_idx is not None:
            flags |= protocol.FLAG_INFO_RING_IDX
        req_bytes = _HDR_PACK(cmd, flags, fence_id, ctx_id, ring_idx or 0) + body
        if queue == GPU_CURSORQ:
            resp_len = 0
        alloc = self.alloc
        n = len(req_bytes)
        block = alloc.alloc(n + resp_len, 8)
        # request, then a zeroed response buffer (the block lies in the allocator's window: no lookup needed)
        o = alloc.window_off + block - alloc.base
        alloc.window_buf[o : o + n + resp_len] = req_bytes + bytes(resp_len) if resp_len else req_bytes
        resp_addr = block + n
        out = [(block, n)]
        extra_addr = None
        if extra:
            extra_addr = self.alloc.alloc_bytes(extra, 8)
            out.append((extra_addr, len(extra)))
        req = GpuRequest(cmd, queue, block, resp_addr, resp_len, fence_id if fence else None, extra_addr, on_done)
        ins = [(resp_addr, resp_len)] if resp_len else []
        try:
            try:
                self.add_buffer(queue, out, ins, req)  # virtqueue_add_sgs
            except QueueFull:
                self._add_when_full(queue, out, ins, req)
        except BaseException:
            self.alloc.free(block)
            if extra_addr is not None:
                self.alloc.free(extra_addr)
            raise
        self._pending.add(req)
        self.kick(queue)
        return req

    def _add_when_full(self, queue: int, out: list[tuple[int, int]], ins: list[tuple[int, int]],
                       req: GpuRequest) -> None:
        """``virtqueue_add_sgs`` found the ring full: notify, wait for the device to return buffers and try again
        until the buffer fits (Linux ``virtio_gpu_queue_ctrl_sgs`` waits on ``ctrlq.ack_queue``)."""
        while True:
            self.kick(queue)
            self.wait_for(lambda: self.vqs[queue].num_free >= len(out) + len(ins), self.TIMEOUT,
                          f"queue {queue} stayed full")
            try:
                self.add_buffer(queue, out, ins, req)
                return
            except QueueFull:
                pass

    def vq_callback(self, index: int) -> None:
        """Reclaim used buffers (Linux ``virtio_gpu_dequeue_ctrl_func`` / ``_cursor_func``)."""
        if index >= len(self.vqs):
            return
        for token, length in self.vqs[index].drain_used():
            assert isinstance(token, GpuRequest)
            self._complete(token, length)

    def _complete(self, req: GpuRequest, length: int) -> None:
        """Read the response header, record errors and the fence, free the request's guest memory."""
        alloc = self.alloc
        req.written = length
        if req.resp_len:
            n = length if length < req.resp_len else req.resp_len
            o = req.resp_addr - alloc.base
            if o >= 0 and o + n <= alloc.size:  # in the allocator's window (it always is): no lookup needed
                o += alloc.window_off
                req.response = alloc.window_buf[o : o + n]
            else:
                req.response = alloc.mem.read(req.resp_addr, n)
        if len(req.response) >= GPU_CTRL_HDR_SIZE:
            rtype, rflags, fence_id, ctx_id, ring_idx = _HDR_UNPACK(req.response)  # the CtrlHdr fields
            req.resp_type, req.resp_flags = rtype, rflags
            req.resp_fence_id, req.resp_ctx_id, req.resp_ring_idx = fence_id, ctx_id, ring_idx
            if rflags & protocol.FLAG_FENCE and fence_id > self.last_fence:
                self.last_fence = fence_id
        elif req.queue == GPU_CONTROLQ:
            req.resp_type = GpuResp.ERR_UNSPEC  # no response header at all
        if not (req.queue == GPU_CURSORQ or _OK_NODATA <= req.resp_type < _ERR_UNSPEC):  # not req.ok
            self.errors.append((req.cmd, req.resp_type))
        self.alloc.free(req.block)
        if req.extra is not None:
            self.alloc.free(req.extra)
        req.done = True
        self._pending.discard(req)
        if req.on_done is not None:
            req.on_done(req)

    def reclaim(self) -> None:
        """After a reset: take back every request still in a queue, unanswered (``virtqueue_detach_unused_buf``):
        its guest memory is freed, it is marked ``lost`` and listed on :attr:`lost`."""
        for vq in self.vqs:
            for token in vq.detach_unused():
                if isinstance(token, GpuRequest):
                    self._abandon(token)

    def _abandon(self, req: GpuRequest) -> None:
        self.alloc.free(req.block)
        if req.extra is not None:
            self.alloc.free(req.extra)
        req.lost = req.done = True
        self._pending.discard(req)
        self.lost.append(req)

    # -- waiting ----------------------------------------------------------------------------------------------

    def wait(self, req: GpuRequest, *, check: bool = True, timeout: int | None = None) -> GpuRequest:
        """Run the machine until ``req`` is answered; raise :class:`GpuCommandError` on an error response
        (``check``), :class:`~pyvirtio.errors.DriverTimeout` when no answer comes in time and
        :class:`~pyvirtio.guest.driver.DeviceNeedsReset` as soon as the device needs a reset (virtio 1.4 §2.1.1)."""
        # wait_for(lambda: req.done, ...) with one predicate call per event (and the failure named only on failure)
        self.platform.run_until(lambda: req.done or self.needs_reset_seen, timeout or self.TIMEOUT)
        if not req.done:
            self._wait_failed(f"no response to {protocol.command_name(req.cmd)}")
        if check and not (req.queue == GPU_CURSORQ or _OK_NODATA <= req.resp_type < _ERR_UNSPEC):  # not req.ok
            raise GpuCommandError(req.cmd, req.resp_type)
        return req

    def wait_fence(self, fence_id: int) -> None:
        """Wait until fence ``fence_id`` (and so every earlier one, §5.7.6.5) is signalled (:meth:`wait_for`)."""
        self.wait_for(lambda: self.last_fence >= fence_id, self.TIMEOUT, f"fence {fence_id} not signalled")

    def wait_idle(self) -> None:
        """Wait until every submitted command is answered (:meth:`wait_for`)."""
        self.wait_for(lambda: not self._pending, self.TIMEOUT, "commands still pending")

    @property
    def pending(self) -> int:
        """How many submitted commands are not answered yet."""
        return len(self._pending)

    def _finish(self, req: GpuRequest, wait: bool) -> GpuRequest:
        return self.wait(req) if wait else req
