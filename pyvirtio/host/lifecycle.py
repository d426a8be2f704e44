"""The device lifecycle as data: states, events and the one table of transitions between them.

Two rules, h11-style: everything that moves a device between lifecycle states is in :data:`TRANSITIONS`, and this
module knows nothing about transports, queues or status bytes — :class:`~pyvirtio.host.device.VirtioDevice` maps
driver writes and device progress to :class:`LifecycleEvent` values and looks the next state up here.

::

       status 0 written, or a bus reset (from every state, NEEDS_RESET included)
                   |
                   v
              +---------+  ACKNOWLEDGE / DRIVER / FEATURES_OK   +-------------+
              |  RESET  | -----------------------------------> | CONFIGURING |
              +---------+                                       +-------------+
                                                  DRIVER_OK written |     ^ DRIVER_OK cleared by the
                                                  (§3.1.1 step 8)   v     | transport (bus master off)
                                                                +-------------+
                         +------------------------------------> |    LIVE     |
                         | resumed: SUSPEND=0, DRIVER_OK=1      +-------------+
                         |                                          | SUSPEND written (DRIVER_OK set,
                  +-------------+                                   v  VIRTIO_F_SUSPEND negotiated)
                  |  RESUMING   |                             +-------------+
                  +-------------+                             | SUSPENDING  |  stops consuming buffers,
                         ^                                    +-------------+  in-flight work completes
                         | DRIVER_OK written                        | quiesced: SUSPEND=1, DRIVER_OK=0
                         |                                          v
                         +------------------------------------ +-------------+
                                                               |  SUSPENDED  |  no notification, no queue
                                                               +-------------+  access, config frozen

       every other state --device error, failed suspend or resume--> NEEDS_RESET --reset--> RESET (§2.1.2)

State by state, what the device presents in ``device status`` (virtio 1.4 §2.1, Device Suspend):

* ``RESET``: 0. ``CONFIGURING``: the driver's bits so far, no DRIVER_OK. ``LIVE``: DRIVER_OK, SUSPEND=0.
* ``SUSPENDING``: DRIVER_OK and SUSPEND (written, not yet acknowledged). ``SUSPENDED``: SUSPEND, no DRIVER_OK.
* ``RESUMING``: SUSPEND and DRIVER_OK (written, not yet acknowledged). In these three the device takes no
  buffer, sends no notification and defers config changes (:data:`QUIESCENT`); with bus mastering off the
  presented DRIVER_OK is dropped and the pending transition still completes.
* ``NEEDS_RESET``: DEVICE_NEEDS_RESET plus whatever was presented; only a reset leaves it.

Bus mastering (the PCI COMMAND register) is orthogonal and is not a state: a device with bus mastering off is
``disabled`` in any state. Clearing it drops DRIVER_OK (QEMU), which is the ``DRIVER_OK_CLEARED`` event.

A guest can never make the device look up a pair that is not in the table: guest writes the table does not
allow get the spec's answer (ignored, or DEVICE_NEEDS_RESET) before any lookup. :func:`next_state` therefore
raises :class:`LifecycleError`, an internal error, on a missing pair; a test that reaches it has found a bug.
"""

from __future__ import annotations

from enum import Enum


class DeviceLifecycle(Enum):
    """Where a device is in its life (see the module diagram)."""

    RESET = "reset"
    CONFIGURING = "configuring"
    LIVE = "live"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    RESUMING = "resuming"
    NEEDS_RESET = "needs-reset"


class LifecycleEvent(Enum):
    """What moves a device between lifecycle states."""

    RESET = "reset"  # a status write of 0 or a transport (bus, machine) reset, §2.4
    CONFIGURE = "configure"  # the first non-zero status write: ACKNOWLEDGE, DRIVER, FEATURES_OK ... (§3.1.1)
    DRIVER_OK = "driver-ok"  # DRIVER_OK written after FEATURES_OK (§3.1.1 step 8)
    DRIVER_OK_CLEARED = "driver-ok-cleared"  # the transport dropped DRIVER_OK (QEMU: bus mastering off)
    SUSPEND = "suspend"  # SUSPEND written while LIVE with VIRTIO_F_SUSPEND negotiated
    QUIESCED = "quiesced"  # in-flight work done: the device presents SUSPEND=1, DRIVER_OK=0
    RESUME = "resume"  # DRIVER_OK written while SUSPENDED
    RESUMED = "resumed"  # the device presents SUSPEND=0, DRIVER_OK=1 again
    ERROR = "error"  # an unrecoverable device error, a failed suspend or resume: DEVICE_NEEDS_RESET


class LifecycleError(AssertionError):
    """Internal error: a lifecycle transition that is not in :data:`TRANSITIONS` (a pyvirtio bug, never guest)."""


_S = DeviceLifecycle
_E = LifecycleEvent

#: Every allowed transition: ``(state, event) -> next state``. A pair that is absent cannot happen.
TRANSITIONS: dict[tuple[DeviceLifecycle, LifecycleEvent], DeviceLifecycle] = {
    **{(s, _E.RESET): _S.RESET for s in _S},
    **{(s, _E.ERROR): _S.NEEDS_RESET for s in _S if s is not _S.NEEDS_RESET},
    (_S.RESET, _E.CONFIGURE): _S.CONFIGURING,
    (_S.CONFIGURING, _E.DRIVER_OK): _S.LIVE,
    (_S.LIVE, _E.DRIVER_OK_CLEARED): _S.CONFIGURING,
    (_S.LIVE, _E.SUSPEND): _S.SUSPENDING,
    (_S.SUSPENDING, _E.QUIESCED): _S.SUSPENDED,
    (_S.SUSPENDED, _E.RESUME): _S.RESUMING,
    (_S.RESUMING, _E.RESUMED): _S.LIVE,
    # Bus mastering off while DRIVER_OK is presented in a transition (or after an error): the presented
    # DRIVER_OK goes, the pending transition still decides what comes next.
    (_S.SUSPENDING, _E.DRIVER_OK_CLEARED): _S.SUSPENDING,
    (_S.RESUMING, _E.DRIVER_OK_CLEARED): _S.RESUMING,
    (_S.NEEDS_RESET, _E.DRIVER_OK_CLEARED): _S.NEEDS_RESET,
}

#: States in which the device neither consumes buffers nor notifies, and defers its config changes.
QUIESCENT: frozenset[DeviceLifecycle] = frozenset({_S.SUSPENDING, _S.SUSPENDED, _S.RESUMING})


def next_state(state: DeviceLifecycle, event: LifecycleEvent) -> DeviceLifecycle:
    """The state ``event`` leads to from ``state``; :class:`LifecycleError` if the table has no such pair."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LifecycleError(f"no lifecycle transition from {state.name} on {event.name}") from None


def reachable(start: DeviceLifecycle = DeviceLifecycle.RESET) -> set[DeviceLifecycle]:
    """Every state the table can reach from ``start`` (for tests: the table has no dead states)."""
    seen = {start}
    todo = [start]
    while todo:
        s = todo.pop()
        for (frm, _), to in TRANSITIONS.items():
            if frm is s and to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


__all__ = ["QUIESCENT", "TRANSITIONS", "DeviceLifecycle", "LifecycleError", "LifecycleEvent", "next_state",
           "reachable"]
