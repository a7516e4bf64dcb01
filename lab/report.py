"""What ``python -m lab run`` prints for one experiment: its lessons, held or not, one screen at most.

By default each lesson shows once, in two lines: held / NOT HELD / skipped and the lesson's first sentence
(the docs' words), then this run's evidence, each cut to the width (100 columns when not a terminal).
``--verbose`` shows them whole, with the table of every attempt and the tests that prove each lesson.
"""

from __future__ import annotations

import reprlib

from rich.console import Console, Group
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .experiments import Experiment
from .scenario import Check, Run

MARKS = {True: ("held", "green"), False: ("NOT HELD", "red"), None: ("skipped", "yellow")}


def by_lesson(checks: list[Check]) -> list[tuple[str, bool | None, list[Check]]]:
    """The checks grouped by lesson, in the order each lesson was first checked: (lesson, held, checks).

    A lesson that several checks prove holds when none failed and one held; it is skipped when all were.
    """
    grouped: dict[str, list[Check]] = {}
    for check in checks:
        grouped.setdefault(check.lesson, []).append(check)
    out = []
    for lesson, group in grouped.items():
        outcomes = {c.held for c in group}
        held = False if False in outcomes else True if True in outcomes else None
        out.append((lesson, held, group))
    return out


def attempts_table(run: Run) -> Table:
    """Every attempt the run observed, in the order they started."""
    table = Table("actor", "args", "try", "thread", "at (s)", "took (ms)", "outcome", box=None)
    table.columns[1].no_wrap, table.columns[1].overflow, table.columns[1].max_width = True, "ellipsis", 40
    for a in sorted(run.attempts(), key=lambda a: a.started):
        took = "" if a.ended is None else f"{(a.ended - a.started) * 1000:.0f}"
        colour = {"ok": "green", "retried": "yellow", "failed": "red"}.get(a.outcome, "")
        table.add_row(a.actor, escape(", ".join(map(reprlib.repr, a.args))), str(a.number), a.thread,
                      f"{a.started:.3f}", took, f"[{colour}]{a.outcome}[/]" if colour else a.outcome)
    return table


def _evidence(held: bool | None, checks: list[Check]) -> str:
    """What the checks of one lesson observed, on one line; a held lesson shows what held, not a skip."""
    shown = [c for c in checks if c.held is held] or checks
    return "; ".join(dict.fromkeys(c.evidence.replace("\n", " ").strip() for c in shown if c.evidence))


def lessons_table(run: Run, *, verbose: bool = False) -> Table:
    """One row a lesson: its mark, its first sentence, and the evidence on one line (with the tests: verbose)."""
    table = Table(box=None, show_header=False, padding=(0, 1, 0, 0))
    table.add_column(no_wrap=True, width=8)
    table.add_column(ratio=1)
    rows = [(lesson, held, checks, _evidence(held, checks)) for lesson, held, checks in by_lesson(run.checks)]
    for (lesson, held, checks, evidence), after in zip(rows, [*rows[1:], None], strict=True):
        word, colour = MARKS[held]
        # One line each, unless verbose: the lesson's first sentence (its page has the rest), the evidence
        lines: list[Text] = [Text(lesson, no_wrap=not verbose, overflow="ellipsis")]
        if held is None and after and after[1] is None and after[3] == evidence and not verbose:
            evidence = ""  # skipped for the same reason as the next lesson: the reason shows once, after it
        if evidence:
            lines.append(Text(evidence, style="dim", no_wrap=not verbose, overflow="ellipsis"))
        if verbose:
            lines += [Text(f"pytest {c.test}", style="dim") for c in checks]
        table.add_row(Text(word, style=colour), Group(*lines))
    return table


def show(console: Console, exp: Experiment, run: Run, *, verbose: bool = False) -> None:
    """Print one experiment's run: its lessons (and, verbose, its attempts first)."""
    console.print(Rule(exp.title))
    if verbose and run.attempts():
        console.print(attempts_table(run))
    console.print(lessons_table(run, verbose=verbose))
    for table in getattr(run, "tables", ()):  # a scenario's own tables (e13's brokers side by side), after
        console.print(table)
