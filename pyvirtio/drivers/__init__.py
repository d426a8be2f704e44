"""Guest device drivers."""
