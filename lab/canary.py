"""``python -m lab canary``: the newest releases of the lab's packages, and the lessons they change.

requirements.txt pins every package with ``==``: the versions README.rst's
lessons were checked against. The canary installs the newest releases of the
same packages (the same names and extras, without the pins) in a second
virtual environment, runs the suite there with the command README.rst gives
under "Run the tests", and names the lessons whose tests fail there: what the
next ``pip install`` without pins would make false, found before a newcomer
finds it. It reports and never fails: CI runs it after the suite, as a report.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .experiments import ROOT
from .failures import Failure
from .lessons import Lesson, lessons

REQUIREMENTS = ROOT / "requirements.txt"
README = ROOT / "README.rst"
EXIT_CANNOT_INSTALL = 3

EXIT_CODES = (
    "Exit codes: 0 the report is printed, whatever the suite did on the newest releases; 2 bad arguments; "
    f"{EXIT_CANNOT_INSTALL} the newest releases could not be installed (no package index, or pip failed)."
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


# -- what the lab pins, and what moved --------------------------------------------------------


def requirements(text: str) -> list[Requirement]:
    """The requirements of a requirements.txt, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def unpinned(requirement: Requirement) -> str:
    """The requirement without its version: its name, its extras and its marker."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{requirement.name}{extras}{marker}"


@dataclass(frozen=True)
class Moved:
    package: str
    pinned: str
    newest: str


def moved(pinned: list[Requirement], installed: dict[str, str]) -> list[Moved]:
    """The pinned packages whose installed version is another one, in requirements.txt's order."""
    rows = []
    for requirement in pinned:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # not for this Python (Python 3.10's extras, on 3.11)
        newest = installed.get(canonicalize_name(requirement.name))
        pin = next((spec.version for spec in requirement.specifier if spec.operator == "=="), "")
        if newest is not None and newest != pin:
            rows.append(Moved(requirement.name, pin, newest))
    return rows


# -- the suite's result, and the lessons it touches ------------------------------------------


def readme_test_command(readme: str) -> list[str]:
    """The command README.rst gives under "Run the tests" (the line .ci/run reads too)."""
    section = readme.split("Run the tests\n", 1)[1]
    return shlex.split(re.search(r"code-block:: sh\n\n    (.+)\n", section).group(1))


def node_id(classname: str, name: str) -> str:
    """pytest's node id (``tests/test_x.py::test_y[param]``) from a junit testcase's attributes."""
    if not classname:  # an error collecting a file: its name is the module
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")  # "tests.test_x", or "tests.test_x.TestY" for a test in a class
    cut = next((n for n in range(len(parts), 1, -1) if (ROOT / f"{'/'.join(parts[:n])}.py").is_file()), len(parts))
    return "::".join([f"{'/'.join(parts[:cut])}.py", *parts[cut:], name])


@dataclass
class Suite:
    """What pytest's junit xml says: counts, and the failing tests with their first error line."""

    exit_code: int
    passed: int = 0
    skipped: int = 0
    failing: dict[str, str] = field(default_factory=dict)  # node id -> the first line of its error


def read_junit(path: Path, exit_code: int) -> Suite:
    """The suite's result from pytest's ``--junitxml`` file (failures and errors both fail)."""
    suite = Suite(exit_code)
    for case in ElementTree.parse(path).iter("testcase"):
        problem = next((child for child in case if child.tag in ("failure", "error")), None)
        if problem is not None:
            why = (problem.get("message") or problem.text or problem.tag).strip().splitlines() or [problem.tag]
            suite.failing[node_id(case.get("classname", ""), case.get("name", ""))] = why[0][:160]
        elif case.find("skipped") is not None:
            suite.skipped += 1
        else:
            suite.passed += 1
    return suite


@dataclass(frozen=True)
class ChangedLesson:
    section: str
    lesson: str  # its headline, as `python -m lab run` prints it
    tests: tuple[str, ...]  # its cited tests that failed, with their parameters


def changed_lessons(failing: list[str], all_lessons: tuple[Lesson, ...]) -> tuple[list[ChangedLesson], list[str]]:
    """The lessons whose cited tests are among ``failing``, and the failing tests no lesson cites."""
    changed = []
    cited = set()
    for lesson in all_lessons:
        hit = tuple(test for test in failing if test.split("[", 1)[0] in lesson.tests)
        if hit:
            changed.append(ChangedLesson(lesson.section, lesson.headline, hit))
            cited.update(hit)
    return changed, [test for test in failing if test not in cited]


@dataclass
class Report:
    moved: list[Moved]
    command: str
    suite: Suite
    lessons_changed: list[ChangedLesson]
    failing_tests_no_lesson_cites: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def make_report(pinned: list[Requirement], installed: dict[str, str], command: list[str], suite: Suite,
                all_lessons: tuple[Lesson, ...]) -> Report:
    changed, uncited = changed_lessons(sorted(suite.failing), all_lessons)
    return Report(moved(pinned, installed), shlex.join(command), suite, changed, uncited)


