"""Experiment 12: async actors and writing middleware

Goal: run async def actors with the AsyncIO middleware, and write a middleware with an actor option of its own.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e12_async_and_middleware   # the worker: one event loop thread for its async actors
    python e12_async_and_middleware.py nap 4      # 4 async actors await asyncio.sleep(0.5): done together
    python e12_async_and_middleware.py nap 4 --blocking   # time.sleep(0.5) instead: one after another
    python e12_async_and_middleware.py whoami     # an async actor reads CurrentMessage; prints its answer
    python e12_async_and_middleware.py report 1   # kill_switch="reports": each middleware hook logs a line
    python e12_async_and_middleware.py switch off   # report's messages are skipped until `switch on`
"""

import asyncio
import logging
import sys
import threading
import time

import lab

import click
import dramatiq
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware, SkipMessage

broker = lab.setup_broker()

QUEUE = "e12"
SWITCH = "e12:off:{}"  # a kill switch's key, under the broker's namespace (with ':', `lab status` skips it)
log = logging.getLogger(__name__)  # the middleware's trace: "<middleware>.<hook> <message>: ..."
NAPS: list[tuple[int, float, float]] = []  # (n, started, ended) of each nap, on the loop: the tests read it


def option(broker, message, name: str):
    """The message's option, else its actor's: @actor(name=...) is not copied into message.options."""
    return message.options.get(name, broker.get_actor(message.actor_name).options.get(name))


class KillSwitch(Middleware):
    """Skip the messages of actors declared with kill_switch="NAME" while the Redis key e12:off:NAME exists."""

    actor_options = {"kill_switch"}  # lets @dramatiq.actor(kill_switch=...) be declared at all

    def before_process_message(self, broker, message) -> None:
        if (name := option(broker, message, "kill_switch")) is None:
            return  # not an actor of ours: every experiment shares this broker
        off = broker.client.exists(lab.key(broker, SWITCH.format(name)))
        log.info("KillSwitch.before_process_message %s: switch %r is %s", message, name, "off" if off else "on")
        if off:
            raise SkipMessage(f"kill switch {name!r} is off")  # the actor does not run; the message is acked

    def after_skip_message(self, broker, message) -> None:
        if option(broker, message, "kill_switch") is not None:
            log.info("KillSwitch.after_skip_message %s", message)


class Stopwatch(Middleware):
    """Log how long the messages of actors declared with slow_ms=N take; warn past N ms."""

    actor_options = {"slow_ms"}  # (Dramatiq's own middleware use a property; a class attribute is enough)

    def before_process_message(self, broker, message) -> None:
        if option(broker, message, "slow_ms") is not None:
            message.e12_started = time.monotonic()  # read back in the after hook, on the same proxy
            log.info("Stopwatch.before_process_message %s", message)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if (started := getattr(message, "e12_started", None)) is None:
            return
        took_ms = (time.monotonic() - started) * 1000
        outcome = "ok" if exception is None else f"raised {type(exception).__name__}, failed={message.failed}"
        level = logging.WARNING if took_ms > option(broker, message, "slow_ms") else logging.INFO
        log.log(level, "Stopwatch.after_process_message %s: %.0f ms, %s", message, took_ms, outcome)


# Every experiment in this process shares the broker: add each once; each acts on async or opted-in actors only.
for _middleware in (AsyncIO(), KillSwitch(), Stopwatch()):
    if not any(type(m).__name__ == type(_middleware).__name__ for m in broker.middleware):
        broker.add_middleware(_middleware)  # an instance: add_middleware(AsyncIO) raises TypeError


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
async def async_nap(n: int, seconds: float = 0.5, blocking: bool = False) -> None:
    """Naps on the event loop thread that every async actor of this worker process shares."""
    started = time.monotonic()
    if blocking:
        time.sleep(seconds)  # the mistake, on purpose: it holds the loop, and every other async actor waits
    else:
        await asyncio.sleep(seconds)  # yields the loop to the others until the time is up
    NAPS.append((n, started, time.monotonic()))
    async_nap.logger.info("nap %d done (%s)", n, lab.describe_attempt())


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
async def async_whoami(pause: float = 0.05) -> dict:
    """Return the message CurrentMessage gives this coroutine, and the thread it runs on."""
    await asyncio.sleep(pause)  # let other coroutines run in between: each still sees its own message
    message = CurrentMessage.get_current_message()
    return {"message_id": message and message.message_id, "thread": threading.current_thread().name}


@dramatiq.actor(queue_name=QUEUE, max_retries=0, kill_switch="reports", slow_ms=200)
def switched_report(n: int) -> None:
    """A report behind the kill switch "reports", timed by Stopwatch. Fails for n < 1."""
    if n < 1:
        raise ValueError(f"no report number {n}")
    switched_report.logger.info("report %d (%s)", n, lab.describe_attempt())


@click.group(cls=lab.Group, epilog="Exit codes: 0 done, 2 bad arguments or URL, 3 Redis unreachable, 4 whoami: "
             "no answer in 10 s, 5 Redis refused the password, 130 Ctrl-C.")
def main() -> None:
    """Send e12's messages, or turn a kill switch on or off."""


@main.command()
@click.argument("count", type=click.IntRange(1, 100))
@click.option("--blocking", is_flag=True, help="time.sleep(0.5) instead of await asyncio.sleep(0.5).")
def nap(count: int, blocking: bool) -> None:
    """Send COUNT async naps of 0.5 s: with await they end together; blocking, one after another."""
    for n in range(1, count + 1):
        lab.confirm(async_nap.send(n, 0.5, blocking))


@main.command()
def whoami() -> None:
    """Ask an async actor which message CurrentMessage gives it (waits 10 s at most)."""
    lab.confirm(message := async_whoami.send())
    answer = lab.wait_for_result(message, time.monotonic() + 10)
    click.echo(f"the actor saw {answer['message_id']} (sent {message.message_id}) on thread {answer['thread']}")


@main.command()
@click.argument("n", type=click.IntRange(1, 1000))
def report(n: int) -> None:
    """Send report N: runs while the switch "reports" is on, skipped while it is off."""
    lab.confirm(switched_report.send(n))


@main.command()
@click.argument("state", type=click.Choice(["on", "off"]), metavar="on|off")  # not click.BOOL: it reads "" as off
@click.option("--name", type=click.Choice(["reports"]), default="reports", show_default=True)
def switch(state: str, name: str) -> None:
    """Turn a kill switch on (its actors' messages run) or off (they are skipped)."""
    key = lab.key(broker, SWITCH.format(name))
    broker.client.delete(key) if state == "on" else broker.client.set(key, "off")
    click.echo(f"switch {name!r} is {state}: key {key} {'deleted' if state == 'on' else 'set'}")

if __name__ == "__main__":
    sys.exit(main())
