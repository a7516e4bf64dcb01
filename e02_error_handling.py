"""Experiment 02: error handling

Goal: see what Dramatiq does when an actor raises: retries with backoff, dead letters, throws= and Retry.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e02_error_handling       # the worker
    python e02_error_handling.py handled 17     # caught inside the actor: runs once
    python e02_error_handling.py unhandled 17   # raises: 3 retries, then the dead-letter queue
    python e02_error_handling.py unhandled 17 --max-retries 1 --min-backoff 200
    python e02_error_handling.py aborted 17     # throws=ValueError: never retried
    python e02_error_handling.py postponed 1    # raises Retry(delay=500) once
    python e02_error_handling.py dead-letters   # what is in e02.XQ
"""

import sys

import lab

import click
import dramatiq

broker = lab.setup_broker()

UNLUCKY = 17  # every actor here fails on 17
QUEUE = "e02"
# Small enough to watch: waits of 1-2 s, 2-4 s, 4-8 s. (Dramatiq's defaults, 20 retries
# from 15 s and capped at 7 days, would keep retrying for about a month.)
RETRIES = dict(max_retries=3, min_backoff=1000, max_backoff=8000)


@dramatiq.actor(queue_name=QUEUE)
def retries_exhausted(message: dict, retry_info: dict) -> None:
    """Sent by Retries (on_retry_exhausted=) when a message has used up its retries."""
    retries_exhausted.logger.warning(
        "gave up on %s(%s) after %d retries; it is in %s.XQ now",
        message["actor_name"], ", ".join(map(repr, message["args"])), retry_info["retries"], QUEUE,
    )


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def handled(n: int) -> None:
    """Catches its own error: Dramatiq never sees it, so nothing is retried."""
    try:
        if n == UNLUCKY:
            raise ValueError(f"{n} is unlucky")
        handled.logger.info("ok %d (%s)", n, lab.describe_attempt())
    except ValueError as exc:
        handled.logger.warning("dropped: %s (%s)", exc, lab.describe_attempt())


@dramatiq.actor(queue_name=QUEUE, on_retry_exhausted=retries_exhausted.actor_name, **RETRIES)
def unhandled(n: int) -> None:
    """Lets the error escape: Retries re-enqueues the message with a growing delay."""
    unhandled.logger.info("trying %d (%s)", n, lab.describe_attempt())
    if n == UNLUCKY:
        raise ValueError(f"{n} is unlucky")


@dramatiq.actor(queue_name=QUEUE, throws=(ValueError,), **RETRIES)
def aborted(n: int) -> None:
    """throws=: an expected error fails the message at once, no retry, no traceback."""
    aborted.logger.info("trying %d (%s)", n, lab.describe_attempt())
    if n == UNLUCKY:
        raise ValueError(f"{n} is unlucky")


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def postponed(n: int, delay_ms: int = 500) -> None:
    """Raises Retry(delay=...) on its first attempt: a retry at a chosen delay, logged without a traceback."""
    postponed.logger.info("trying %d (%s)", n, lab.describe_attempt())
    if dramatiq.middleware.CurrentMessage.get_current_message().options.get("retries", 0) == 0:
        raise dramatiq.Retry(delay=delay_ms)


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send one of e02's messages (N: a whole number >= 0; 17 fails), or list the dead letters."""


def _send_command(actor: dramatiq.Actor) -> None:
    @main.command(actor.actor_name, help=actor.fn.__doc__)
    @click.argument("n", type=click.IntRange(min=0))
    @click.option("--max-retries", type=click.IntRange(min=0), help=f"Default {RETRIES['max_retries']}.")
    @click.option("--min-backoff", type=click.IntRange(1, lab.MAX_DELAY_MS), metavar="MS", help="Default 1000.")
    @click.option("--max-backoff", type=click.IntRange(1, lab.MAX_DELAY_MS), metavar="MS", help="Default 8000.")
    def send(n: int, **overrides: int | None) -> None:
        # send_with_options: options for this one message override the actor's.
        options = {name: value for name, value in overrides.items() if value is not None}
        backoff = {**RETRIES, **options}
        if backoff["min_backoff"] > backoff["max_backoff"]:  # Dramatiq would quietly cap every backoff
            raise click.BadParameter(f"{backoff['min_backoff']} is above the max backoff, {backoff['max_backoff']} "
                                     "ms: raise --max-backoff too", param_hint="--min-backoff")
        lab.confirm(actor.send_with_options(args=(n,), **options))


for _actor in (handled, unhandled, aborted, postponed):
    _send_command(_actor)


@main.command("dead-letters")
def dead_letters() -> None:
    """Count and list the messages in e02's dead-letter queue (e02.XQ)."""
    letters = lab.dead_letters(broker, QUEUE)
    click.echo(f"{len(letters)} dead letter(s) in {QUEUE}.XQ")
    for letter in letters:
        click.echo(f"  {letter.message.actor_name}({', '.join(map(repr, letter.message.args))})  "
                   f"id={letter.message.message_id}")


if __name__ == "__main__":
    sys.exit(main())
