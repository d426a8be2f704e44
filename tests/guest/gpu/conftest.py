"""The virtio-gpu rig fixtures (a probed device + driver pair) shared with the host-side GPU tests."""

from host.gpu.conftest import bare, rig, virgl  # noqa: F401  (re-exported fixtures)
