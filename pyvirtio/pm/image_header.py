"""The header of an S4 image: what the image kernel needs besides RAM, typed and re-validated.

Contract: :meth:`ImageHeader.to_dict` is the JSON object :mod:`pyvirtio.pm.image` stores (keys of header
version :data:`HEADER_VERSION`: ``header_version``, ``profile``, ``freeze_mode_bit``, ``config``, ``kernel``,
``allocator``, ``gpu_driver``, ``drivers``); :meth:`ImageHeader.from_dict` accepts exactly that and nothing else.
It treats the object as untrusted: an image of another header version gets one line naming that version; a
missing, unknown or mistyped field, a kernel configuration or driver kind that is not what the profile plans, or
driver states other than one for ``gpu`` and one for ``rng`` get one line naming the problem. Every error is a
:class:`~pyvirtio.errors.UserInputError`. Kinds are stored by value (``"s4-replay"``), never as class paths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, get_type_hints

from pyvirtio.errors import UserInputError
from pyvirtio.guest.gpu.flavours import GpuDriverKind
from pyvirtio.guest.kernel import KernelConfig
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import Profile, parse_profile

#: Version of the header's content (the kinds and state formats): a change that old readers would misread bumps
#: it. Version 1 (no ``header_version`` key) stored Python class paths.
HEADER_VERSION = 3
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
        if version != HEADER_VERSION or type(version) is not int:
            raise UserInputError(f"{where}header version {version!r} is not supported "
                                 f"(this pyvirtio reads version {HEADER_VERSION})")
        unknown, missing = set(data) - _KEYS, _KEYS - set(data)
        if unknown or missing:
            what = f"unknown field(s) {sorted(unknown)}" if unknown else f"missing field(s) {sorted(missing)}"
            raise UserInputError(f"{where}malformed header ({what})")
        try:
            profile = parse_profile(_typed(data["profile"], str, "profile"),
                                    freeze_mode_bit=_typed(data["freeze_mode_bit"], int, "freeze_mode_bit"))
            config = _record(ScenarioConfig, data["config"], "config")
            kernel = _record(KernelConfig, data["kernel"], "kernel")
            gpu_driver = GpuDriverKind(_typed(data["gpu_driver"], str, "gpu_driver"))
            allocator = _typed(data["allocator"], dict, "allocator")
            drivers = tuple(_driver(d) for d in _typed(data["drivers"], list, "drivers"))
            config.validate()
        except (UserInputError, ValueError) as e:
            raise UserInputError(f"{where}malformed header ({e})") from None
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


def _driver(value: Any) -> DriverRecord:
    _typed(value, dict, "drivers[]")
    if set(value) != {"name", "state"}:
        raise ValueError(f"drivers[]: fields {sorted(value)}, want ['name', 'state']")
    return DriverRecord(_typed(value["name"], str, "drivers[].name"), _typed(value["state"], dict, "drivers[].state"))
