"""Configuration for dynamask: schema, defaults, YAML loading, overrides, validation.

A configuration is a plain nested ``dict`` (see :data:`DEFAULTS`); the schema
that checks it is a set of pydantic v2 models, one per section, in
:mod:`dynamask.config.schema` (types, defaults, constraints and a one-line
description of every key; ``dynamask config`` prints them).  A config is built
by :func:`load_config` in three layers, each overriding the previous:

1. the defaults;
2. a YAML file (which may name ``_base_: other.yaml`` -- or a list of files --
   relative to itself; bases are merged first, in order, then the file);
3. ``key=value`` overrides from the command line, e.g. ``solver.max_iter=200``
   or ``solver.steps=[100,200]`` or ``model.weights_backbone=null``; values are
   parsed as YAML.

Every key is checked: an unknown key, a value of the wrong type or an
out-of-range value raises :class:`~dynamask.errors.ConfigError` naming the key,
where it was set (file path or "command line") and, for unknown keys, the
closest valid key.

Paths
-----
Relative paths in ``data.*`` and in ``model.weights_backbone`` (and the other
:data:`PATH_KEYS`) written in a YAML file are resolved against *the directory
of that YAML file* (so a config works whatever the current directory is); the
same keys given relative on the command line are resolved against the current
directory.  Either way they are stored as absolute paths, so a config written
by :func:`save_config` loads back unchanged.  ``output_dir`` is kept exactly as
given (relative paths are relative to the directory ``dynamask`` runs in).

YAML notes
----------
Floats may be written in exponent form without a dot (``1e-4``; plain
PyYAML would read that as a string), and duplicate keys in one mapping are an
error instead of silently keeping the last one.
"""

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError  # noqa: F401  (re-exported: engine.train imports it from here)
from .loading import default_config, flatten, get, load_config, set_, validate
from .schema import (  # noqa: F401  (DEFORM_KERNELS and Config are public too)
    AMP_MODES,
    BACKBONES,
    DEFAULTS,
    DEFORM_KERNELS,
    FAMS,
    FIELDS,
    HEADS,
    MASK_GEOMETRIES,
    OPTIMIZERS,
    PATH_KEYS,
    POLICIES,
    SWITCHES,
    WIDTH_PRESETS,
    Config,
)
from .yamlio import config_to_documented_yaml, config_to_yaml, save_config

__all__ = [
    "DEFAULTS",
    "POLICIES",
    "HEADS",
    "FAMS",
    "MASK_GEOMETRIES",
    "SWITCHES",
    "WIDTH_PRESETS",
    "BACKBONES",
    "OPTIMIZERS",
    "AMP_MODES",
    "PATH_KEYS",
    "default_config",
    "load_config",
    "validate",
    "save_config",
    "config_to_yaml",
    "config_to_documented_yaml",
    "get",
    "set_",
    "flatten",
    "valid_keys",
    "key_docs",
    "effective_lr",
]


def valid_keys() -> list[str]:
    """All valid dotted leaf keys, in definition order."""
    return list(FIELDS)


def key_docs() -> dict[str, str]:
    """Every dotted leaf key with its one-line description."""
    return {key: field.description or "" for key, field in FIELDS.items()}


def effective_lr(cfg: Mapping[str, Any]) -> float:
    """Learning rate after linear scaling: base_lr * ims_per_batch / reference_batch."""
    s = cfg["solver"]
    return float(s["base_lr"]) * s["ims_per_batch"] / s["reference_batch"]
