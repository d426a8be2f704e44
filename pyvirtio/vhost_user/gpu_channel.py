"""One vhost-user-gpu display socket (from one ``GPU_SET_SOCKET``), driven without ever blocking the server.

Contract:

* the socket is non-blocking; :meth:`DisplayChannel.send` queues whole messages and writes what the socket takes
  now. While bytes are left, the channel waits for the socket to become writable through a private epoll
  instance (readable exactly when the socket is writable), registered with the server's event loop like any
  descriptor: no thread, no busy waiting, and a front-end that reads slowly never stalls the vhost-user
  connection (QEMU reads the display socket and the vhost-user socket from the same thread: a back-end that
  blocked on one could deadlock the other);
* when the queue empties, ``on_drained`` is called: the owner produces the next messages from what changed
  meanwhile (so the front-end always gets the newest pixels, and at most one frame waits per scanout);
* replies are parsed with :class:`~pyvirtio.vhost_user.gpu_protocol.ReplyParser` and matched, in order, to the
  requests that expect one (:meth:`DisplayChannel.request`); each goes to ``on_reply``;
* the end of the stream (the front-end closed its end: QEMU does so whenever the guest clears DRIVER_OK), a
  socket error or a broken stream closes the channel once, calls ``on_closed`` with the reason, and releases
  every descriptor; nothing raises into the event loop.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections import deque
from collections.abc import Callable

from pyvirtio.vhost_user.extension import Readers
from pyvirtio.vhost_user.gpu_protocol import FLAG_REPLY, GpuRequest, Reply, ReplyParser, encode, request_name

#: Most bytes read from the front-end per readable event.
READ_CHUNK = 65536


class DisplayChannel:
    """The back-end's end of a display socket (see the module contract)."""

    def __init__(self, sock: socket.socket, readers: Readers, *, on_reply: Callable[[GpuRequest, bytes], None],
                 on_closed: Callable[[str], None], on_drained: Callable[[], None],
                 on_problem: Callable[[str], None]) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.readers = readers
        self._on_reply = on_reply
        self._on_closed = on_closed
        self._on_drained = on_drained
        self._on_problem = on_problem
        self._out: deque[memoryview] = deque()
        self.queued = 0  # bytes queued and not yet written
        self.sent_bytes = 0
        self.sent_messages = 0
        self._waiting: deque[GpuRequest] = deque()  # requests whose reply is due, in order
        self._parser = ReplyParser()
        self._ep = select.epoll()
        self._ep.register(sock.fileno(), 0)
        self._armed = False
        self.closed = False
        self.fd = sock.fileno()
        readers.add_reader(self.fd, self._on_readable)
        readers.add_reader(self._ep.fileno(), self._on_writable)

    # -- output -----------------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Open and nothing left to write."""
        return not self.closed and not self._out

    def send(self, *parts: bytes) -> None:
        """Queue one message (its parts in order) and write what the socket takes now."""
        if self.closed:
            return
        for p in parts:
            if p:
                self._out.append(memoryview(p))
                self.queued += len(p)
        self.sent_messages += 1
        self._flush()

    def request(self, req: GpuRequest, payload: bytes = b"") -> None:
        """Send a request that expects a reply (it goes to ``on_reply`` when it arrives)."""
        if self.closed:
            return
        self._waiting.append(req)
        self.send(encode(req, payload))

    def _flush(self) -> None:
        out = self._out
        while out:
            try:
                n = self.sock.send(out[0])
            except BlockingIOError:
                self._arm(True)
                return
            except InterruptedError:
                continue
            except OSError as e:
                self.close(f"cannot write the display socket: {e.strerror or e}")
                return
            self.queued -= n
            self.sent_bytes += n
            if n == len(out[0]):
                out.popleft()
            else:
                out[0] = out[0][n:]
        self._arm(False)

    def _arm(self, on: bool) -> None:
        if on != self._armed and not self.closed:
            self._ep.modify(self.fd, select.EPOLLOUT if on else 0)
            self._armed = on

    def _on_writable(self) -> None:
        with contextlib.suppress(OSError):
            self._ep.poll(0)  # level-triggered: reading the events is enough; the socket says the rest
        if self.closed:
            return
        self._flush()
        if self.idle:
            self._on_drained()

    # -- input ------------------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.close(f"display socket error: {e.strerror or e}")
                return
            if not data:
                self.close("the front-end closed the display socket")
                return
            for reply in self._parser.feed(data):
                self._reply(reply)
            if self._parser.broken is not None:
                self._on_problem(f"display socket: {self._parser.broken}")
                self.close("broken display stream")
                return

    def _reply(self, reply: Reply) -> None:
        name = request_name(reply.request)
        if not reply.flags & FLAG_REPLY:
            self._on_problem(f"display socket: the front-end sent request {name} (only replies are expected)")
            return
        if not self._waiting or self._waiting[0] != reply.request:
            want = self._waiting[0].name if self._waiting else "none"
            self._on_problem(f"display socket: unexpected reply {name} (waiting for {want})")
            return
        self._on_reply(self._waiting.popleft(), reply.payload)

    # -- the end ----------------------------------------------------------------------------------------------

    def close(self, why: str = "closed") -> None:
        """Close the socket and the private epoll, stop watching both, tell ``on_closed`` (once)."""
        if self.closed:
            return
        self.closed = True
        self.readers.remove_reader(self.fd)
        self.readers.remove_reader(self._ep.fileno())
        self._out.clear()
        self.queued = 0
        with contextlib.suppress(OSError):
            self._ep.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._on_closed(why)


__all__ = ["READ_CHUNK", "DisplayChannel"]
