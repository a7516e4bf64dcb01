"""``python -m lab run`` teaches in one screen an experiment: each lesson once, its evidence on one line.

No Redis: these tests print runs built by hand (a StubBroker carries the recorder).
"""

from lab import experiments
from lab.recorder import Recorder
from lab.report import by_lesson, show
from lab.scenario import Check, Run

from dramatiq.brokers.stub import StubBroker
from rich.console import Console

LESSON_A = "An actor's priority only orders the messages that one worker has already fetched into memory."
LESSON_B = "Within one priority, a worker runs the messages it holds first in, first out, since Dramatiq 2.2.0."


def a_run(*checks: Check) -> Run:
    broker = StubBroker()
    run = Run("e06_priorities", broker, Recorder.install(broker))
    run.checks.extend(checks)
    return run


def printed(run: Run, *, verbose: bool = False) -> list[str]:
    console = Console(width=100, record=True, force_terminal=False)
    show(console, experiments.find("e06"), run, verbose=verbose)
    return console.export_text().splitlines()


def test_a_lesson_that_two_checks_prove_is_printed_once_with_both_evidences():
    # Given two checks of one lesson (prefetch 2 and prefetch 50) and a check of another
    run = a_run(Check("t::a1", LESSON_A, True, "ran 21 of 21"), Check("t::b", LESSON_B, True, "in order"),
                Check("t::a2", LESSON_A, True, "ran 1 of 21"))

    # When the run is printed
    lines = printed(run)

    # Then each lesson shows once, in the order first checked, with both evidences on one line
    assert [line for line in lines if "already fetched" in line or "first in, first out" in line] == [
        next(line for line in lines if "already fetched" in line),
        next(line for line in lines if "first in, first out" in line)]
    assert any("ran 21 of 21; ran 1 of 21" in line for line in lines)
    assert not any("pytest t::" in line for line in lines), "the tests show only with --verbose"


def test_a_lesson_held_by_one_check_and_skipped_by_another_reads_held_with_the_evidence_that_held():
    checks = [Check("t::x", LESSON_A, None, "needs redis-server"), Check("t::y", LESSON_A, True, "stopped at 3")]
    [(lesson, held, _)] = by_lesson(checks)
    assert (lesson, held) == (LESSON_A, True)
    lines = printed(a_run(*checks))
    assert any(line.startswith("held") for line in lines) and not any(line.startswith("skipped") for line in lines)
    assert any("stopped at 3" in line for line in lines) and not any("needs redis-server" in line for line in lines)


def test_one_failed_check_makes_the_lesson_not_held():
    checks = [Check("t::x", LESSON_A, True, ""), Check("t::y", LESSON_A, False, "ran 21 of 21")]
    assert [held for _, held, _ in by_lesson(checks)] == [False]


def test_evidence_stays_on_one_line_within_100_columns_and_verbose_names_the_tests():
    # Given evidence far longer than a line, with a newline in it
    run = a_run(Check("t::a1", LESSON_A, True, "order " + ", ".join(map(str, range(200))) + "\nmore"))

    # When printed for a pipe (100 columns), and verbose
    lines, verbose = printed(run), printed(run, verbose=True)

    # Then every line fits, the evidence is one cut line, and verbose adds the test
    assert max(map(len, lines)) <= 100
    assert len([line for line in lines if "order 0, 1, 2" in line]) == 1
    assert any(line.strip() == "pytest t::a1" for line in verbose)
