"""What can drift in the documentation, checked without MkDocs (the strict build in .ci/run checks the rest)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: a Markdown link or image target, without its #anchor: ](target) or ](target#anchor)
LINK = re.compile(r"\]\(([^)\s#]*)(#[^)\s]*)?\)")


def _docs_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outside_code(text: str) -> str:
    """The Markdown without fenced code blocks and inline code, where ](...) is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def test_config_reference_has_every_key():
    from dynamask.config import schema

    reference = _docs_hooks().config_reference()
    missing = [key for key in schema.FIELDS if f"| `{key}` |" not in reference]
    assert not missing, f"keys missing from the generated config reference: {missing}"
    for section in schema.SECTIONS:
        assert f"## `{section}`" in reference
    assert "<!-- config-reference -->" in (ROOT / "docs" / "config.md").read_text()


def test_relative_links_point_to_files():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target, _anchor in LINK.findall(_outside_code(page.read_text())):
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # an anchor on the same page, or http(s):, mailto:
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    assert len(pages) > 10


def test_links_out_of_docs_reach_the_site():
    """docs/ pages may link to the repository's Markdown files only where the site carries them."""
    hooks = _docs_hooks()
    carried = {p.relative_to(ROOT).as_posix() for pattern in hooks.REPO_FILES for p in ROOT.glob(pattern)}
    outside = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for target, _anchor in LINK.findall(_outside_code(page.read_text())):
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue
            resolved = (page.parent / target).resolve()
            if ROOT / "docs" in resolved.parents:
                continue
            if resolved.relative_to(ROOT).as_posix() not in carried:
                outside.append(f"{page.relative_to(ROOT)}: {target}")
    assert not outside, "links from docs/ to files the site does not carry (tools/docs_hooks.py REPO_FILES):\n" + (
        "\n".join(outside)
    )
