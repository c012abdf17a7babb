"""Moved to :mod:`dynamask.evaluation.resize_round_trip` (a measurement, not data); this path still works
and warns."""

from ..moved import moved_names

__getattr__ = moved_names(__name__, "dynamask.evaluation.resize_round_trip")
