"""The virtio-gpu driver's S4 state: ``state(restore(state(x))) == state(x)`` for every flavour after a real
workload (crosvm ``suspendable_virtio_tests`` style), and malformed state rejected field by field.

The state is what the image kernel's driver needs of guest-kernel memory (the pixels stay in guest RAM): the
object list with each object's scanout bindings (SET_SCANOUT / SET_SCANOUT_BLOB, virtio 1.4 §5.7.6.8) and cursor
bindings (UPDATE_CURSOR, §5.7.6.10), the contexts (§5.7.6.9), the id counters and the hibernation flag.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from host.gpu.helpers import Rig, make_rig

from pyvirtio.errors import InvalidStateError
from pyvirtio.guest.gpu.driver import GpuDriver, GpuDriverState, GpuObject, ObjectKind
from pyvirtio.guest.gpu.flavours import FLAVOURS, GpuDriverKind, S4ReplayGpuDriver
from pyvirtio.guest.kernel import PmEvent
from pyvirtio.host.gpu.freezing import PmGpu
from pyvirtio.spec.constants import GpuBlobMem

W, H = 256, 128  # blob sizes are multiples of 4096 (blob_alignment)


def rig_for(kind: GpuDriverKind, *, probe: bool = True) -> Rig:
    """A 2-scanout device every flavour can drive: virgl for the 3D objects, FREEZING for the freezing flavour."""
    freezing = kind is GpuDriverKind.FREEZING
    dev_kw: dict[str, Any] = {"num_scanouts": 2, "width": W, "height": H, "virgl": True, "context_init": True,
                              "offer_freezing": freezing}
    return make_rig(dev_kw=dev_kw, driver_cls=FLAVOURS[kind], dev_cls=PmGpu, probe=probe, want_virgl=True,
                    want_context_init=True)


def workload(rig: Rig, kind: GpuDriverKind) -> None:
    """Draw on scanout 0, a blob with a UUID on scanout 1, a cursor with a hotspot (moved), an extra 2D resource,
    and 3D objects where the flavour allows them (s4-replay refuses S4 with virgl objects: it is hibernating)."""
    drv = rig.drv
    rng = np.random.default_rng(11)
    drv.draw(0, rng.integers(0, 256, (H, W, 4), dtype=np.uint8))
    blob = drv.show_blob(1, rng.integers(0, 256, (H, W, 4), dtype=np.uint8))
    drv.assign_uuid(blob)
    drv.set_cursor(0, 40, 30, hot=(5, 7))
    drv.move_cursor(0, 41, 33)
    drv.create_resource_2d(32, 16)
    if kind is GpuDriverKind.S4_REPLAY:
        assert isinstance(drv, S4ReplayGpuDriver)
        drv.pm_notifier(PmEvent.HIBERNATION_PREPARE)
        assert drv.hibernation
        return
    cid = drv.ctx_create("app")
    drv.ctx_create("other")
    r3d = drv.create_resource_3d(64, 64, ctx_id=cid)
    drv.ctx_attach_resource(cid, r3d)
    drv.create_blob(8192, blob_mem=GpuBlobMem.HOST3D, blob_id=1, ctx_id=cid)


def loaded(kind: GpuDriverKind, state: dict[str, object]) -> GpuDriver:
    """A fresh driver of ``kind`` (nothing probed) that loaded ``state`` through JSON, as from an image."""
    drv = rig_for(kind, probe=False).drv
    drv.load_state(json.loads(json.dumps(state)))
    return drv


@pytest.fixture(scope="module")
def states() -> dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]:
    """Each flavour's saved state after the workload, and its object list."""
    out = {}
    for kind in FLAVOURS:
        rig = rig_for(kind)
        workload(rig, kind)
        assert not rig.drv.errors
        out[kind] = (rig.drv.save_state(), [copy.deepcopy(o) for o in rig.drv.objects])
    return out


