"""``python -m lab``: the whole lab from one command.

Exit codes (every command): 0 ok; 1 a lesson did not hold (run) or purge
was declined; 2 bad arguments, unknown experiment or bad URL; 3 Redis
unreachable (rabbitmq: rabbitmq-server missing); 4 serve, dashboard or rabbitmq cannot listen on its port;
5 Redis refused the password;
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import json
import uuid
from contextlib import ExitStack

import click
import redis
from dramatiq.brokers.redis import RedisBroker
from rich.console import Console
from rich.table import Table

from . import experiments
from .broker import connect, use_broker
from .canary import canary
from .dashboard import dashboard
from .failures import EXIT_FAILED, EXIT_USAGE, Failure, Group
from .options import redis_option
from .private_rabbit import rabbitmq
from .purge import purge
from .report import show
from .run_vhost import run_vhost
from .scenario import Run, run_scenario, worker_log
from .server import serve
from .status import status
from .urls import MEMORY_URL, mask_url

# Not a terminal (a pipe, a file, CI): 100 columns, so a lesson's line is not cut at 80.
out = Console(highlight=False)
if not out.is_terminal:
    out.width = 100
err = Console(stderr=True, highlight=False)


@click.group(cls=Group, epilog=__doc__.split("\n\n", 1)[1].replace("\n", " "))
def cli() -> None:
    """The Dramatiq learning lab: list, run and inspect the experiments."""


cli.add_command(serve)
cli.add_command(status)
cli.add_command(purge)
cli.add_command(canary)
cli.add_command(dashboard)
cli.add_command(rabbitmq)


@cli.command("list")
def list_experiments() -> None:
    """The experiments: number, title and goal, read from their modules."""
    table = Table("#", "title", "goal", box=None)
    table.columns[1].no_wrap = True
    for experiment in experiments.all_experiments():
        table.add_row(experiment.number, experiment.short_title, experiment.goal)
    out.print(table)


@cli.command()
@click.argument("experiment", metavar="EXP|all")
# The one command whose default is the embedded broker: it runs its worker in this
# process, so `python -m lab run all` works on a machine with no Redis at all.
@redis_option(MEMORY_URL)
@click.option("--json", "as_json", is_flag=True, help="Print the observations as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Also show every attempt, and the test that proves each lesson.")
@click.option("--log", is_flag=True, help="Also show the worker's log (actors' lines, tracebacks) on stderr.")
def run(experiment: str, url: str, as_json: bool, verbose: bool, log: bool) -> None:
    """Run an experiment's scenario (or all of them) and check its lessons.

    A worker starts in this process, the scenario sends its messages and
    waits for them to settle, then each lesson (in the docs' words) is
    printed once, held or not, with what this run observed; --verbose adds
    every attempt and the tests. On a real Redis the
    run uses a namespace of its own, so other workers do not take its
    messages, and deletes its keys after.
    """
    try:
        chosen = experiments.all_experiments() if experiment == "all" else [experiments.find(experiment)]
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="EXP") from None
    namespace = f"lab-run-{uuid.uuid4().hex[:8]}"
    broker, vhost = connect(url, namespace=namespace), ExitStack()  # unreachable, refused: one line, exit 3 or 5
    if not isinstance(broker, RedisBroker) and len(chosen) == 1 and chosen[0].has_scenario and chosen[0].redis_only:
        broker.close()
        raise Failure(f"{chosen[0].number}'s scenario runs on Redis only: {chosen[0].redis_only}. "
                      "Run it with --broker redis://... (or none: the embedded one)", EXIT_USAGE)
    if not isinstance(broker, RedisBroker):  # RabbitMQ: a vhost of the run's own stands for the namespace
        url, why = vhost.enter_context(run_vhost(url, namespace))
        if why:
            err.print(f"[dim]{why}: the run plays in the URL's vhost, where a worker of another terminal may take "
                      "its messages[/]", soft_wrap=True)
        else:
            broker.close()
            broker = connect(url, namespace=namespace)
    use_broker(broker)
    runs: list[Run] = []
    try:
        with worker_log(shown=log):  # the table tells the story; --log shows the worker's log too
            for index, exp in enumerate(chosen, 1):
                if not exp.has_scenario:
                    err.print(f"{exp.number} has no scenarios/{exp.name}.py to play; skipped")
                    continue
                if not isinstance(broker, RedisBroker) and exp.redis_only:
                    err.print(f"{exp.number} runs on Redis only ({exp.redis_only}); skipped")
                    continue
                with err.status(f"[{index}/{len(chosen)}] {exp.number}: {exp.title} on {mask_url(url)}"):
                    runs.append(run_scenario(exp.name, experiments.load_scenario(exp), broker))
                if not as_json:
                    show(out, exp, runs[-1], verbose=verbose)
    finally:
        # the run's Redis keys; on RabbitMQ with no Redis beside it there are none (its client is a stand-in)
        if url != MEMORY_URL and getattr(broker, "lab_redis_url", url) is not None:
            delete_keys(broker, namespace)
        broker.close()
        vhost.close()
    if as_json:
        click.echo(json.dumps({"runs": [r.as_dict() for r in runs], "all_held": all(r.all_held for r in runs)},
                              indent=2, default=list))
    checks = [check for r in runs for check in r.checks]
    held = sum(check.held is True for check in checks)
    skipped = sum(check.held is None for check in checks)
    if not as_json:
        out.print(f"\n{held} of {len(checks) - skipped} lessons held in {len(runs)} experiment(s)"
                  + (f"; {skipped} skipped." if skipped else "."))
    if not all(r.all_held for r in runs):
        raise SystemExit(EXIT_FAILED)


def delete_keys(broker: RedisBroker, namespace: str) -> None:
    """Delete the run's keys: "<namespace>:*" holds its queues, "<namespace>-results:*" its results.

    If Redis is gone, say what is left instead of failing a second time.
    """
    try:
        for key in broker.client.scan_iter(f"{namespace}*"):
            broker.client.delete(key)
    except redis.RedisError:
        err.print(f"[dim]cleanup skipped: Redis did not answer; the run's keys ({namespace}*) may remain[/]",
                  soft_wrap=True)
