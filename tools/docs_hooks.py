"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml) and the config reference they write.

* :func:`config_reference` renders every key of :mod:`dynamask.config.schema` -- section, type,
  default, allowed values, bounds and one-line description -- as Markdown. ``docs/config.md`` holds
  the marker ``<!-- config-reference -->``, which the build replaces with it, so the reference is
  made from the schema on every build and cannot drift from it (``tests/test_docs.py`` checks that
  every key is in it without running MkDocs).
* The pages under ``docs/`` link to a few Markdown files outside it (``../BENCHMARKS.md``,
  ``../benchmarks/README.md``, ``../checkpoints/README.md``) as GitHub shows them; the build copies
  those files (and the figures they show) into the site under ``repo/`` and rewrites such links to
  point there, so that they work in both places and a broken one fails ``mkdocs build --strict``.

``python tools/docs_hooks.py`` prints the config reference.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- config-reference -->"
#: files outside docs/ that the site carries (under repo/), as globs relative to the repository root
REPO_FILES = ("BENCHMARKS.md", "benchmarks/README.md", "checkpoints/README.md", "benchmarks/results/*.png")
REPO_PREFIX = "repo"


def _code(value: Any) -> str:
    """A default or allowed value as YAML writes it, in backticks."""
    from dynamask.config.schema import inline_value

    if value is None:
        return "`null`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{inline_value(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    """Every config key of the schema as Markdown: one table per section, in definition order."""
    from dynamask.config import schema

    by_section: dict[str, list[str]] = {}
    for key in schema.FIELDS:
        by_section.setdefault(key.rpartition(".")[0], []).append(key)

    out = []
    for section, keys in by_section.items():
        title = f"`{section}`" if section else "Top level"
        out.append(f"## {title}\n")
        if section:
            out.append(f"{schema.doc(section)}.\n")
        out.append("| key | type | default | description |")
        out.append("|---|---|---|---|")
        for key in keys:
            shape, nullable, choices = schema.kind(key)
            kind = " or ".join(_code(c) for c in choices) if choices else schema.kind_name(shape)
            if nullable:
                kind += " or `null`"
            if any(hasattr(m, n) for m in schema.FIELDS[key].metadata for n in ("gt", "ge", "lt", "le")):
                kind += ", " + schema.bounds_text(key).removeprefix("must be ")
            default = schema.DEFAULTS
            for part in key.split("."):
                default = default[part]
            out.append(f"| `{key}` | {_cell(kind)} | {_cell(_code(default))} | {_cell(schema.doc(key))} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------
# MkDocs hooks
# --------------------------------------------------------------------------


def on_startup(command, dirty):
    """The config reference imports dynamask: from this checkout, whether or not it is installed."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def on_files(files, config):
    """Add the repository's Markdown files that the docs link to (and their figures) under repo/."""
    from mkdocs.structure.files import File

    for pattern in REPO_FILES:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, f"{REPO_PREFIX}/{rel}", abs_src_path=str(path)))
    return files


#: a Markdown link or image target: ](target) or ](target#anchor)
_LINK = re.compile(r"(\]\()([^)\s#]+)([^)\s]*\))")


def _repo_path(src_uri: str) -> str:
    """Where a page of the site lies in the repository."""
    prefix = REPO_PREFIX + "/"
    return src_uri[len(prefix) :] if src_uri.startswith(prefix) else f"docs/{src_uri}"


def _site_uri(repo_path: str) -> str:
    """Where a repository file lies in the site (the inverse of :func:`_repo_path`)."""
    return repo_path[len("docs/") :] if repo_path.startswith("docs/") else f"{REPO_PREFIX}/{repo_path}"


def site_link(target: str, page_src_uri: str) -> str:
    """A relative link as written in the repository (e.g. ``../BENCHMARKS.md`` in docs/x.md) as the site needs it."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/"):
        return target
    here = posixpath.dirname(_repo_path(page_src_uri))
    resolved = posixpath.normpath(posixpath.join(here, target))
    if resolved.startswith("../"):
        return target
    return posixpath.relpath(_site_uri(resolved), posixpath.dirname(page_src_uri))


def on_page_markdown(markdown, page, config, files):
    """Fill in the config reference and make the links between docs/ and the repository's files work."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_reference())
    return _LINK.sub(lambda m: m.group(1) + site_link(m.group(2), page.file.src_uri) + m.group(3), markdown)


if __name__ == "__main__":
    print(config_reference())
