"""The lessons, read from README.rst and the chapters' pages, docs/eNN_*.rst: the one place their words are kept.

A lesson is a bullet under a "Lessons" heading of a page (docs/eNN_*.rst, or README.rst): its words, then
a paragraph of the same bullet, "Proof: ``tests/test_e02_error_handling.py::test_x``,
``::test_y``", naming the tests that prove it (``::test_y`` is of the file before). A scenario's check points at
a lesson through one of those tests, so ``python -m lab run`` prints the
lesson's own words next to what this run observed, and the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from functools import cache
from pathlib import Path

import docutils.core
import docutils.nodes

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
CACHE = Path(__file__).resolve().parent / "__pycache__"


def pages() -> tuple[Path, ...]:
    """README.rst, then each chapter's page of lessons and questions, docs/eNN_*.rst, in order."""
    return (README, *sorted((ROOT / "docs").glob("*.rst")))
CITATION = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)")


def cited(text: str) -> Iterator[tuple[str, int]]:
    """(``tests/<file>.py::<test>``, where its citation ends in ``text``) for every test ``text``
    cites; a bare ``::test_y`` is of the file named before it."""
    current = None
    for match in CITATION.finditer(text):
        current = match.group(1) or current
        if current is not None:
            yield f"{current}::{match.group(2)}", match.end()


def citations(text: str) -> list[str]:
    """``tests/<file>.py::<test>`` for every test cited in ``text``; ``::test_y`` is of the file before."""
    return [test for test, _ in cited(text)]


@dataclass(frozen=True)
class Lesson:
    """One bullet of a "Lessons" section."""

    section: str  # the title of the section it belongs to, e.g. "Experiment 02: error handling"
    text: str  # the bullet's text, citations left out, on one line
    tests: tuple[str, ...]  # the tests it cites, "tests/<file>.py::<test>"

    @property
    def headline(self) -> str:
        """The bullet's first sentence: what ``python -m lab run`` prints."""
        return re.split(r"(?<=[.!?])\s+(?=[A-Z0-9`*\"(])", self.text, maxsplit=1)[0]


def _without_citations(text: str) -> str:
    """``text`` without the parentheses that cite tests, on one line."""
    text = re.sub(r"\s*\((?:[^()]|\([^()]*\))*::test_\w+(?:[^()]|\([^()]*\))*\)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _is_proof(node: docutils.nodes.Node) -> bool:
    """A lesson's proof line: the paragraph "Proof: ``tests/...::test_x`` [mark], ..." that follows its words."""
    return isinstance(node, docutils.nodes.paragraph) and node.astext().startswith("Proof:")


def _section_title(node: docutils.nodes.Node) -> str:
    """The title of the section ``node`` is in; at the top of a page, the page's title (docutils makes a page's
    one top section its document title: a chapter page's "Experiment 05: ...")."""
    while node is not None and not isinstance(node, (docutils.nodes.section, docutils.nodes.document)):
        node = node.parent
    if node is None:
        return ""
    titles = [child for child in node.children if isinstance(child, docutils.nodes.title)]
    return titles[0].astext() if titles else ""


@cache
def lessons(*paths: Path) -> tuple[Lesson, ...]:
    """Every lesson in ``paths`` (default: :func:`pages`), in the order they appear.

    Parsing the pages takes most of a second of CPU, in every process that runs a scenario: so what
    it found is kept in lab/__pycache__/, under a name made of the pages' paths, sizes and times.
    """
    paths = paths or pages()
    stats = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in paths]
    saved = CACHE / f"lessons-{hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        return tuple(Lesson(section, text, tuple(tests)) for section, text, tests in json.loads(saved.read_text()))
    found = tuple(lesson for path in paths for lesson in _lessons_of(path))
    with contextlib.suppress(OSError):  # a read-only checkout parses every time
        CACHE.mkdir(exist_ok=True)
        partial = saved.with_suffix(f".{os.getpid()}")
        partial.write_text(json.dumps([astuple(lesson) for lesson in found]))
        partial.replace(saved)  # whole or not at all, for a process reading it meanwhile
        for old in CACHE.glob("lessons-*.json"):  # an edit of the pages makes a new one: keep the last few
            if old != saved and time.time() - old.stat().st_mtime > 3600:
                old.unlink(missing_ok=True)
    return found


def _lessons_of(path: Path) -> list[Lesson]:
    tree = docutils.core.publish_doctree(
        path.read_text(encoding="utf-8"), settings_overrides={"warning_stream": io.StringIO()})
    found = []
    for section in tree.findall(docutils.nodes.section):
        if section[0].astext() != "Lessons":
            continue
        parent = _section_title(section.parent)
        for bullets in section.findall(docutils.nodes.bullet_list):
            if _section_title(bullets) != "Lessons":
                continue
            for item in bullets.children:
                if isinstance(item, docutils.nodes.list_item) and item.parent is bullets:
                    text = item.astext()
                    words = "\n\n".join(part.astext() for part in item.children if not _is_proof(part))
                    found.append(Lesson(parent, _without_citations(words), tuple(citations(text))))
    return found


def lesson_for(test: str) -> Lesson:
    """The lesson that cites ``test`` (``tests/<file>.py::<test>``). LookupError if none does."""
    for lesson in lessons():
        if test in lesson.tests:
            return lesson
    raise LookupError(f"no lesson in README.rst or docs/ cites {test}")
