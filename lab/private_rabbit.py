"""``python -m lab rabbitmq``: a private RabbitMQ for the learner, until Ctrl-C.

It is the tests' server (lab.processes.RabbitServer): ``rabbitmq-server`` as a child process,
not the system service, with its data, logs and config in a temporary directory, its own
epmd, and the management plugin on (``python -m lab status`` reads in-flight counts there).
Ctrl-C stops it by its pids and deletes its directory: nothing is left, and nothing is kept.
"""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import sys

import click

from .failures import EXIT_UNREACHABLE, Failure
from .processes import PortTaken, RabbitServer
from .server import EXIT_CANNOT_LISTEN, until_stopped
from .urls import BROKER_URL_ENV

EXIT_CODES = (f"Exit codes: 0 stopped by Ctrl-C or SIGTERM; 2 bad arguments; {EXIT_UNREACHABLE} rabbitmq-server "
              f"is not installed, or did not start; {EXIT_CANNOT_LISTEN} the port is in use.")


class LearnersRabbit(RabbitServer):
    """A RabbitServer whose AMQP port is the one asked for (0: a free one, as the tests' servers)."""

    def __init__(self, port: int) -> None:
        self.asked_port = port
        super().__init__(management=True)

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.port = self.asked_port or self.port


def _check_free(port: int) -> None:
    """Fail in one line, exit 4, if something listens on 127.0.0.1:``port`` already."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            why = "is in use by another program" if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc.strerror}"
            raise Failure(f"port {port} on 127.0.0.1 {why}; pick another with --port N (0: any free one)",
                          EXIT_CANNOT_LISTEN) from None


@click.command(epilog=EXIT_CODES, short_help="Run a private RabbitMQ (management plugin on) until Ctrl-C.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default="0: any free port",
              help="AMQP port on 127.0.0.1.")
def rabbitmq(port: int) -> None:
    """Run a private rabbitmq-server on 127.0.0.1 until Ctrl-C, its data in a temporary directory.

    Prints its amqp:// URL and the line that points the lab at it. It takes 5 to 15 s to start.
    Ctrl-C stops it and deletes its data.
    """
    try:
        RabbitServer.executable_path()
    except FileNotFoundError:
        raise Failure("rabbitmq-server is not installed: apt-get install rabbitmq-server (the system service "
                      "need not run)", EXIT_UNREACHABLE) from None
    if port:
        _check_free(port)
    click.echo("Starting a private rabbitmq-server (5 to 15 s)...", err=True)
    try:
        server = LearnersRabbit(port)
    except PortTaken:
        raise Failure(f"port {port} on 127.0.0.1 is in use by another program; pick another with --port N",
                      EXIT_CANNOT_LISTEN) from None
    except (TimeoutError, RuntimeError) as exc:
        raise Failure(f"rabbitmq-server did not start: {str(exc)[-200:]}", EXIT_UNREACHABLE) from None
    try:
        with until_stopped() as wait:
            click.echo(f"RabbitMQ {server.url} ready in {server.ready_seconds:.1f} s; management API on "
                       f"http://127.0.0.1:{server.management_port} (guest/guest). Ctrl-C stops it; "
                       "its data is gone then.")
            click.echo(f"export {BROKER_URL_ENV}={server.url}")
            click.echo(f"export LAB_RABBITMQ_MANAGEMENT_URL=http://guest:guest@127.0.0.1:{server.management_port}")
            sys.stdout.flush()
            wait()
    finally:
        # Its data is thrown away, so no clean stop: with the management plugin that takes 6 s, a kill 0.1 s.
        server.stop(signal.SIGKILL)
        shutil.rmtree(server.dir, ignore_errors=True)
    click.echo("Stopped; its data is gone.")
