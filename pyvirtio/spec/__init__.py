"""The spec layer: numbers and wire formats from the virtio 1.4 spec (and the proposals pyvirtio models).

No behaviour lives here and nothing here imports the rest of pyvirtio: both halves (:mod:`pyvirtio.host`,
:mod:`pyvirtio.guest`) take their offsets, bits and struct layouts from this one place.
"""
