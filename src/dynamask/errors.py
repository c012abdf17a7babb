"""User-facing error types.

Anything derived from :class:`DynaMaskError` is a problem with the user's
input (configuration, paths, options) rather than a bug: the CLI prints its
message (without a traceback) and exits with a non-zero status.
"""

from __future__ import annotations

__all__ = ["DynaMaskError", "ConfigError"]


class DynaMaskError(Exception):
    """Base class for errors whose message is shown to the user as-is."""


class ConfigError(DynaMaskError):
    """Invalid configuration: unknown key, wrong type or value, bad YAML, missing file."""
