"""The power-management experiment: every mechanism (profile) through every sleep state, on the model.

A profile turns into a build plan; :mod:`pyvirtio.pm.system` builds the machine and guest from it (and rebuilds
one from an S4 image); :mod:`pyvirtio.pm.scenario` runs one cell and measures it; :mod:`pyvirtio.pm.matrix` runs
them all.
"""
