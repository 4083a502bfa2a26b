"""The README and the pages under docs/ hang together: every relative link reaches a file and, with
an anchor, a heading of that file (as GitHub makes anchors from headings); every page is reachable
from the README; every picture is shown; the README's first screen holds its two commands and CI
runs the second verbatim."""

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FIRST_SCREEN = 60  # lines


def prose(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in (re.match(r"#+ (.*)", line) for line in prose(path)) if m}


def relative_links(path: Path) -> list[str]:
    return [t for line in prose(path) for t in LINK.findall(line) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_the_readme_leads_to_every_page_and_every_picture_is_shown():
    readme_targets = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(REPO / "README.md")}
    assert {p.resolve() for p in PAGES[1:]} <= readme_targets
    shown = {(page.parent / t.partition("#")[0]).resolve() for page in PAGES for t in relative_links(page)}
    pictures = set((REPO / "docs").glob("*.png"))
    assert {p.resolve() for p in pictures} <= shown, sorted(p.name for p in pictures if p.resolve() not in shown)


def test_the_first_screen_gives_both_commands_and_ci_runs_the_test_command_verbatim():
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    commands = re.findall(r"```bash\n(.*?)\n```", first_screen, re.S)
    start, test = commands[0], commands[1]
    assert start.endswith("-m ml_backend") and test.endswith("-m pytest")
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == test


def test_the_layout_names_every_module():
    layout = (REPO / "docs" / "layout.md").read_text()
    modules = [p for d in ("model", "ml_backend", "tools") for p in (REPO / d).rglob("*.py") if p.name != "__init__.py"]
    assert modules and not [str(p.relative_to(REPO)) for p in modules if p.name not in layout]
