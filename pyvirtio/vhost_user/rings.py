"""A vring as the vhost-user front-end configures it, and its states as data ("Ring states").

Contract. A ring is *stopped* or *started*, and independently *enabled* or not (SET_VRING_ENABLE; a ring
starts enabled when VHOST_USER_F_PROTOCOL_FEATURES was not negotiated). Every ring message is a
:class:`RingEvent`; :data:`TRANSITIONS` is the one table of what each event does in each state, and a pair
missing from it is a protocol error (the front-end changed a started ring's size, base or addresses). A ring
starts with SET_VRING_KICK and stops with GET_VRING_BASE. The back-end processes a ring only when it is
started, enabled and completely configured (:meth:`Ring.runnable`). The ring owns its kick, call and error
descriptors and closes the ones it replaces.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from enum import Enum


class RingPhase(Enum):
    """Stopped: the back-end must not touch the ring. Started: it processes it (when enabled)."""

    STOPPED = "stopped"
    STARTED = "started"


class RingEvent(Enum):
    """What the front-end does to a ring."""

    CONFIGURE = "configure"  # SET_VRING_NUM / SET_VRING_ADDR / SET_VRING_BASE
    KICK_FD = "kick-fd"  # SET_VRING_KICK: the ring starts
    CALL_FD = "call-fd"  # SET_VRING_CALL / SET_VRING_ERR: allowed at any time
    ENABLE = "enable"  # SET_VRING_ENABLE
    GET_BASE = "get-base"  # GET_VRING_BASE: the ring stops
    RESET = "reset"  # RESET_DEVICE, a disconnect


_P, _E = RingPhase, RingEvent
#: Every allowed (state, event) and the state it leads to; an absent pair is answered as a protocol error.
TRANSITIONS: dict[tuple[RingPhase, RingEvent], RingPhase] = {
    (_P.STOPPED, _E.CONFIGURE): _P.STOPPED,
    (_P.STOPPED, _E.KICK_FD): _P.STARTED,
    (_P.STARTED, _E.KICK_FD): _P.STARTED,  # a new kick descriptor for a running ring
    (_P.STOPPED, _E.CALL_FD): _P.STOPPED,
    (_P.STARTED, _E.CALL_FD): _P.STARTED,
    (_P.STOPPED, _E.ENABLE): _P.STOPPED,
    (_P.STARTED, _E.ENABLE): _P.STARTED,
    (_P.STOPPED, _E.GET_BASE): _P.STOPPED,
    (_P.STARTED, _E.GET_BASE): _P.STOPPED,
    (_P.STOPPED, _E.RESET): _P.STOPPED,
    (_P.STARTED, _E.RESET): _P.STOPPED,
}


def next_phase(phase: RingPhase, event: RingEvent) -> RingPhase | None:
    """The phase ``event`` leads to, or None when the table forbids it (a protocol error)."""
    return TRANSITIONS.get((phase, event))


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class Ring:
    """One vring's configuration: size, user addresses, base, descriptors, phase and enable flag."""

    index: int
    phase: RingPhase = RingPhase.STOPPED
    enabled: bool = False
    num: int = 0
    desc: int | None = None  # front-end user addresses (SET_VRING_ADDR)
    used: int | None = None
    avail: int | None = None
    base: int = 0  # next available index to process (SET_VRING_BASE, updated at GET_VRING_BASE)
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    kicked: bool = False  # a kick arrived while the ring was disabled: look at it once enabled
    kick_eventfd: bool = True  # the kick descriptor is an eventfd (else a pipe)

    @property
    def configured(self) -> bool:
        """Size and the three addresses are set."""
        return self.num > 0 and None not in (self.desc, self.used, self.avail)

    def runnable(self) -> bool:
        """Started, enabled and configured: the back-end may process it."""
        return self.phase is RingPhase.STARTED and self.enabled and self.configured

    def set_kick(self, fd: int | None) -> None:
        """Take ``fd`` as the kick descriptor (None: polling), closing the previous one."""
        if fd != self.kick_fd:
            _close(self.kick_fd)
        self.kick_fd = fd

    def set_call(self, fd: int | None) -> None:
        """Take ``fd`` as the call descriptor (None: no used-buffer notifications), closing the previous one."""
        if fd != self.call_fd:
            _close(self.call_fd)
        self.call_fd = fd

    def set_err(self, fd: int | None) -> None:
        """Take ``fd`` as the error descriptor, closing the previous one."""
        if fd != self.err_fd:
            _close(self.err_fd)
        self.err_fd = fd

    def release(self) -> None:
        """Close every descriptor and forget the configuration (RESET_DEVICE, disconnect)."""
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            _close(fd)
        self.phase, self.enabled, self.num, self.base, self.kicked = RingPhase.STOPPED, False, 0, 0, False
        self.desc = self.used = self.avail = None
        self.kick_fd = self.call_fd = self.err_fd = None


__all__ = ["TRANSITIONS", "Ring", "RingEvent", "RingPhase", "next_phase"]
