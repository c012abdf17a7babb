"""YAML text in and out: a strict loader (``1e-4`` is a float, duplicate keys are errors) and the writers.

Kept apart from :mod:`.loading` so that the merging and checking there reads as plain dicts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import FIELDS, SECTIONS, doc

# --------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable; the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first given on line {first + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# own copy of the resolver table so the global SafeLoader is untouched
StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    mark = problem_mark or context_mark
    msg = f"{source}: invalid YAML at {at(mark) if mark is not None else 'unknown position'}: {problem}"
    if context and "duplicate key" not in str(problem):
        msg += f" ({context}"
        if context_mark is not None and problem_mark is not None and context_mark.line != problem_mark.line:
            msg += f" started at {at(context_mark)}"
        msg += ")"
    return ConfigError(msg)


def read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style (inline) lists."""


def _represent_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def _dump(data: Mapping[str, Any], **kw: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, **kw)


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (sections separated by blank lines, lists inline)."""
    plain = _plain(cfg)
    chunks = ["# dynamask resolved config\n"]
    scalars: dict[str, Any] = {}
    for k, v in plain.items():
        if isinstance(v, dict):
            chunks.append(_dump({k: v}))
        else:
            scalars[k] = v
    if scalars:
        chunks.append(_dump(scalars))
    return "\n".join(chunks)


def config_to_documented_yaml(cfg: Mapping[str, Any]) -> str:
    """``config_to_yaml`` with each key's one-line description as a comment (``dynamask config``)."""
    lines = ["# dynamask resolved config: every key, its value and what it does"]

    def emit(key: str, name: str, value: Any, indent: str) -> None:
        body = _dump({name: value}, width=1 << 16).rstrip("\n").replace("\n", "\n" + indent)
        note = doc(key) if key in FIELDS or key in SECTIONS else ""
        if "\n" in body:  # a multi-line scalar: the comment goes above it
            lines.extend(([f"{indent}# {note}"] if note else []) + [indent + body])
        else:
            lines.append(f"{indent}{body}  # {note}" if note else indent + body)

    plain = _plain(cfg)
    for name, section in plain.items():
        if isinstance(section, dict):
            lines.extend(["", f"{name}:" + (f"  # {doc(name)}" if name in SECTIONS else "")])
            for leaf, value in section.items():
                emit(f"{name}.{leaf}", leaf, value, "  ")
    lines.append("")
    for name, value in plain.items():
        if not isinstance(value, dict):
            emit(name, name, value, "")
    return "\n".join(lines) + "\n"


def save_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``config_to_yaml(cfg)`` to ``path`` atomically (temp file + os.replace)."""
    from ..atomic import write_bytes_atomic

    write_bytes_atomic(path, config_to_yaml(cfg).encode("utf-8"))
