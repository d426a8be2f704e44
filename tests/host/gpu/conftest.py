"""Fixtures for the virtio-gpu tests."""

from __future__ import annotations

import pytest

from .helpers import Rig, make_rig


@pytest.fixture
def rig() -> Rig:
    """A probed 2-scanout 320x200 device with the framebuffers the driver creates."""
    return make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200})


@pytest.fixture
def bare() -> Rig:
    """A probed 320x200 device with no framebuffers (resource ids start at 1 for the test)."""
    return make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200}, create_framebuffers=False)


@pytest.fixture
def virgl() -> Rig:
    return make_rig(dev_kw={"virgl": True, "context_init": True}, want_virgl=True, want_context_init=True,
                    create_framebuffers=False)
