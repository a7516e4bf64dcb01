"""What every sender shares: clean failures and one confirmation line.

Use ``@click.command(cls=lab.Command)`` or ``@click.group(cls=lab.Group)``:
an unreachable Redis then ends the sender with one line on stderr and exit
code 3 instead of a traceback.
"""

from __future__ import annotations

import threading
import time

import click
from dramatiq import Message
from dramatiq.middleware import CurrentMessage

from .broker import EXIT_UNREACHABLE, UNREACHABLE, current_url, how_to_get_redis

EXIT_CODES_HELP = "Exit codes: 0 sent, 2 bad arguments or URL, 3 Redis unreachable."


class _CleanFailures:
    """Turns "Redis is not there" into one line on stderr and exit code 3."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UNREACHABLE:
            click.echo(f"{ctx.find_root().info_name}: {how_to_get_redis(current_url())}", err=True)
            ctx.exit(EXIT_UNREACHABLE)


class Command(_CleanFailures, click.Command):
    """A click command that fails cleanly when Redis is unreachable."""


class Group(_CleanFailures, click.Group):
    """A click group that fails cleanly when Redis is unreachable, and so do its commands."""

    command_class = Command


def confirm(message: Message) -> None:
    """Print the one line a sender prints after enqueueing ``message``."""
    args = ", ".join(map(repr, message.args))
    click.echo(f"sent {message.actor_name}({args})  id={message.message_id}  queue={message.queue_name}")


def describe_attempt() -> str:
    """For an actor's log line: which attempt this is, on which thread, how long since sent.

    Reads the current message through the CurrentMessage middleware; a plain
    function call (no message) says so.
    """
    message = CurrentMessage.get_current_message()
    thread = threading.current_thread().name
    if message is None:
        return f"called directly, {thread}"
    attempt = message.options.get("retries", 0) + 1
    since_sent = time.time() - message.message_timestamp / 1000
    return f"attempt {attempt}, {thread}, {since_sent:.2f} s after it was sent"
