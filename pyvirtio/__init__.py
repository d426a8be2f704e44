"""pyvirtio."""
