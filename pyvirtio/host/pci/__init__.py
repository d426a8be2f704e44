"""The virtio PCI transport, device side (virtio 1.4 §4.1)."""