def show(report: Report, console: Console) -> None:
    """The report for a person: what moved, how the suite did, which lessons changed."""
    table = Table("package", "pinned", "newest", box=None)
    for row in report.moved:
        table.add_row(row.package, row.pinned, row.newest)
    console.print(f"Versions that moved (pinned -> newest): {len(report.moved) or 'none'}")
    if report.moved:
        console.print(table)
    suite = report.suite
    console.print(f"The suite on the newest releases ({report.command}): {len(suite.failing)} failing, "
                  f"{suite.passed} passing, {suite.skipped} skipped (pytest's exit code {suite.exit_code}).")
    console.print(f"Lessons changed by the newest releases: {len(report.lessons_changed) or 'none'}")
    for lesson in report.lessons_changed:
        console.print(f"  - {escape(lesson.lesson)}", soft_wrap=True)
        console.print(f"    [dim]in {escape(lesson.section)}[/]", soft_wrap=True)
        for test in lesson.tests:
            console.print(f"    [red]failed[/] {escape(test)}: {escape(suite.failing[test])}", soft_wrap=True)
    console.print(f"Failing tests no lesson cites: {len(report.failing_tests_no_lesson_cites) or 'none'}")
    for test in report.failing_tests_no_lesson_cites:
        console.print(f"  [red]failed[/] {escape(test)}: {escape(suite.failing[test])}", soft_wrap=True)


# -- the second virtual environment -----------------------------------------------------------


def _run(args: list[str], what: str) -> str:
    """Run ``args``; its stdout, or a Failure (exit 3) with the last error line it printed."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or [f"exit code {done.returncode}"]
        raise Failure(f"{what}: {errors[-1].removeprefix('ERROR: ')}", EXIT_CANNOT_INSTALL)
    return done.stdout


def install_newest(venv: Path, pinned: list[Requirement]) -> dict[str, str]:
    """Make ``venv`` (unless it has a python), install the newest releases there; what is installed."""
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], f"cannot make a virtual environment in {venv}")
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade",
          "--upgrade-strategy", "eager", *map(unpinned, pinned)],
         "cannot install the newest releases from the package index")
    listed = _run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                  "cannot list the newest releases")
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}


def run_suite(venv: Path, command: list[str], junit: Path) -> Suite:
    """Run ``command`` (README's test command) with ``venv``'s packages; its output, once done, on stderr."""
    bin_dir = str(venv / "bin")
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONHOME", None)
    program = shutil.which(command[0], path=bin_dir) or command[0]
    args = [program, *command[1:], f"--junitxml={junit}", "-p", "no:cacheprovider"]
    log = junit.with_name("pytest.log")  # a file, not a pipe: a process the suite leaks cannot hold it open
    with log.open("w", encoding="utf-8") as output:
        exit_code = subprocess.run(args, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT).returncode
    click.echo(log.read_text(encoding="utf-8"), nl=False, err=True)
    if not junit.exists():  # pytest stopped before it could write it: nothing ran
        return Suite(exit_code, failing={"(the suite)": f"{shlex.join(command)} exited {exit_code} and ran nothing"})
    return read_junit(junit, exit_code)


@click.command(epilog=EXIT_CODES)
@click.option("--venv", "venv_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Make (or reuse, and upgrade) the second virtual environment here, and keep it; "
                   "default: a temporary one, deleted after.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def canary(venv_dir: Path | None, as_json: bool) -> None:
    """The suite on the newest releases: which lessons they change.

    Installs the newest releases of requirements.txt's packages (with their
    extras, without the pins) in a second virtual environment, runs
    README.rst's "Run the tests" command there (pytest's output on stderr),
    and prints which versions moved, and the lessons whose cited tests fail.
    It reports and never fails: exit 0 whatever the suite did.
    """
    if venv_dir is not None:
        where = venv_dir.resolve()
        if where == ROOT or ROOT in where.parents:  # '' or '.' included: a venv inside the checkout
            raise click.BadParameter(f"{venv_dir}: give a directory outside the checkout ({ROOT}), as for the "
                                     "lab's own venv: pytest and `dramatiq --watch .` would read its files",
                                     param_hint="--venv")
    pinned = requirements(REQUIREMENTS.read_text(encoding="utf-8"))
    command = readme_test_command(README.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="lab-canary-") as scratch:
        venv = venv_dir.resolve() if venv_dir else Path(scratch) / "venv"
        err.print(f"canary: installing the newest releases of {len(pinned)} packages in {venv}")
        installed = install_newest(venv, pinned)
        err.print(f"canary: running the suite there: {shlex.join(command)}")
        suite = run_suite(venv, command, Path(scratch) / "junit.xml")
    report = make_report(pinned, installed, command, suite, lessons())
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        show(report, out)
