"""``python -m lab``: the whole lab from one command.

Exit codes (every command): 0 ok; 1 a lesson did not hold (run) or
purge was declined; 2 bad arguments, unknown experiment or bad URL; 3 Redis
unreachable; 4 serve cannot listen on its port.
"""

from __future__ import annotations

import json
import logging
import reprlib
import uuid

import click
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import experiments
from .broker import (
    EXIT_UNREACHABLE, MEMORY_URL, URL_ENV, how_to_get_redis, make_broker, mask_url, use_broker,
)
from .scenario import Run, run_scenario

EXIT_LESSON_FAILED = 1

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@click.group(epilog=__doc__.split("\n\n", 1)[1].replace("\n", " "))
def cli() -> None:
    """The Dramatiq learning lab: list, run and inspect the experiments."""


@cli.command("list")
def list_experiments() -> None:
    """The experiments: number, title and goal, read from their modules."""
    table = Table("#", "title", "goal", box=None)
    table.columns[1].no_wrap = True
    for experiment in experiments.all_experiments():
        table.add_row(experiment.number, experiment.short_title, experiment.goal)
    out.print(table)


def connect(url: str, *, namespace: str = "dramatiq"):
    """A broker on ``url`` that answers, or a clean exit: 2 for a bad URL, 3 if unreachable."""
    try:
        broker = make_broker(url, namespace=namespace)
    except ValueError as exc:
        raise click.BadParameter(f"{mask_url(url)!r} is not a Redis URL: {exc}", param_hint="--redis") from None
    try:
        broker.client.ping()
    except redis.RedisError:
        click.echo(f"lab: {how_to_get_redis(url)}", err=True)
        raise SystemExit(EXIT_UNREACHABLE) from None
    return broker


redis_option = click.option(
    "--redis", "url", envvar=URL_ENV, default=MEMORY_URL, show_default=True, metavar="URL",
    help=f"Redis to run on (also ${URL_ENV}); {MEMORY_URL} is the embedded one.",
)


@cli.command()
@click.argument("experiment", metavar="EXP|all")
@redis_option
@click.option("--json", "as_json", is_flag=True, help="Print the observations as JSON.")
@click.option("--log", is_flag=True, help="Also show the worker's log (actors' lines, tracebacks) on stderr.")
def run(experiment: str, url: str, as_json: bool, log: bool) -> None:
    """Run an experiment's scenario (or all of them) in-process and check its lessons.

    A worker starts in this process, the scenario sends its messages and
    waits for them to settle, then the attempts it observed and each lesson,
    held or not, are printed. On a real Redis the run uses a namespace of its
    own, so other workers do not take its messages, and deletes it after.
    """
    try:
        chosen = experiments.all_experiments() if experiment == "all" else [experiments.find(experiment)]
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="EXP") from None
    if log:
        logging.basicConfig(level=logging.INFO, format="[%(threadName)s] [%(name)s] [%(levelname)s] %(message)s")
    else:
        logging.disable(logging.ERROR)  # the table tells the story; --log shows the tracebacks too
    namespace = f"lab-run-{uuid.uuid4().hex[:8]}"
    broker = use_broker(connect(url, namespace=namespace))
    runs: list[Run] = []
    try:
        for index, exp in enumerate(chosen, 1):
            with err.status(f"[{index}/{len(chosen)}] {exp.number}: {exp.title} on {mask_url(url)}"):
                module = experiments.load(exp)
                if not hasattr(module, "scenario"):
                    click.echo(f"{exp.number} has no scenario(run) to play; skipped", err=True)
                    continue
                runs.append(run_scenario(module, broker))
            if not as_json:
                show(exp, runs[-1])
    finally:
        logging.disable(logging.NOTSET)
        if url != MEMORY_URL:
            # "<namespace>:*" holds the queues, "<namespace>-results:*" the results.
            for key in broker.client.scan_iter(f"{namespace}*"):
                broker.client.delete(key)
        broker.close()
    if as_json:
        click.echo(json.dumps({"runs": [r.as_dict() for r in runs], "all_held": all(r.all_held for r in runs)},
                              indent=2, default=list))
    held = sum(lesson.held for r in runs for lesson in r.lessons)
    total = sum(len(r.lessons) for r in runs)
    if not as_json:
        out.print(f"\n{held} of {total} lessons held in {len(runs)} experiment(s).")
    if held < total:
        raise SystemExit(EXIT_LESSON_FAILED)


def show(exp: experiments.Experiment, run: Run) -> None:
    """Print one run: its attempts in order, then its lessons."""
    out.rule(f"{exp.number}: {exp.title}")
    table = Table("actor", "args", "try", "thread", "at (s)", "took (ms)", "outcome", box=None)
    for a in sorted(run.attempts(), key=lambda a: a.started):
        took = "" if a.ended is None else f"{(a.ended - a.started) * 1000:.0f}"
        colour = {"ok": "green", "retried": "yellow", "failed": "red"}.get(a.outcome, "")
        table.add_row(a.actor, escape(", ".join(map(reprlib.repr, a.args))), str(a.number), a.thread,
                      f"{a.started:.3f}", took, f"[{colour}]{a.outcome}[/]" if colour else a.outcome)
    out.print(table)
    for lesson in run.lessons:
        mark = "[green]held[/]    " if lesson.held else "[red]NOT HELD[/]"
        out.print(f"  {mark} {escape(lesson.text)}")
        if lesson.evidence:
            out.print(f"           [dim]{escape(lesson.evidence)}[/]")


# Commands from other modules of the package register below.
from .server import serve  # noqa: E402

cli.add_command(serve)
from .status import purge, status  # noqa: E402

cli.add_command(status)
cli.add_command(purge)
