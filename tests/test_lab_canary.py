"""`python -m lab canary`: the suite on the newest releases, and the lessons it changes.

No network here: the mapping and the report get a made-up list of failing
tests and versions, and the command itself runs against a made-up virtual
environment whose ``python`` and ``pytest`` are small scripts.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from lab import canary
from lab.cli import cli
from lab.lessons import lessons

from click.testing import CliRunner
from packaging.requirements import Requirement
from rich.console import Console

from conftest import ROOT

SERVE_TEST = "tests/test_lab_serve.py::test_plain_fakeredis_tcp_server_closes_the_connection_after_an_error_reply"
SERVE_SECTION = "The lab's own Redis, and a look inside it: serve, status, purge, dashboard"
UNCITED = "tests/test_lab_canary.py::test_no_lesson_cites_this_one[redis]"


def test_requirements_txt_pins_every_requirement_with_double_equals():
    # The fresh-install promise: `pip install -r requirements.txt` gets the versions the lessons name.
    pinned = canary.requirements((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    operators = {requirement.name: [spec.operator for spec in requirement.specifier] for requirement in pinned}
    assert {"dramatiq", "redis", "fakeredis", "watchdog", "pytest"} <= set(operators)
    assert {name: ops for name, ops in operators.items() if ops != ["=="]} == {}
    assert [r.name for r in pinned if "*" in str(r.specifier)] == []  # ==2.* is a range too


def test_the_newest_releases_are_the_same_names_and_extras_without_the_pins():
    lines = ['dramatiq[watch,redis]==2.2.1', 'tomli==2.5.0; python_version < "3.11"']
    assert [canary.unpinned(Requirement(line)) for line in lines] == [
        "dramatiq[redis,watch]", 'tomli; python_version < "3.11"']


def test_the_versions_table_lists_only_the_packages_that_moved():
    pinned = [Requirement("fakeredis[lua]==2.40.0"), Requirement("redis==8.1.0"),
              Requirement('tomli==2.5.0; python_version < "3.0"')]
    installed = {"fakeredis": "2.41.0", "redis": "8.1.0", "tomli": "9.9"}  # tomli: not for this Python
    assert canary.moved(pinned, installed) == [canary.Moved("fakeredis", "2.40.0", "2.41.0")]


def test_a_failing_test_names_the_lesson_that_cites_it_and_the_rest_are_uncited():
    # Given the serve lesson's test failing on the newest releases, and one test no lesson cites,
    failing = [f"{SERVE_TEST}", UNCITED]
    # when they are mapped to README.rst's lessons,
    changed, uncited = canary.changed_lessons(failing, lessons())
    # then the serve lesson is named, with its section and its failing test; the other is left over.
    assert [(c.section, c.tests) for c in changed] == [(SERVE_SECTION, (SERVE_TEST,))]
    assert changed[0].lesson.startswith("fakeredis 2.40's TCP server closes the connection after an error reply")
    assert uncited == [UNCITED]


def test_a_parametrized_failure_counts_for_the_lesson_citing_its_function():
    lesson = lessons()[0]
    test = f"{lesson.tests[0]}[redis]"
    changed, uncited = canary.changed_lessons([test], (lesson,))
    assert ([c.tests for c in changed], uncited) == ([(test,)], [])


def junit_xml(failing: dict[str, str], passed: int = 2, skipped: int = 1) -> str:
    """A junit xml as pytest writes it: ``failing`` maps a node id to its error message."""
    cases = []
    for test, message in failing.items():
        module, name = test.split("::")
        classname = module.removesuffix(".py").replace("/", ".")
        cases.append(f'<testcase classname="{classname}" name="{name}"><failure message="{message}">'
                     f'long traceback</failure></testcase>')
    cases += ['<testcase classname="tests.test_docs" name="test_ok" />'] * passed
    cases += ['<testcase classname="tests.test_docs" name="test_skip"><skipped message="no" /></testcase>'] * skipped
    return f'<testsuites><testsuite name="pytest">{"".join(cases)}</testsuite></testsuites>'


def test_the_failing_tests_are_read_from_pytests_junit_xml(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(junit_xml({SERVE_TEST: "TimeoutError: timed out", UNCITED: "AssertionError: 1 == 2"}))
    suite = canary.read_junit(junit, exit_code=1)
    assert (suite.passed, suite.skipped, suite.exit_code) == (2, 1, 1)
    assert suite.failing == {SERVE_TEST: "TimeoutError: timed out", UNCITED: "AssertionError: 1 == 2"}


def test_a_test_in_a_class_and_a_file_that_failed_to_collect_keep_pytests_node_ids():
    assert canary.node_id("tests.test_docs.TestX", "test_y") == "tests/test_docs.py::TestX::test_y"
    assert canary.node_id("", "tests.test_broken") == "tests/test_broken.py"


def test_the_report_lists_what_moved_and_each_changed_lesson_with_its_section_and_failing_test():
    # Given fakeredis moved and its serve lesson's test failed there,
    suite = canary.Suite(exit_code=1, passed=600, failing={SERVE_TEST: "TimeoutError: timed out"})
    report = canary.make_report([Requirement("fakeredis[lua]==2.40.0")], {"fakeredis": "2.41.0"},
                                ["pytest"], suite, lessons())
    # when it is printed for a person,
    console = Console(record=True, width=300)
    canary.show(report, console)
    text = console.export_text()
    # then it says what moved, how the suite did, and which lesson changed, where, and why.
    assert "Versions that moved (pinned -> newest): 1" in text
    assert "fakeredis  2.40.0  2.41.0" in text
    assert "The suite on the newest releases (pytest): 1 failing, 600 passing, 0 skipped" in text
    assert "Lessons changed by the newest releases: 1\n  - fakeredis 2.40's TCP server closes the connection" in text
    assert f"    in {SERVE_SECTION}\n    failed {SERVE_TEST}: TimeoutError: timed out" in text
    assert "Failing tests no lesson cites: none" in text


def fake_venv(root: Path, installed: dict[str, str], failing: dict[str, str], pip_error: str = "") -> Path:
    """A virtual environment whose pip "installs" ``installed`` and whose pytest fails ``failing``."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    listing = json.dumps([{"name": name, "version": version} for name, version in installed.items()])
    python = f"""\
        #!{sys.executable}
        import sys
        if sys.argv[1:4] == ["-m", "pip", "install"] and {pip_error!r}:
            sys.exit(print({pip_error!r}, file=sys.stderr) or 1)
        if sys.argv[1:4] == ["-m", "pip", "list"]:
            print({listing!r})
        """
    pytest = f"""\
        #!{sys.executable}
        import sys
        [junit] = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--junitxml=")]
        open(junit, "w").write({junit_xml(failing, passed=3, skipped=0)!r})
        print("1 failed, 3 passed")
        sys.exit(1)
        """
    for name, script in {"python": python, "pytest": pytest}.items():
        (bin_dir / name).write_text(textwrap.dedent(script))
        (bin_dir / name).chmod(0o755)
    return root


