"""The README stays short and every relative link in README.md and docs/ leads to a file that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_CHARS = 12_000
# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = CODE.sub("", path.read_text(encoding="utf-8"))  # links inside code are not links
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE)}


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8"))
    assert n <= README_MAX_CHARS, f"README.md has {n} characters; keep it <= {README_MAX_CHARS}, move detail to docs/"


def test_docs_exist():
    names = {p.relative_to(REPO).as_posix() for p in markdown_files()}
    for doc in ("operators", "kernels", "counting", "runner", "reports", "models"):
        assert f"docs/{doc}.md" in names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve()
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"


def test_link_pattern_finds_links():
    sample = "see [a](docs/a.md), ![b](img.png \"t\"), [c](https://x.org), `[d](code.md)`"
    text = CODE.sub("", sample)
    assert [m.group(1) for m in LINK.finditer(text)] == ["docs/a.md", "img.png", "https://x.org"]


def test_slug_matches_github():
    assert slug("10. Published numbers and the release's own counts") == "10-published-numbers-and-the-releases-own-counts"
    assert slug("Stage II as one autograd node (`acmix_stage2`)") == "stage-ii-as-one-autograd-node-acmix_stage2"


def test_readme_does_not_send_users_outside_the_repository():
    assert "ACMIX.md" not in (REPO / "README.md").read_text(encoding="utf-8")
    for p in (REPO / "docs").rglob("*.md"):
        assert "ACMIX.md" not in p.read_text(encoding="utf-8"), p
