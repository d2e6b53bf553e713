"""The documentation holds together: every relative markdown link in README.md and docs/ points to
a file of the repository (and, with a ``#anchor`` into a markdown file, to one of its headings, by
GitHub's anchor rules), the README fits on a page, and every docs page is linked from the README or
the docs index. External links (http, https, mailto) are not fetched: there is no network here.

Read from the text alone (no markdown library): links inside code (fenced blocks, inline spans) are
not links, as GitHub renders them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README_LINES = 250  # "a README that fits on a page"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _outside_fences(text: str) -> list[str]:
    """The lines of ``text`` with every fenced code block blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append("")
        elif fence is not None:
            if m and m.group(1).startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            out.append("")
        else:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text (code spans kept as their content,
    links as their text, emphasis marks and HTML tags dropped), lowercased, every character but
    letters, digits, ``-``, ``_`` and spaces removed, spaces turned into ``-``."""
    parts, last = [], 0
    for m in _CODE_SPAN.finditer(heading):
        parts.append(("text", heading[last:m.start()]))
        parts.append(("code", m.group(2).strip()))
        last = m.end()
    parts.append(("text", heading[last:]))
    rendered = []
    for kind, piece in parts:
        if kind == "text":
            piece = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", piece)  # links and images: their text
            piece = re.sub(r"<[^>]+>", "", piece)  # HTML tags
            piece = re.sub(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", "", piece)  # _emphasis_, not snake_case
        rendered.append(piece)
    text = "".join(rendered).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a markdown text offers: its headings' slugs (a repeated slug gets ``-1``,
    ``-2``, ... as on GitHub) and explicit HTML anchors."""
    lines = _outside_fences(text)
    out, seen = set(), {}
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m:
            title = m.group(2) or ""
        elif i > 0 and _SETEXT.match(line) and lines[i - 1].strip() and not _HEADING.match(lines[i - 1]) \
                and "|" not in lines[i - 1]:
            title = lines[i - 1].strip()
        else:
            continue
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(m.group(1) for m in _HTML_ANCHOR.finditer(text))
    return out


def links(text: str) -> list[str]:
    """The targets of a markdown text's links and images (inline and reference definitions), code
    left out."""
    prose = _CODE_SPAN.sub(" ", "\n".join(_outside_fences(text)))
    return [m.group(1) for m in _INLINE_LINK.finditer(prose)] + [m.group(1) for m in _REFERENCE.finditer(prose)]


def broken_links(page: Path, root: Path) -> list[str]:
    """What is wrong with ``page``'s relative links: a target that does not exist or lies outside
    ``root``, or an anchor that is no heading of the markdown file it points into."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if not target or _SCHEME.match(target):  # external (http, https, mailto): not fetched
            continue
        path_part, _, anchor = target.partition("#")
        path_part, anchor = unquote(path_part), unquote(anchor)
        if path_part.startswith("/"):
            dest = (root / path_part.lstrip("/")).resolve()
        else:
            dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        where = f"{page.relative_to(root)}: ({target})"
        if dest != root.resolve() and root.resolve() not in dest.parents:
            problems.append(f"{where} leaves the repository")
        elif not dest.exists():
            problems.append(f"{where} points to a missing file")
        elif anchor and dest.is_file() and dest.suffix.lower() == ".md" \
                and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where} names no heading of {dest.relative_to(root.resolve())}")
    return problems


def doc_pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def unlinked_pages(root: Path) -> list[str]:
    """Docs pages that neither README.md nor docs/README.md links to (docs/README.md itself must be
    linked from README.md)."""
    def targets(page: Path) -> set[Path]:
        if not page.is_file():
            return set()
        out = set()
        for target in links(page.read_text(encoding="utf-8")):
            path_part = unquote(target.partition("#")[0])
            if path_part and not _SCHEME.match(target):
                out.add((page.parent / path_part).resolve())
        return out

    readme, index = root / "README.md", root / "docs" / "README.md"
    from_readme, from_index = targets(readme), targets(index)
    missing = []
    for page in sorted((root / "docs").rglob("*.md")):
        reached = from_readme if page == index else from_readme | from_index
        if page.resolve() not in reached:
            missing.append(str(page.relative_to(root)))
    return missing


# --- the repository's documentation


def test_every_relative_link_resolves():
    pages = doc_pages(ROOT)
    assert len(pages) >= 9, [str(p) for p in pages]  # README.md, docs/README.md and the pages
    problems = [problem for page in pages for problem in broken_links(page, ROOT)]
    assert problems == []


def test_the_readme_fits_on_a_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme_or_the_index():
    assert (ROOT / "docs" / "README.md").is_file()
    assert unlinked_pages(ROOT) == []


# --- the checks themselves find what they look for


def test_slugs_follow_githubs_rules():
    assert slug("Two commands") == "two-commands"
    assert slug("The quickstart, measured") == "the-quickstart-measured"
    assert slug("ADMM's own settings") == "admms-own-settings"
    assert slug("2:4 with the ADMM weight update") == "24-with-the-admm-weight-update"
    assert slug("50% with the ADMM weight update: reached, -5.8% against `--method admm`") == \
        "50-with-the-admm-weight-update-reached--58-against---method-admm"
    assert slug("What transferred, SmolLM2-135M -> Gemma-3-270M") == "what-transferred-smollm2-135m---gemma-3-270m"
    assert slug("The `max_failures` of **Ray** [workers](x.md)") == "the-max_failures-of-ray-workers"
    assert anchors("# A\n\n## A\n\n```\n# not a heading\n```\nSetext\n---\n") == {"a", "a-1", "setext"}


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Some section\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n"
        "[good](docs/page.md) [good anchor](docs/page.md#some-section) [here](#title)\n"
        "[missing file](docs/nope.md) [missing anchor](docs/page.md#no-such-section) [bad here](#nothing)\n"
        "[outside](../elsewhere.md) ![image](docs/missing.png) [web](https://example.com/x.md)\n"
        "`[in code](docs/ignored.md)`\n\n```\n[in a fence](docs/ignored.md)\n```\n\n"
        "[ref]: docs/also-missing.md\n")
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert [p.split("(")[1].split(")")[0] for p in problems] == [
        "docs/nope.md", "docs/page.md#no-such-section", "#nothing", "../elsewhere.md", "docs/missing.png",
        "docs/also-missing.md"]


def test_the_reachability_check_finds_an_orphan_page(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("README.md", "linked.md", "orphan.md"):
        (tmp_path / "docs" / name).write_text(f"# {name}\n")
    (tmp_path / "docs" / "README.md").write_text("[linked](linked.md)\n")
    (tmp_path / "README.md").write_text("# Title\n")
    assert unlinked_pages(tmp_path) == ["docs/README.md", "docs/orphan.md"]
    (tmp_path / "README.md").write_text("[docs](docs/README.md) [orphan](docs/orphan.md#orphanmd)\n")
    assert unlinked_pages(tmp_path) == []
