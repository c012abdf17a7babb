"""Building configs: YAML files with ``_base_``, ``key=value`` overrides, one-line errors.

Each layer (a file, one override) is merged into the config and the result is
validated by :class:`~dynamask.config.schema.Config` at once, so an error names
the layer that brought the bad value; pydantic's :class:`ValidationError` is
turned into one :class:`ConfigError` line here.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .schema import DEFAULTS, FIELDS, PATH_KEYS, SECTIONS, Config, bounds_text, integral_value, kind, kind_name
from .schema import inline_value as _fmt
from .yamlio import StrictLoader, read_yaml

# --------------------------------------------------------------------------
# Dotted helpers
# --------------------------------------------------------------------------

_MISSING = object()


def _walk(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield key, v, True
            yield from _walk(v, key + ".")
        else:
            yield key, v, False


def get(cfg: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """``get(cfg, "solver.base_lr")``. Raises ``KeyError`` if absent and no default."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif default is _MISSING:
            raise KeyError(key)
        else:
            return default
    return node


def set_(cfg: dict[str, Any], key: str, value: Any) -> None:
    """``set_(cfg, "solver.base_lr", 0.01)``; creates missing intermediate dicts."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def flatten(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{"solver.base_lr": 0.02, ...}`` for every leaf of ``cfg``."""
    return {k: v for k, v, is_section in _walk(cfg) if not is_section}


