"""Experiment 08: time limits, age limits and callbacks

Goal: see what time_limit= can stop and what it cannot, what max_age skips, and how often each callback fires.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e08_time_limits                  # the worker
    python e08_time_limits.py spin 3000 --limit 1000    # a Python loop: stopped 1 to 2 s in
    python e08_time_limits.py nap 3000 --limit 1000     # time.sleep: the limit fires at 1-2 s, the sleep runs 3 s
    python e08_time_limits.py tidy 3000 --limit 1000    # catches TimeLimitExceeded, cleans up, succeeds
    python e08_time_limits.py spin_once 3000 --limit 1000   # throws=(TimeLimitExceeded,): failed at once, no retry
    python e08_time_limits.py flaky 3                   # fails 3 times, then succeeds: 3 x on_failure, 1 x on_success
    python e08_time_limits.py flaky 9                   # never succeeds: 4 x on_failure, 1 x on_retry_exhausted
    python e08_time_limits.py spin 10 --delay 2000 --max-age 1000   # too old when due: skipped, never run
"""

import sys
import time

import lab

import click
import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimit, TimeLimitExceeded

broker = lab.setup_broker()

QUEUE = "e08"
LIMIT_MS = 1000  # these actors' time_limit; TimeLimit's own default is 10 minutes
RETRIES = dict(max_retries=2, min_backoff=500, max_backoff=2000)  # 0.5-1 s, then 1-2 s (default: 20, from 15 s)


def start_time_limits(broker: dramatiq.Broker) -> None:
    """Start TimeLimit's checker thread, as the `dramatiq` CLI does in each worker process (after_process_boot,
    a hook only the CLI sends): without this, no time limit fires in a plain dramatiq.Worker (a test, `lab run`)."""
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit) and not middleware.manager.is_alive():
            middleware.manager.start()


def busy(ms: int) -> None:
    """Pure-Python work for ``ms`` milliseconds: the thread runs bytecode all along, so it can be interrupted."""
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline:
        pass


def ran_ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def called(message: dict) -> str:
    """How a callback names the message it was given: ``flaky(3)``."""
    return f"{message['actor_name']}({', '.join(map(repr, message['args']))})"


@dramatiq.actor(queue_name=QUEUE, time_limit=LIMIT_MS, **RETRIES)
def spin(ms: int) -> None:
    """A Python loop of MS ms: the time limit stops it, at TimeLimit's next check (once a second)."""
    started, actor = time.monotonic(), CurrentMessage.get_current_message().actor_name  # spin, or spin_once
    spin.logger.info("spinning for %d ms (%s)", ms, lab.describe_attempt())
    try:
        busy(ms)
    finally:  # runs whether the loop ended or TimeLimitExceeded stopped it
        spin.logger.info("%s(%d) ran %s", actor, ms, ran_ms(started))


@dramatiq.actor(queue_name=QUEUE, time_limit=LIMIT_MS, **RETRIES)
def nap(ms: int) -> None:
    """time.sleep(MS): a blocking call. The limit fires on time, but the exception waits for the sleep to end."""
    started = time.monotonic()
    nap.logger.info("sleeping for %d ms (%s)", ms, lab.describe_attempt())
    try:
        time.sleep(ms / 1000)
    finally:
        nap.logger.info("nap(%d) ran %s", ms, ran_ms(started))


@dramatiq.actor(queue_name=QUEUE, time_limit=LIMIT_MS, **RETRIES)
def tidy(ms: int, cleanup_ms: int = 200) -> None:
    """Catches TimeLimitExceeded (a BaseException: `except Exception` does not), cleans up, returns: a success."""
    started = time.monotonic()
    try:
        busy(ms)
    except TimeLimitExceeded:
        tidy.logger.warning("out of time after %s: cleaning up for %d ms", ran_ms(started), cleanup_ms)
        busy(cleanup_ms)  # the limit fires once per message: this is not interrupted
    tidy.logger.info("tidy(%d) returns after %s", ms, ran_ms(started))


@dramatiq.actor(queue_name=QUEUE)
def succeeded(message: dict, result: object) -> None:
    """on_success: receives the message (a dict) and the actor's return value."""
    succeeded.logger.info("on_success: %s returned %r", called(message), result)


@dramatiq.actor(queue_name=QUEUE)
def failed(message: dict, error: dict) -> None:
    """on_failure: receives the message and {"type", "message"}; sent after EVERY failed attempt."""
    failed.logger.warning("on_failure: %s raised %s: %s", called(message), error["type"], error["message"])


@dramatiq.actor(queue_name=QUEUE)
def exhausted(message: dict, retry_info: dict) -> None:
    """on_retry_exhausted: sent once, when Retries gives up; receives the message and the retry counts."""
    exhausted.logger.error("on_retry_exhausted: %s after %d retries", called(message), retry_info["retries"])


@dramatiq.actor(queue_name=QUEUE, time_limit=LIMIT_MS, throws=(TimeLimitExceeded,), on_failure=failed.actor_name,
                on_retry_exhausted=exhausted.actor_name, **RETRIES)
def spin_once(ms: int) -> None:
    """spin, but a time-out is final: throws=(TimeLimitExceeded,) fails it at once, unretried despite its
    max_retries. on_failure fires; on_retry_exhausted does not, as no retry ran out."""
    spin.fn(ms)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=200, max_backoff=1000, on_success=succeeded.actor_name,
                on_failure=failed.actor_name, on_retry_exhausted=exhausted.actor_name)
def flaky(failures: int) -> int:
    """Fails on its first FAILURES attempts, then succeeds and returns its attempt number (3 retries)."""
    attempt = CurrentMessage.get_current_message().options.get("retries", 0) + 1
    flaky.logger.info("flaky(%d): %s", failures, lab.describe_attempt())
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} of the {failures} that fail")
    return attempt


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send one of e08's messages; --delay and --max-age show an age limit at work."""


def _send_command(actor: dramatiq.Actor, argument: str, bounds: click.IntRange) -> None:
    @main.command(actor.actor_name, help=actor.fn.__doc__)
    @click.argument(argument, type=bounds)
    @click.option("--limit", type=click.IntRange(1, 600_000), metavar="MS", help="time_limit for this message.")
    @click.option("--delay", type=lab.Milliseconds(), metavar="MS", help="Send it this much later.")
    @click.option("--max-age", type=click.IntRange(1, lab.MAX_DELAY_MS), metavar="MS",
                  help="Skip it, unrun, if it starts more than MS after it was sent.")
    def send(limit: int | None, delay: int | None, max_age: int | None, **value: int) -> None:
        options = dict(time_limit=limit, delay=delay, max_age=max_age)  # for this message only
        lab.confirm(actor.send_with_options(args=tuple(value.values()), **{k: v for k, v in options.items() if v}))


for _actor in (spin, nap, tidy, spin_once):
    _send_command(_actor, "ms", click.IntRange(0, 600_000))
_send_command(flaky, "failures", click.IntRange(0, 10))


if __name__ == "__main__":
    sys.exit(main())
