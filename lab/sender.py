"""What the senders share: one confirmation line, an attempt's description, waiting for results.

A sender is a click command or group built with ``cls=lab.Command`` or
``cls=lab.Group`` (lab/failures.py): its expected failures are then one line
on stderr and a documented exit code.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from dramatiq import Message
from dramatiq.middleware import CurrentMessage
from dramatiq.results import ResultTimeout

from .failures import EXIT_TIMEOUT, Failure


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


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """On a terminal, say what the sender waits for while it waits (on stderr, a spinner that goes away after).

    A sender that waits for a worker with no worker running would otherwise sit in silence.
    Off a terminal (a pipe, a test, CI) it prints nothing.
    """
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console  # here: a sender that does not wait starts without rich (0.03 s)

    with Console(stderr=True).status(f"{what} (Ctrl-C to stop)"):
        yield


def wait_for_result(message: Message, deadline: float) -> Any:
    """The message's result, waiting until ``deadline`` (a ``time.monotonic()`` value) at most.

    The Redis result backend waits whole seconds, rounded down (under 1000 ms, not
    at all), and redis-py 8 gives up on a socket after 5 s with ``redis.TimeoutError``,
    not ``ResultTimeout``: so wait in slices of 1 to 4 s. At the deadline, a Failure
    (exit 4) that says which worker to start. ResultFailure if the message failed for good.
    """
    with waiting(f"waiting for the result of {message.actor_name} from a worker on queue {message.queue_name}"):
        while (left := deadline - time.monotonic()) > 0:
            try:
                return message.get_result(block=True, timeout=min(math.ceil(left), 4) * 1000)
            except ResultTimeout:
                pass
    raise Failure(f"no result for {message} in time: is a worker for queue {message.queue_name} running?",
                  EXIT_TIMEOUT)