def test_canary_runs_the_suite_in_the_second_venv_and_exits_0_with_the_changed_lessons(tmp_path):
    venv = fake_venv(tmp_path / "venv", {"fakeredis": "2.41.0", "dramatiq": "2.2.1"},
                     {SERVE_TEST: "TimeoutError: timed out"})
    result = CliRunner().invoke(cli, ["canary", "--venv", str(venv), "--json"], prog_name="python -m lab")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["moved"] == [{"package": "fakeredis", "pinned": "2.40.0", "newest": "2.41.0"}]
    assert [(c["section"], c["tests"]) for c in report["lessons_changed"]] == [(SERVE_SECTION, [SERVE_TEST])]
    assert report["suite"]["exit_code"] == 1 and report["failing_tests_no_lesson_cites"] == []
    assert "1 failed, 3 passed" in result.stderr  # pytest's own output, on stderr


def test_canary_that_cannot_install_says_why_in_one_line_and_exits_3(tmp_path):
    venv = fake_venv(tmp_path / "venv", {}, {}, pip_error="ERROR: No matching distribution found for dramatiq")
    result = CliRunner().invoke(cli, ["canary", "--venv", str(venv)], prog_name="python -m lab")
    assert result.exit_code == canary.EXIT_CANNOT_INSTALL == 3
    assert result.stderr.splitlines()[-1] == ("python -m lab: cannot install the newest releases from the package "
                                              "index: No matching distribution found for dramatiq")


def test_canary_refuses_a_venv_inside_the_checkout_in_one_line():
    # An empty --venv is the checkout itself: pytest and `dramatiq --watch .` would then read the venv's files
    for inside in ["", "docs/canary-venv"]:
        result = CliRunner().invoke(cli, ["canary", "--venv", inside], prog_name="python -m lab")
        assert result.exit_code == 2, result.output
        assert "outside the checkout" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (ROOT / "docs" / "canary-venv").exists() and not (ROOT / "pyvenv.cfg").exists()
