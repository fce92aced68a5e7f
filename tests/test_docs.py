"""The README and the guides in docs/ stay true to the code: every command line they quote parses with the
project's own argument parsers (or names a Makefile target that exists), and every file or section they link to
exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from brats_fl import cli as brats_cli
from medflare import cli as medflare_cli
from metastasis import cli as metastasis_cli
from tests.support import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Option types (of medcore.command) that look at the file system: a quoted command names paths of the reader's
#: machine, so only its syntax is checked; numbers, settings and choices are checked as the command would.
_PATH_TYPES = ("existing_file", "existing_dir", "existing_path", "named_checkpoint", "output_file", "output_dir")
_TOOLS = {"brats-fl": (brats_cli, []), "metastasis": (metastasis_cli, []),
          "jobs/brats_fl/job.py": (brats_cli, ["job"]), "jobs/pathology_metastasis/job.py": (metastasis_cli, ["job"])}


def _code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, continuation lines joined, comments dropped."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
    return [line for line in lines if line and not line.startswith("#")]


def _command(line: str) -> tuple[str, list[str]] | None:
    """``(program, arguments)`` of a quoted command of the project (``brats-fl``, ``metastasis``, a job script or
    ``make``), else None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # environment assignments
        words = words[1:]
    if words and words[0] == "export":
        return None
    if len(words) > 1 and Path(words[0]).name.startswith("python"):
        words = words[1:]
    if not words:
        return None
    program = words[0].removeprefix(".venv/bin/")
    return (program, words[1:]) if program in _TOOLS or program == "make" else None


def _quoted_commands() -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(REPO)}: {line}", line) for doc in DOCUMENTS for line in _code_lines(doc.read_text())
            if _command(line) is not None]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def test_the_guides_quote_commands_of_both_tools_and_the_jobs():
    programs = {_command(line)[0] for _, line in _quoted_commands()}
    assert set(_TOOLS) | {"make"} <= programs


@pytest.mark.parametrize("where,line", _quoted_commands(), ids=lambda v: v[:90] if isinstance(v, str) else v)
def test_every_quoted_command_parses(where, line, monkeypatch):
    program, argv = _command(line)
    if program == "make":
        targets = [word for word in argv if not re.fullmatch(r"[A-Z_]+=.*", word) and not word.startswith("-")]
        assert set(targets) <= _make_targets(), f"{where}: no such Makefile target"
        return
    for module in (brats_cli, metastasis_cli, medflare_cli):  # before the parsers are built: they hold the types
        for name in _PATH_TYPES:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, Path)
    module, prefix = _TOOLS[program]
    parser = module.build_parser()
    try:
        parser.parse_args([*prefix, *argv])
    except SystemExit as exit:
        pytest.fail(f"{where}: does not parse (exit {exit.code})")


def _anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors, inside = set(), False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_resolves(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.relative_to(REPO)}: link to {link}: no such file"
        if anchor:
            assert anchor in _anchors(path), f"{doc.relative_to(REPO)}: link to {link}: no such section"


def test_the_front_page_is_short_and_links_every_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for guide in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{guide.name})" in readme, f"README.md does not link docs/{guide.name}"