def default_config() -> dict[str, Any]:
    """A fresh (deep) copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


# --------------------------------------------------------------------------
# Errors: pydantic's list of problems -> one line
# --------------------------------------------------------------------------


def _suggest(key: str, candidates: Iterable[str]) -> str | None:
    candidates = list(candidates)
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    by_leaf: dict[str, str] = {}
    for c in candidates:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], c)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def _unknown_key_error(key: str, source: str, section: str = "") -> ConfigError:
    msg = f"{source}: unknown config key '{key}'"
    hint = _suggest(key, FIELDS) or _suggest(key, SECTIONS)
    if hint:
        msg += f" (did you mean '{hint}'?)"
    elif section:
        keys = [k.rsplit(".", 1)[-1] for k in FIELDS if k.startswith(section + ".")]
        msg += f"; valid keys in '{section}': {', '.join(keys)}"
    else:
        msg += f"; valid top-level keys: {', '.join(k for k in DEFAULTS)}"
    return ConfigError(msg)


def _key_of(loc: tuple[Any, ...]) -> str:
    """The dotted config key an error location points into (union tags and list indices dropped)."""
    key = ""
    for part in loc:
        key += ("." if key else "") + str(part)
        if key not in SECTIONS:
            break
    return key


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _leaf_message(err: dict[str, Any], key: str, value: Any) -> str:
    shape, nullable, choices = kind(key)
    name = kind_name(shape)
    if value is None:
        return f"'{key}' must be {name}, not null"
    if err["type"] == "finite_number":
        return f"'{key}' must be a finite number, got {float(value)}"
    if err["type"] == "rule":
        return f"'{key}' {err['ctx']['text']}; got {_fmt(err['ctx']['value'])}"
    if err["type"] in _BOUNDS:
        shown = float(err["input"]) if shape == "float" else integral_value(err["input"])
        return f"'{key}' {bounds_text(key)}; got {_fmt(shown)}"
    if choices is not None and isinstance(value, str):
        msg = f"'{key}' must be one of {', '.join(choices)}; got {_fmt(value)}"
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        return msg + (f" (did you mean '{close[0]}'?)" if close else "")
    return f"'{key}' must be {name}{' or null' if nullable else ''}, got {_fmt(value)} ({type(value).__name__})"


def _to_config_error(
    err: dict[str, Any], raw: Mapping[str, Any], sources: Mapping[str, str], source: str
) -> ConfigError:
    key = _key_of(err["loc"])
    if err["type"] == "min_max_size":
        src = sources.get("input.max_size") or sources.get("input.min_size") or "config"
        return ConfigError(f"{src}: {err['ctx']['text']}")
    if err["type"] in ("points_switch", "points_geometry"):  # a combination of model keys
        src = sources.get("model.refinement") or "config"
        return ConfigError(f"{src}: {err['ctx']['text']}")
    source = sources.get(key, source)
    if err["type"] == "extra_forbidden":
        value = err["input"]
        shown = f"{key}.{next(iter(value))}" if isinstance(value, Mapping) and value else key
        return _unknown_key_error(shown, source, key.rpartition(".")[0])
    if key in SECTIONS:
        first = next(iter(SECTIONS[key].model_fields))
        return ConfigError(
            f"{source}: '{key}' is a section and must be a mapping of keys "
            f"(e.g. {key}.{first}: ...), got {_fmt(err['input'])}"
        )
    return ConfigError(f"{source}: {_leaf_message(err, key, get(raw, key))}")


def _check(
    raw: dict[str, Any], order: list[str], sources: Mapping[str, str], source: str, partial: bool
) -> dict[str, Any]:
    """Validate ``raw`` with the schema; the plain dict, or the first problem in ``order`` raised.

    ``partial`` skips the checks across keys, which only hold once every layer is merged.
    """
    try:
        return Config.model_validate(raw, context={"partial": partial}).model_dump()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)

    def position(err: dict[str, Any]) -> int:
        key = _key_of(err["loc"])
        return order.index(key) if key in order else len(order)

    raise _to_config_error(min(errors, key=position), raw, sources, source) from None


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


def _resolve_path(value: Any, base_dir: str) -> Any:
    if not isinstance(value, str) or value == "":
        return value
    p = os.path.expanduser(value)
    if not os.path.isabs(p):
        p = os.path.join(base_dir, p)
    return os.path.normpath(os.path.abspath(p))


def _merge(cfg: dict[str, Any], data: Mapping[Any, Any], order: list[str], prefix: str = "") -> None:
    """Copy ``data`` into ``cfg`` unchecked, noting each key set in ``order`` (YAML order)."""
    for raw_key, value in data.items():
        name = str(raw_key)
        key = prefix + name
        if key in SECTIONS and value is None:  # "model:" with nothing under it
            continue
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(cfg.get(name), dict):
            _merge(cfg[name], value, order, key + ".")
        else:
            cfg[name] = value
            order.append(key)


def _apply(
    cfg: dict[str, Any], data: Mapping[Any, Any], source: str, base_dir: str, sources: dict[str, str]
) -> dict[str, Any]:
    """One layer on top of ``cfg``: the new validated config, its paths made absolute."""
    order: list[str] = []
    raw = copy.deepcopy(cfg)
    _merge(raw, data, order)
    out = _check(raw, order, {}, source, partial=True)
    for key in order:
        sources[key] = source
        if key in PATH_KEYS:
            set_(out, key, _resolve_path(get(out, key), base_dir))
    return out


def _apply_file(cfg: dict[str, Any], path: str, sources: dict[str, str], stack: tuple[str, ...]) -> dict[str, Any]:
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(list(stack[stack.index(real) :]) + [real])
        raise ConfigError(f"{path}: circular _base_ inheritance: {chain}")
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of keys, got {type(data).__name__}")
    data = dict(data)
    base_dir = os.path.dirname(os.path.abspath(path))
    bases = data.pop("_base_", None)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
            raise ConfigError(f"{path}: '_base_' must be a file path or a list of file paths")
        for b in bases:
            bpath = os.path.join(base_dir, os.path.expanduser(b))
            if not os.path.exists(bpath):
                raise ConfigError(f"{path}: _base_ config file not found: {b} (looked for {os.path.normpath(bpath)})")
            cfg = _apply_file(cfg, bpath, sources, stack + (real,))
    return _apply(cfg, data, path, base_dir, sources)


def _parse_override(item: str) -> tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"command line: override {item!r} must have the form key=value (e.g. solver.max_iter=200)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override {item!r} has an empty key")
    if key not in FIELDS and key not in SECTIONS:
        raise _unknown_key_error(key, "command line", key.rsplit(".", 1)[0] if "." in key else "")
    try:
        value = yaml.load(text, Loader=StrictLoader) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it literally (checked below)
    if key in FIELDS and kind(key)[0] == "str" and value is not None and not isinstance(value, str):
        value = text.strip()  # e.g. output_dir=2024 stays the string "2024"
    return key, value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> dict[str, Any]:
    """Build a validated config: defaults <- YAML file (with ``_base_``) <- overrides.

    ``overrides`` is an iterable of ``"dotted.key=value"`` strings (values are
    parsed as YAML) or a mapping ``{"dotted.key": value}`` (values used as-is).
    Raises :class:`ConfigError` for any problem.
    """
    cfg = default_config()
    sources: dict[str, str] = {}
    if path is not None:
        cfg = _apply_file(cfg, os.fspath(path), sources, ())
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
        for key, _ in items:
            if key not in FIELDS and key not in SECTIONS:
                raise _unknown_key_error(str(key), "command line")
    elif isinstance(overrides, str):
        items = [_parse_override(overrides)]
    else:
        items = [_parse_override(o) for o in overrides]
    cwd = os.getcwd()
    for key, value in items:
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = _apply(cfg, nested, "command line", cwd, sources)
    return _check(cfg, [], sources, "config", partial=False)


def validate(cfg: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Check a config dict built in code; returns a normalised deep copy.

    Every key must be known and every leaf present, with a valid value.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(cfg).__name__}")
    flat = flatten(cfg)
    for key in flat:
        if key not in FIELDS:
            raise _unknown_key_error(key, source, key.rsplit(".", 1)[0] if "." in key else "")
    missing = [k for k in FIELDS if k not in flat]
    if missing:
        raise ConfigError(f"{source}: missing config key(s): {', '.join(missing)}")
    raw = default_config()
    for key, value in flat.items():
        set_(raw, key, value)
    return _check(raw, list(flat), {}, source, partial=False)
