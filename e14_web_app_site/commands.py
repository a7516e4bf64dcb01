"""Experiment 14's commands: `python e14_web_app.py migrate | runserver | rundramatiq`, as a manage.py's."""

from __future__ import annotations

import socket
import sys

import lab

import click
import redis
from django.conf import settings
from django.core.management import call_command

import e14_web_app_site


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP.replace("130", "4 the port is in use, 130"))
def main() -> None:
    """Run Experiment 14's web app or its worker, or create its tables."""


def check_servers() -> None:
    """The broker answers, and so does the Redis that keeps the refresh guard and the reports' results: on Redis
    the broker's own; on RabbitMQ the one beside it (none set: one line that says what to set, exit 2)."""
    broker = lab.setup_broker()
    lab.broker.check_redis(broker)
    if lab.broker.is_rabbitmq(broker):
        try:
            broker.client.ping()
        except redis.RedisError as exc:
            raise (lab.failures.explain(exc, broker.lab_redis_url) or exc) from None


def one_module() -> None:
    """The urlconf and the tasks module rundramatiq finds import the experiment as e14_web_app. Run as __main__
    (`python e14_web_app.py`), it would run again under that name and declare its actors twice, which Dramatiq 2
    refuses: __main__ is e14_web_app."""
    sys.modules.setdefault("e14_web_app", sys.modules["__main__"])


@main.command()
def migrate() -> None:
    """Create the tables of both SQLite files (in a temp dir) if they are missing."""
    e14_web_app_site.migrate()
    click.echo(f"tables ready in {settings.DATA_DIR}")


@main.command()
@click.argument("port", type=click.IntRange(1, 65535), default=8014)
def runserver(port: int) -> None:
    """Serve the app on 127.0.0.1:PORT (Django's runserver, no autoreload), once Redis (or RabbitMQ) answers."""
    check_servers()
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise lab.Failure(f"port {port} on 127.0.0.1 is in use; pick another PORT", lab.EXIT_TIMEOUT)
    e14_web_app_site.migrate()
    one_module()
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)


@main.command()
@click.option("--processes", "-p", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--threads", "-t", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--queues", "-Q", multiple=True, help="A queue to listen to (repeat it); default: all.")
def rundramatiq(processes: int, threads: int, queues: tuple[str, ...]) -> None:
    """Start the worker as django_dramatiq's `manage.py rundramatiq` does (it execs `dramatiq`)."""
    for queue in queues:
        if "," in queue:  # dramatiq would listen to one queue of that name, which nothing sends to
            raise click.BadParameter(f"{queue!r} is one queue name with commas in it; repeat -Q for each queue",
                                     param_hint="--queues")
    check_servers()
    one_module()
    call_command("rundramatiq", processes=processes, threads=threads, queues=queues or None)
