"""The header of an S4 image: what the image kernel needs besides RAM, typed and re-validated.

Contract: :meth:`ImageHeader.to_dict` is the JSON object :mod:`pyvirtio.pm.image` stores (keys of header
version :data:`HEADER_VERSION`: ``header_version``, ``profile``, ``freeze_mode_bit``, ``config``, ``kernel``,
``allocator``, ``gpu_driver``, ``drivers``); :meth:`ImageHeader.from_dict` accepts exactly that and nothing else.
It treats the object as untrusted and validates it field by field, each part by its own typed state class,
before anything is built from it: an image of another header version gets one line naming that version; a
missing, unknown or mistyped field, a workload out of range (:meth:`ScenarioConfig.validate`), a kernel
configuration or driver kind that is not what the profile plans, an allocator state that
:class:`~pyvirtio.dma.AllocatorState` rejects, driver states other than one for ``gpu``
(:class:`~pyvirtio.guest.driver.DriverState` + :class:`~pyvirtio.guest.gpu.objects.GpuDriverState`) and one
for ``rng`` (:class:`~pyvirtio.guest.rng.RngState`) get one line naming the problem (values shown cut short).
Every error is a :class:`~pyvirtio.errors.UserInputError`. What needs guest RAM to check (backing ranges,
allocated blocks) the drivers' ``load_state`` checks again on the new machine. Kinds are stored by value
(``"s4-replay"``), never as class paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, get_type_hints

from pyvirtio.atomicio import brief, clip
from pyvirtio.dma import AllocatorState
from pyvirtio.errors import InvalidStateError, UserInputError
from pyvirtio.guest.driver import DriverState
from pyvirtio.guest.gpu.driver import STATE_KEY as GPU_STATE_KEY
from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.guest.gpu.objects import GpuDriverState
from pyvirtio.guest.kernel import KernelConfig
from pyvirtio.guest.rng import RngState
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import Profile, parse_profile

#: Version of the header's content (the kinds and state formats): a change that old readers would misread bumps
#: it. Version 1 (no ``header_version`` key) stored Python class paths; version 4 added the kernel's
#: ``hwrng_fill_thread`` and the workload's ``gpu_behind_port``.
HEADER_VERSION = 4
#: The drivers an image holds state for, in probe order.
DRIVER_NAMES = ("gpu", "rng")
_KEYS = {"header_version", "profile", "freeze_mode_bit", "config", "kernel", "allocator", "gpu_driver", "drivers"}


@dataclass(frozen=True)
class DriverRecord:
    """One bound driver's saved state (its own ``save_state()`` format, re-validated by its ``load_state``)."""

    name: str
    state: dict[str, Any]


