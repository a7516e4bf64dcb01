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

import click
import dramatiq

import lab

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
        "gave up on %s%s after %d retries; it is in %s.XQ now",
        message["actor_name"], tuple(message["args"]), retry_info["retries"], QUEUE,
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


def scenario(run: lab.Run) -> None:
    """`python -m lab run e02`: every path through Retries, with backoffs 10x smaller."""
    run.start_worker(threads=1)  # one thread: what runs during a backoff ran on the thread that failed
    fast = dict(max_retries=3, min_backoff=100, max_backoff=1000)
    handled.send(UNLUCKY)
    doomed = unhandled.send_with_options(args=(UNLUCKY,), **fast)
    aborted.send(UNLUCKY)
    postponed.send(1, 300)
    run.wait_until(lambda: run.attempts("unhandled"), timeout=5)
    during_backoff = [handled.send(i) for i in range(5)]
    run.settle(QUEUE, timeout=15)

    once = run.attempts("handled", UNLUCKY)
    run.lesson("handled(17) caught its error: one attempt, never retried",
               len(once) == 1 and once[0].outcome == "ok", f"{len(once)} attempt(s)")
    tries = run.attempts("unhandled", UNLUCKY)
    delays = [e.delay_ms for e in run.enqueues("unhandled") if e.delay_ms is not None]
    run.lesson("unhandled(17) ran 1 + max_retries times, each retry waiting min_backoff*2^k to twice that",
               len(tries) == 4 and len(delays) == 3
               and all(100 * 2**k <= d < 200 * 2**k for k, d in enumerate(delays)),
               f"{len(tries)} attempts; backoffs {delays} ms for min_backoff=100")
    dead = [d.message.message_id for d in lab.dead_letters(broker, QUEUE)]
    callback = run.attempts("retries_exhausted")
    run.lesson("After the last retry the message is in e02.XQ and on_retry_exhausted ran",
               doomed.message_id in dead and len(callback) == 1,
               f"in XQ: {doomed.message_id in dead}; callback attempts: {len(callback)}")
    thrown = run.attempts("aborted", UNLUCKY)
    run.lesson("throws=ValueError: aborted(17) ran once and went to the dead letters",
               len(thrown) == 1 and thrown[0].outcome == "failed", f"{len(thrown)} attempt(s)")
    later = run.attempts("postponed")
    gap = later[1].started - later[0].ended if len(later) == 2 else 0
    run.lesson("Retry(delay=300) ran the message again at least 300 ms later",
               len(later) == 2 and gap >= 0.3, f"{len(later)} attempts, {gap * 1000:.0f} ms apart")
    ids = {m.message_id for m in during_backoff}
    between = [a for a in run.attempts("handled") if a.message_id in ids
               and tries and a.started < tries[1 if len(tries) > 1 else 0].started]
    run.lesson("A backoff is not a sleep: the one worker thread ran other messages before the retry",
               len(between) == len(ids), f"{len(between)} of {len(ids)} ran during the first backoff")


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send one of e02's messages (N: a whole number >= 0; 17 fails), or list the dead letters."""


def _send_command(actor: dramatiq.Actor) -> None:
    @main.command(actor.actor_name, help=actor.fn.__doc__)
    @click.argument("n", type=click.IntRange(min=0))
    @click.option("--max-retries", type=click.IntRange(min=0), help=f"Default {RETRIES['max_retries']}.")
    @click.option("--min-backoff", type=click.IntRange(min=1), metavar="MS", help="Default 1000.")
    @click.option("--max-backoff", type=click.IntRange(min=1), metavar="MS", help="Default 8000.")
    def send(n: int, **overrides: int | None) -> None:
        # send_with_options: options for this one message override the actor's.
        options = {name: value for name, value in overrides.items() if value is not None}
        lab.confirm(actor.send_with_options(args=(n,), **options))


for _actor in (handled, unhandled, aborted, postponed):
    _send_command(_actor)


@main.command("dead-letters")
def dead_letters() -> None:
    """Count and list the messages in e02's dead-letter queue (e02.XQ)."""
    letters = lab.dead_letters(broker, QUEUE)
    click.echo(f"{len(letters)} dead letter(s) in {QUEUE}.XQ")
    for letter in letters:
        click.echo(f"  {letter.message.actor_name}{tuple(letter.message.args)}  id={letter.message.message_id}")


if __name__ == "__main__":
    sys.exit(main())
