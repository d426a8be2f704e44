"""The virtio-gpu guest driver (Linux ``drivers/gpu/drm/virtio`` semantics) and its PM flavours."""