@dataclass(frozen=True)
class ImageHeader:
    """Profile, workload, kernel, guest allocator, driver kind and every driver's state."""

    profile: Profile
    config: ScenarioConfig
    kernel: KernelConfig
    allocator: dict[str, Any]
    gpu_driver: GpuDriverKind
    drivers: tuple[DriverRecord, ...]
    header_version: int = HEADER_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the image stores."""
        return {
            "header_version": self.header_version,
            "profile": self.profile.name,
            "freeze_mode_bit": self.profile.freeze_mode_bit,
            "config": asdict(self.config),
            "kernel": asdict(self.kernel),
            "allocator": self.allocator,
            "gpu_driver": self.gpu_driver.value,
            "drivers": [{"name": d.name, "state": d.state} for d in self.drivers],
        }

    def driver_state(self, name: str) -> dict[str, Any]:
        """The saved state of driver ``name`` (validated to exist by :meth:`from_dict`)."""
        return next(d.state for d in self.drivers if d.name == name)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "") -> ImageHeader:
        """Re-validate a stored header; ``source`` (the file) starts every error line."""
        where = f"S4 image {source}: " if source else "S4 image: "
        if not isinstance(data, dict):
            raise UserInputError(f"{where}malformed header (not an object)")
        version = data.get("header_version", 1)
        if type(version) is not int or version != HEADER_VERSION:
            raise UserInputError(f"{where}header version {brief(version)} is not supported "
                                 f"(this pyvirtio reads version {HEADER_VERSION})")
        unknown, missing = set(data) - _KEYS, _KEYS - set(data)
        if unknown or missing:
            what = f"unknown field(s) {sorted(unknown)}" if unknown else f"missing field(s) {sorted(missing)}"
            raise UserInputError(f"{where}malformed header ({clip(what, 200)})")
        try:
            profile = parse_profile(_typed(data["profile"], str, "profile"),
                                    freeze_mode_bit=_typed(data["freeze_mode_bit"], int, "freeze_mode_bit"))
            config = _record(ScenarioConfig, data["config"], "config")
            kernel = _record(KernelConfig, data["kernel"], "kernel")
            gpu_driver = GpuDriverKind(_typed(data["gpu_driver"], str, "gpu_driver"))
            allocator = _typed(data["allocator"], dict, "allocator")
            AllocatorState.from_dict(allocator)
            drivers = tuple(_driver(d) for d in _typed(data["drivers"], list, "drivers"))
            config.validate()
        except (UserInputError, InvalidStateError, ValueError) as e:
            raise UserInputError(f"{where}malformed header ({clip(str(e), 300)})") from None
        plan = profile.plan()
        if kernel != plan.kernel:
            raise UserInputError(f"{where}kernel configuration does not match its profile {profile.name!r}")
        if gpu_driver is not plan.gpu_driver:
            raise UserInputError(f"{where}gpu driver kind {gpu_driver.value!r} does not match its profile "
                                 f"{profile.name!r}")
        names = [d.name for d in drivers]
        if sorted(names) != sorted(DRIVER_NAMES):
            raise UserInputError(f"{where}expected driver states for 'gpu' and 'rng', found {sorted(names)}")
        return cls(profile, config, kernel, allocator, gpu_driver, drivers, version)


def _typed(value: Any, kind: type, what: str) -> Any:
    # bool is an int in Python, but not in a header
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{what}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _record(cls: type[Any], value: Any, what: str) -> Any:
    """A frozen config dataclass from a JSON object whose keys and scalar types match its fields exactly."""
    _typed(value, dict, what)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    if set(value) != names:
        raise ValueError(f"{what}: fields {sorted(value)}, want {sorted(names)}")
    for name in names:
        _typed(value[name], hints[name], f"{what}.{name}")
    return cls(**value)


def _gpu_state(state: dict[str, Any]) -> None:
    """The virtio core's :class:`DriverState` keys plus the GPU's own state under ``"gpu"``."""
    if GPU_STATE_KEY not in state:
        raise InvalidStateError(f"gpu driver state: missing field {GPU_STATE_KEY!r}")
    DriverState.core_from_dict({k: v for k, v in state.items() if k != GPU_STATE_KEY})
    GpuDriverState.from_dict(state[GPU_STATE_KEY])


#: Each driver's typed state parser (what its ``load_state`` accepts, checked before anything is built).
STATE_PARSERS: dict[str, Callable[[dict[str, Any]], object]] = {"gpu": _gpu_state, "rng": RngState.from_dict}


def _driver(value: Any) -> DriverRecord:
    _typed(value, dict, "drivers[]")
    if set(value) != {"name", "state"}:
        raise ValueError(f"drivers[]: fields {sorted(value)}, want ['name', 'state']")
    name = _typed(value["name"], str, "drivers[].name")
    state = _typed(value["state"], dict, "drivers[].state")
    parse = STATE_PARSERS.get(name)
    if parse is None:
        raise ValueError(f"drivers[].name: {brief(name)} is not one of {list(DRIVER_NAMES)}")
    parse(state)
    return DriverRecord(name, state)
