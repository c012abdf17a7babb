"""Moved to :mod:`dynamask.evaluation.point_ceiling` (a measurement, not data); this path still works
and warns."""

from ..moved import moved_names

__getattr__ = moved_names(__name__, "dynamask.evaluation.point_ceiling")
