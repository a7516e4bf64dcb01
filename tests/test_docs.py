"""README.rst and the chapters' pages (docs/eNN_*.rst) are part of the product: they render cleanly, their
citations hold, their lessons are checked."""

from __future__ import annotations

import ast
import io
import re
from functools import cache
from pathlib import Path

from lab import experiments
from lab.lessons import citations, cited, lessons, pages

import docutils.core

from conftest import ROOT

README = (ROOT / "README.rst").read_text(encoding="utf-8")
#: Every page, README.rst first, as one text: a citation's bare ``::test_y`` is of the file named before it.
TEXT = "\n\n".join(page.read_text(encoding="utf-8") for page in pages())
BOTH = {"broker_url", "server_url"}  # fixtures parametrized over fakeredis (or the embedded server) and redis
REAL = {"real_redis_url", "redis_server"}
RABBIT = {"rabbitmq_url", "rabbitmq_server", "private_rabbitmq"}  # a private rabbitmq-server (and maybe redis-server)
MARK = re.compile(r"``\s*\[(rabbitmq-server|redis-server|fakeredis|embedded server|no Redis)\]")


def test_readme_and_every_chapter_page_render_without_warnings():
    for page in pages():
        warnings = io.StringIO()
        docutils.core.publish_doctree(page.read_text(encoding="utf-8"),
                                      settings_overrides={"warning_stream": warnings, "report_level": 2})
        assert warnings.getvalue() == "", page.name


def test_no_page_has_a_placeholder_left():
    assert re.findall(r"XXX[-\w]*|TODO|TBD", TEXT) == []


def test_readme_links_every_chapter_page_and_each_page_names_its_chapter():
    for page in pages()[1:]:
        link = f"docs/{page.name}"
        assert f"`{link} <{link}>`_" in README, f"README.rst does not link {link}"
        title = page.read_text(encoding="utf-8").split("\n")[1]
        assert title in README and title.startswith("Experiment "), f"{link}: its title {title!r} is no chapter"


def test_a_newcomer_reaches_experiment_01_within_300_lines():
    lines = README.split("\n")
    assert lines.index("Experiment 01: hello world") < 300
    start = lines.index("Start here")
    assert start < 30 and any("dramatiq --watch . e01_hello_world" in line for line in lines[start:start + 120])


@cache
def functions(path: Path) -> dict[str, ast.FunctionDef]:
    """Every function of a test file and of conftest.py, by name (the file's own win)."""
    found = {}
    for source in (ROOT / "tests" / "conftest.py", path):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
    return found


def fixtures_reached(path: Path, name: str, seen: set[str] | None = None) -> set[str]:
    """The fixtures a test (or fixture) asks for, directly or through other fixtures."""
    seen = set() if seen is None else seen
    node = functions(path).get(name)
    if node is None or name in seen:
        return seen
    seen.add(name)
    asked = [a.arg for a in node.args.args]
    asked += re.findall(r"getfixturevalue\(\"(\w+)\"\)", ast.unparse(node))
    for fixture in asked:
        fixtures_reached(path, fixture, seen)
        seen.add(fixture)
    return seen


def runs_on(path: Path, name: str) -> str:
    """"both", "rabbitmq-server", "redis-server" or "one" (fakeredis, the embedded server, or no Redis)."""
    reached = fixtures_reached(path, name)
    bodies = [ast.unparse(functions(path)[f]) for f in reached if f in functions(path)]
    if reached & RABBIT or any("need_rabbitmq_server(" in body for body in bodies):
        return "rabbitmq-server"
    if reached & BOTH:
        return "both"
    if reached & REAL or any("need_redis_server(" in body for body in bodies):
        return "redis-server"
    return "one"


def all_citations() -> list[tuple[str, str | None]]:
    """(``tests/<file>.py::<test>``, its mark or None) for every citation in README.rst."""
    return [(test, mark.group(1) if (mark := MARK.match(TEXT, end)) else None) for test, end in cited(TEXT)]


def test_every_cited_test_exists():
    cited = all_citations()
    assert len(cited) > 100
    missing = [test for test, _ in cited if test.split("::")[1] not in functions(ROOT / test.split("::")[0])]
    assert missing == []


def test_every_unmarked_citation_runs_on_both_brokers():
    wrong = []
    for test, mark in all_citations():
        path, name = test.split("::")
        where = runs_on(ROOT / path, name)
        expected = {"both": [None], "redis-server": ["redis-server"], "rabbitmq-server": ["rabbitmq-server"],
                    "one": ["fakeredis", "embedded server", "no Redis"]}[where]
        if mark not in expected:
            wrong.append(f"{test}: marked {mark or 'nothing'}, runs on {where}")
    assert wrong == []


def scenario_checks(name: str) -> list[str]:
    """The tests that ``scenarios/<name>.py`` names in its run.check() and run.skip() calls."""
    tree = ast.parse((ROOT / "scenarios" / f"{name}.py").read_text(encoding="utf-8"))
    tests = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("check", "skip") and node.args
                and isinstance(node.args[0], ast.Constant)):
            test = node.args[0].value
            tests.append(test if "::" in test else f"tests/test_{name}.py::{test}")
    return tests


def test_every_scenario_check_points_at_a_lesson_of_its_own_experiment():
    sections = {test: lesson.section for lesson in lessons() for test in lesson.tests}
    wrong = []
    for experiment in experiments.all_experiments():
        checks = scenario_checks(experiment.name)
        assert checks, f"scenarios/{experiment.name}.py checks no lesson"
        for test in checks:
            if not sections.get(test, "").startswith(experiment.title):
                wrong.append(f"{experiment.name}: {test} is cited by {sections.get(test, 'no lesson')!r}")
    assert wrong == []


def test_every_lesson_names_a_test_and_starts_with_a_sentence_of_its_own():
    for lesson in lessons():
        assert lesson.tests, f"a lesson with no test: {lesson.text[:80]}"
        assert len(lesson.headline) >= 30, f"too short to stand alone in `lab run`: {lesson.headline!r}"


def test_citations_resolve_continuations_to_the_file_before():
    assert citations("(``tests/a.py::test_x``, ``::test_y``, ``tests/b.py::test_z``)") == [
        "tests/a.py::test_x", "tests/a.py::test_y", "tests/b.py::test_z"]
