"""README.md and docs/ hold together: every local link and ``#anchor`` resolves, every page
is reachable from the README's index, and the README stays a ten-minute read.

Anchors are checked as GitHub renders them: the heading's text (inline code, emphasis and
links reduced to their text), lower-cased, every character that is not a letter, digit,
mark, ``-``, ``_`` or space dropped, spaces turned into ``-``; a repeated heading gets ``-1``,
``-2`` and so on. Links inside fenced code blocks and inline code are not links.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading (github-slugger over the rendered text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = INLINE_CODE.sub(lambda m: m.group(2).strip(), text)
    text = re.sub(r"(\*{1,3})(\S.*?)\1", r"\2", text)  # emphasis
    kept = "".join(
        c
        for c in text.lower()
        if c.isalnum() or c in "-_ " or unicodedata.category(c).startswith("M")
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """One line per link in PATH whose file or anchor does not exist."""
    problems: list[str] = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where}: no such file {resolved}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading #{anchor} in {resolved.name}")
    return problems


def documents(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def test_every_local_link_and_anchor_resolves() -> None:
    problems = [problem for doc in documents(REPO) for problem in broken_links(doc)]
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_short_read() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_every_docs_page_is_in_the_readme_index() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    linked = {Path(m.group(1).partition("#")[0]).as_posix() for m in LINK.finditer(readme)}
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert pages and not pages - linked, f"not linked from README.md: {sorted(pages - linked)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("When the engine crashes: `lifecycle doctor`", "when-the-engine-crashes-lifecycle-doctor"),
        ("Decision margins: noise or regression", "decision-margins-noise-or-regression"),
        ("Why `.ci/install-engine`", "why-ciinstall-engine"),
        ('Embedding models: retrieval suites and "re-index needed"', None),
        ("lifecycle.toml", "lifecycletoml"),
        ("The **example's** [numbers](example.md)", "the-examples-numbers"),
    ],
)
def test_slugs_follow_github(heading: str, anchor: str | None) -> None:
    expected = anchor or "embedding-models-retrieval-suites-and-re-index-needed"
    assert slug(heading) == expected


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Store integrity: `gc` and `du`\n\n## Twice\n\n## Twice\n", "utf-8"
    )
    (tmp_path / "docs" / "chart.png").write_bytes(b"\x89PNG")
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Local part\n\n"
        "[ok](docs/page.md#store-integrity-gc-and-du) [ok](docs/page.md#twice-1) "
        "[ok](#local-part) ![ok](docs/chart.png) [web](https://example.com/x.md#nowhere)\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#twice-2) [self](#nowhere)\n"
        "`[code](docs/missing-too.md)`\n\n"
        "```\n[fenced](docs/missing-three.md)\n## Not a heading\n```\n"
        "[fenced heading](#not-a-heading)\n",
        "utf-8",
    )
    problems = [problem for doc in documents(tmp_path) for problem in broken_links(doc)]
    assert [p.split(": ")[1] for p in problems] == [
        "docs/missing.md",
        "docs/page.md#twice-2",
        "#nowhere",
        "#not-a-heading",
    ], problems