@pytest.mark.parametrize("kind", list(GpuDriverKind), ids=lambda k: k.value)
def test_state_round_trip(kind: GpuDriverKind,
                          states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """state(restore(state(x))) == state(x): nothing saved is lost or changed by a save/load, through JSON."""
    state, objects = states[kind]
    assert json.loads(json.dumps(state)) == state  # plain data
    drv = loaded(kind, state)
    assert drv.save_state() == state
    assert list(drv.objects) == objects


@pytest.mark.parametrize("kind", list(GpuDriverKind), ids=lambda k: k.value)
def test_save_load_keeps_every_scanout_and_cursor_binding(
        kind: GpuDriverKind, states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """Defect (issue 8): load_state dropped the scanout and cursor bindings. After a save/load every object has
    the same bindings: scanout 0 the framebuffer (SET_SCANOUT rect), scanout 1 the blob with its SET_SCANOUT_BLOB
    layout (§5.7.6.8), the cursor at its last position with its hotspot (§5.7.6.10)."""
    state, objects = states[kind]
    drv = loaded(kind, state)
    expect = {o.id: (o.scanout_bindings, o.cursor_bindings) for o in objects}
    assert {o.id: (o.scanout_bindings, o.cursor_bindings) for o in drv.objects} == expect
    assert {s: o.id for s, o in drv.framebuffers.items()} == {0: objects[0].id, 1: _of(objects, ObjectKind.BLOB)}
    blob = drv.framebuffers[1]
    assert blob.scanout_bindings[1].blob_layout == (W, H, blob.format, W * 4, 0)
    assert drv.cursor_position(0) == (41, 33) and drv.cursors[0].cursor_bindings[0].hot_x == 5


def _of(objects: list[GpuObject], kind: ObjectKind) -> int:
    return next(o.id for o in objects if o.kind is kind)


# -- rejection: malformed state, one field at a time -------------------------------------------------------------

Mutate = Callable[[dict[str, Any]], None]


def _obj(i: int, key: str, value: object) -> Mutate:
    def m(g: dict[str, Any]) -> None:
        g["objects"][i][key] = value
    return m


def _set(key: str, value: object) -> Mutate:
    def m(g: dict[str, Any]) -> None:
        g[key] = value
    return m


def _drop(key: str) -> Mutate:
    def m(g: dict[str, Any]) -> None:
        del g[key]
    return m


def _blob_obj(g: dict[str, Any]) -> dict[str, Any]:
    return next(o for o in g["objects"] if o["kind"] == "blob")


def _cursor_obj(g: dict[str, Any]) -> dict[str, Any]:
    return next(o for o in g["objects"] if o["kind"] == "cursor")


def _with(pick: Callable[[dict[str, Any]], dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> Mutate:
    def m(g: dict[str, Any]) -> None:
        change(pick(g))
    return m


def _put(path: tuple[object, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        target: Any = d
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return change


# (test id, mutation of the "gpu" part, the field the error must name)
BAD: list[tuple[str, Mutate, str]] = [
    ("missing-field", _drop("next_fence"), "missing fields ['next_fence']"),
    ("unknown-field", _set("framebuffers", {}), "unknown fields ['framebuffers']"),
    ("num_scanouts-0", _set("num_scanouts", 0), "'gpu.num_scanouts'"),
    ("num_scanouts-17", _set("num_scanouts", 17), "'gpu.num_scanouts'"),
    ("num_scanouts-bool", _set("num_scanouts", True), "'gpu.num_scanouts'"),
    ("next_resource-str", _set("next_resource", "9"), "'gpu.next_resource'"),
    ("next_fence-0", _set("next_fence", 0), "'gpu.next_fence'"),
    ("next_ctx-0", _set("next_ctx", 0), "'gpu.next_ctx'"),
    ("contexts-0", _set("contexts", [0]), "'gpu.contexts'"),
    ("contexts-dup", _set("contexts", [1, 1]), "'gpu.contexts'"),
    ("contexts-not-list", _set("contexts", 1), "'gpu.contexts'"),
    ("hibernation-int", _set("hibernation", 1), "'gpu.hibernation'"),
    ("objects-not-list", _set("objects", {}), "'gpu.objects'"),
    ("object-not-dict", _set("objects", [7]), "'gpu.objects[0]'"),
    ("object-missing", _with(lambda g: g["objects"][0], lambda o: o.pop("attached")),
     "'gpu.objects[0]': unknown fields [], missing fields ['attached']"),
    ("id-0", _obj(0, "id", 0), "'gpu.objects[0].id'"),
    ("kind", _obj(0, "kind", "3d"), "'gpu.objects[0].kind'"),
    ("format-neg", _obj(0, "format", -1), "'gpu.objects[0].format'"),
    ("width-big", _obj(0, "width", 1 << 32), "'gpu.objects[0].width'"),
    ("height-str", _obj(0, "height", "128"), "'gpu.objects[0].height'"),
    ("stride-none", _obj(0, "stride", None), "'gpu.objects[0].stride'"),
    ("backing-not-list", _obj(0, "backing", {}), "'gpu.objects[0].backing'"),
    ("backing-addr", _with(lambda g: g["objects"][0], _put(("backing", 0, "addr"), -1)),
     "'gpu.objects[0].backing[0].addr'"),
    ("backing-length", _with(lambda g: g["objects"][0], _put(("backing", 0, "length"), 0)),
     "'gpu.objects[0].backing[0].length'"),
    ("backing-extra", _with(lambda g: g["objects"][0], _put(("backing", 0, "offset"), 0)),
     "'gpu.objects[0].backing[0]': unknown fields ['offset']"),
    ("backing-outside-ram", _with(lambda g: g["objects"][0], _put(("backing", 0, "addr"), 1 << 40)),
     "'gpu.objects[0].backing[0]'"),
    ("attached-int", _obj(0, "attached", 1), "'gpu.objects[0].attached'"),
    ("blob-not-dict", _with(_blob_obj, _put(("blob",), 5)), ".blob'"),
    ("blob_mem-0", _with(_blob_obj, _put(("blob", "blob_mem"), 0)), ".blob.blob_mem'"),
    ("blob-size-0", _with(_blob_obj, _put(("blob", "size"), 0)), ".blob.size'"),
    ("blob-kind-host3d", _with(_blob_obj, _put(("blob", "blob_mem"), 2)), ".blob'"),
    ("2d-with-blob", _obj(0, "blob", {"blob_mem": 1, "blob_flags": 0, "blob_id": 0, "size": 4096}),
     "'gpu.objects[0].blob'"),
    ("scanout_bindings-not-list", _obj(0, "scanout_bindings", {"0": {}}), "'gpu.objects[0].scanout_bindings'"),
    ("scanout-16", _with(lambda g: g["objects"][0], _put(("scanout_bindings", 0, "scanout"), 16)),
     "'gpu.objects[0].scanout_bindings[0].scanout'"),
    ("scanout-beyond-num_scanouts", _with(lambda g: g["objects"][0], _put(("scanout_bindings", 0, "scanout"), 5)),
     "'gpu.objects[0].scanout_bindings'"),
    ("scanout-twice-in-object",
     _with(lambda g: g["objects"][0], lambda o: o["scanout_bindings"].append(dict(o["scanout_bindings"][0]))),
     "'gpu.objects[0].scanout_bindings[1].scanout'"),
    ("scanout-bound-twice", _with(_blob_obj, _put(("scanout_bindings", 0, "scanout"), 0)),
     "also bound by gpu.objects[0]"),
    ("rect-short", _with(lambda g: g["objects"][0], _put(("scanout_bindings", 0, "rect"), [0, 0, 1])),
     "'gpu.objects[0].scanout_bindings[0].rect'"),
    ("rect-neg", _with(lambda g: g["objects"][0], _put(("scanout_bindings", 0, "rect"), [0, -1, 1, 1])),
     "'gpu.objects[0].scanout_bindings[0].rect'"),
    ("blob_layout-missing", _with(_blob_obj, _put(("scanout_bindings", 0, "blob_layout"), {"width": 1})),
     ".scanout_bindings[0].blob_layout'"),
    ("blob_layout-stride", _with(_blob_obj, _put(("scanout_bindings", 0, "blob_layout", "stride"), -4)),
     ".scanout_bindings[0].blob_layout.stride'"),
    ("blob_layout-on-2d", _with(lambda g: g["objects"][0], _put(("scanout_bindings", 0, "blob_layout"),
                                                                  {"width": 1, "height": 1, "format": 2,
                                                                   "stride": 4, "offset": 0})),
     "'gpu.objects[0].scanout_bindings'"),
    ("cursor-x", _with(_cursor_obj, _put(("cursor_bindings", 0, "x"), "41")), ".cursor_bindings[0].x'"),
    ("cursor-hot-neg", _with(_cursor_obj, _put(("cursor_bindings", 0, "hot_y"), -1)), ".cursor_bindings[0].hot_y'"),
    ("cursor-scanout", _with(_cursor_obj, _put(("cursor_bindings", 0, "scanout"), 2)), ".cursor_bindings'"),
    ("cursor-on-2d", _obj(0, "cursor_bindings", [{"scanout": 1, "x": 0, "y": 0, "hot_x": 0, "hot_y": 0}]),
     "'gpu.objects[0].cursor_bindings'"),
    ("uuid", _with(_blob_obj, _put(("uuid",), "not-a-uuid")), ".uuid'"),
    ("uuid-int", _with(_blob_obj, _put(("uuid",), 5)), ".uuid'"),
    ("ctx_ids-0", _obj(0, "ctx_ids", [0]), "'gpu.objects[0].ctx_ids'"),
    ("ctx_ids-unknown", _obj(0, "ctx_ids", [99]), "'gpu.objects[0].ctx_ids'"),
    ("params_3d-on-2d", _obj(0, "params_3d", dict.fromkeys(
        ("target", "format", "bind", "width", "height", "depth", "array_size", "last_level", "nr_samples", "flags"),
        1)), "'gpu.objects[0].params_3d'"),
    ("duplicate-id", _with(lambda g: g["objects"][1], _put(("id",), 1)), "'gpu.objects[1].id'"),
    ("id-not-below-next", _set("next_resource", 2), ".id'"),
]


def _virgl_state(states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> dict[str, Any]:
    return copy.deepcopy(states[GpuDriverKind.NO_HOOKS][0])


@pytest.mark.parametrize(("mutate", "field"), [(m, f) for _, m, f in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_state_is_rejected_naming_the_field(
        mutate: Mutate, field: str, states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """Image state is untrusted input: load_state re-validates it and raises InvalidStateError naming the bad
    field, before changing the driver."""
    state = _virgl_state(states)
    mutate(state["gpu"])
    drv = rig_for(GpuDriverKind.NO_HOOKS).drv
    before = drv.save_state()
    with pytest.raises(InvalidStateError) as e:
        drv.load_state(state)
    assert field in str(e.value) and "\n" not in str(e.value)
    assert drv.save_state() == before


@pytest.mark.parametrize("change", [
    lambda o: o.update(params_3d={"target": 2}),
    lambda o: o.update(params_3d=dict(o["params_3d"], flags=-1)),
], ids=["params_3d-missing", "params_3d-flags"])
def test_malformed_3d_parameters_are_rejected(
        change: Callable[[dict[str, Any]], None],
        states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """RESOURCE_CREATE_3D parameters (§5.7.6.9) are validated like every other field."""
    state = _virgl_state(states)
    gpu: Any = state["gpu"]
    change(next(o for o in gpu["objects"] if o["params_3d"] is not None))
    with pytest.raises(InvalidStateError, match=r"\.params_3d"):
        GpuDriverState.from_dict(gpu)


def test_state_without_its_gpu_part_is_rejected(
        states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    state = _virgl_state(states)
    del state["gpu"]
    with pytest.raises(InvalidStateError, match="'gpu'"):
        rig_for(GpuDriverKind.NO_HOOKS).drv.load_state(state)


def test_every_bad_case_starts_from_a_valid_state(
        states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """The rejection cases can fail: unchanged, the state they mutate loads."""
    state = _virgl_state(states)
    gpu: Any = state["gpu"]
    assert any(o["params_3d"] for o in gpu["objects"]) and any(o["uuid"] for o in gpu["objects"])
    GpuDriverState.from_dict(gpu)
    loaded(GpuDriverKind.NO_HOOKS, state)


def _leaves(value: Any, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] + ([path] if path else [])
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] + ([path] if path else [])
    return [path]


def test_any_field_replaced_by_junk_is_accepted_or_rejected_cleanly(
        states: dict[GpuDriverKind, tuple[dict[str, object], list[GpuObject]]]) -> None:
    """Hostile image: every field (and every container) replaced by each of a few junk values either still
    validates or raises InvalidStateError; nothing else escapes."""
    gpu: Any = _virgl_state(states)["gpu"]
    junk: list[object] = [None, -1, 1 << 70, "x", [], {}, True, 1.5, [None], {"": 0}]
    rejected = 0
    for path in _leaves(gpu):
        for value in junk:
            bad = copy.deepcopy(gpu)
            _put(path, value)(bad)
            try:
                GpuDriverState.from_dict(bad)
            except InvalidStateError:
                rejected += 1
    assert rejected > len(_leaves(gpu)) * len(junk) // 2
