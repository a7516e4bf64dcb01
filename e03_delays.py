"""Experiment 03: delays

Goal: schedule a message for later with send_with_options(delay=ms), see where it waits, and measure how late it runs.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e03_delays               # the worker; each run logs how late it started
    python e03_delays.py send 5000              # one message, due in 5000 ms (a delay is in milliseconds)
    python e03_delays.py at 14:30               # due at 14:30 today: the time is turned into a delay
    python e03_delays.py batch 50 --spread 2000 # 50 messages due over the next 2 s
    python e03_delays.py measure                # no worker needed: lateness for worker_timeout 1000 and 100
    dramatiq_worker_timeout=100 dramatiq e03_delays   # a worker that looks for due messages 10x as often
"""

import math
import statistics
import sys
import time
from datetime import datetime, timedelta
from datetime import time as TimeOfDay

import click
import dramatiq
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage
from rich.console import Console
from rich.table import Table

import lab

broker = lab.setup_broker()

QUEUE = "e03"
# RedisBroker.enqueue documents "Must be less than 7 days" (and a ValueError); 2.2.1 checks neither.
MAX_DELAY_MS = 7 * 24 * 3600 * 1000
# When each message started (epoch ms), by message id: the scenario and `measure` read it in-process.
started_ms: dict[str, float] = {}


@dramatiq.actor(queue_name=QUEUE)
def wake_up(label: str, due_ms: int) -> None:
    """Log how late this run started: now minus the time it was due (passed in: the
    delivered message no longer carries its eta, the worker deletes it when it re-enqueues)."""
    now = time.time() * 1000
    started_ms[CurrentMessage.get_current_message().message_id] = now
    wake_up.logger.info("%s: due %s, started %.0f ms late (%s)",
                        label, clock(due_ms), now - due_ms, lab.describe_attempt())


def clock(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def send_in(label: str, delay_ms: int) -> dramatiq.Message:
    """Send wake_up due ``delay_ms`` from now: the broker puts it in e03.DQ with options["eta"]."""
    return wake_up.send_with_options(args=(label, current_millis() + delay_ms), delay=delay_ms)


def send_batch(count: int, spread_ms: int) -> list[dramatiq.Message]:
    """``count`` messages due evenly over the next ``spread_ms``: the last one at ``spread_ms``."""
    return [send_in(f"{i + 1}/{count}", round(spread_ms * (i + 1) / count)) for i in range(count)]


def delay_until(at: TimeOfDay, now: datetime) -> int:
    """Milliseconds from ``now`` to ``at`` today (rounded up); ValueError if ``at`` has passed."""
    target = datetime.combine(now.date(), at)
    if target < now:
        raise ValueError(f"{at} has already passed today (it is {now:%H:%M:%S} now): "
                         "a delay counts forward from now, pick a later time")
    return math.ceil((target - now) / timedelta(milliseconds=1))


def lateness(sent: list[dramatiq.Message]) -> list[float]:
    """Start minus requested time (ms) of the ``sent`` messages that have run."""
    return [started_ms[m.message_id] - m.args[1] for m in sent if m.message_id in started_ms]


def summary(values: list[float]) -> dict[str, float]:
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
    return {"min": min(values), "median": statistics.median(values), "p95": p95, "max": max(values)}


def send_and_wait(count: int, spread_ms: int, worker_timeout: int) -> list[dramatiq.Message]:
    """Send a batch to the running worker and wait (bounded) until all have run."""
    sent = send_batch(count, spread_ms)
    lab.wait_until(lambda: all(m.message_id in started_ms for m in sent),
                   timeout=(spread_ms + 3 * worker_timeout) / 1000 + 5)
    return sent


def scenario(run: lab.Run) -> None:
    """`python -m lab run e03`: where a delayed message waits, who moves it, how late it runs."""
    client, dq, ready = broker.client, lab.keys.key(broker, f"{QUEUE}.DQ"), lab.keys.key(broker, QUEUE)
    parked = send_in("parked", 200)
    lists = {"e03.DQ": client.llen(dq), "e03": client.llen(ready)}
    run.lesson("send_with_options(delay=200) put the message in e03.DQ, not in e03",
               lists == {"e03.DQ": 1, "e03": 0} and parked.queue_name == "e03.DQ", f"list lengths {lists}")
    ran = run.wait_until(lambda: parked.message_id in started_ms, timeout=0.6)
    run.lesson("With no worker, nothing moves it: 600 ms later (3x its delay) it had not run",
               not ran and client.llen(dq) == 1, f"ran: {ran}; still in e03.DQ: {client.llen(dq) == 1}")

    run.start_worker(threads=1, worker_timeout=100)
    held = send_in("held", 800)
    others = [wake_up.send(f"now {i}", current_millis()) for i in range(5)]
    run.wait_until(lambda: held.message_id in started_ms, timeout=5)
    before = [m for m in others if started_ms.get(m.message_id, math.inf) < held.options["eta"]]
    run.lesson("One worker thread ran 5 other messages while it held a delayed one: holding is not sleeping",
               len(before) == len(others) and held.message_id in started_ms,
               f"{len(before)} of {len(others)} ran before the held message's eta")

    batches = {}
    for wt in (1000, 100):
        run.start_worker(threads=1, worker_timeout=wt)
        batches[wt] = send_and_wait(20, 1000, wt)
    run.settle(QUEUE, timeout=5)
    sent = [m for batch in batches.values() for m in batch]
    early = [m for m in sent if started_ms.get(m.message_id, -math.inf) < m.options["eta"]]
    run.lesson("delay is a minimum: no message started before its eta",
               not early and len(lateness(sent)) == len(sent),
               f"{len(lateness(sent))} of {len(sent)} ran, {len(early)} early")
    stats = {wt: summary(lateness(batch) or [math.inf]) for wt, batch in batches.items()}
    run.lesson("A shorter worker_timeout makes delayed messages less late (20 messages over 1 s each)",
               stats[100]["median"] < stats[1000]["median"],
               "; ".join(f"worker_timeout={wt}: " + ", ".join(f"{k} {v:.0f}" for k, v in s.items()) + " ms"
                         for wt, s in stats.items()))


class Delay(click.ParamType):
    """A delay in whole milliseconds, 0 to 7 days."""

    name = "MS"

    def convert(self, value, param, ctx) -> int:
        try:
            ms = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number of milliseconds", param, ctx)
        if ms < 0:
            self.fail(f"{ms} is negative: a delay counts forward from now", param, ctx)
        if ms > MAX_DELAY_MS:
            self.fail(f"{ms} ms is more than 7 days ({MAX_DELAY_MS} ms), the longest delay Dramatiq "
                      "documents; a worker would hold the message in memory all that time", param, ctx)
        return ms


class ClockTime(click.ParamType):
    """A time of day, HH:MM or HH:MM:SS."""

    name = "HH:MM[:SS]"

    def convert(self, value, param, ctx) -> TimeOfDay:
        for layout in ("%H:%M:%S", "%H:%M"):
            try:
                return datetime.strptime(value, layout).time()
            except ValueError:
                pass
        self.fail(f"{value!r} is not a time of day like 14:30 or 14:30:15", param, ctx)


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP + " measure: 1 if messages did not all run.")
def main() -> None:
    """Send e03's delayed messages (a delay is in milliseconds), or measure how late they run."""


@main.command(short_help="One message due in DELAY_MS ms (up to 7 days).",
              context_settings={"ignore_unknown_options": True})  # so `send -5` says "negative"
@click.argument("delay_ms", type=Delay())
def send(delay_ms: int) -> None:
    """One message due in DELAY_MS milliseconds (0 to 604800000, i.e. 7 days)."""
    message = send_in(f"sent with delay={delay_ms}", delay_ms)
    lab.confirm(message)
    click.echo(f"due at {clock(message.options['eta'])}; it waits in {QUEUE}.DQ until a worker moves it")


@main.command()
@click.argument("when", metavar="HH:MM[:SS]", type=ClockTime())
def at(when: TimeOfDay) -> None:
    """One message due at a time of day, today. Dramatiq has no "at": it becomes a delay."""
    try:
        delay_ms = delay_until(when, datetime.now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'HH:MM[:SS]'") from None
    message = send_in(f"at {when}", delay_ms)
    lab.confirm(message)
    click.echo(f"delay={delay_ms} ms, due at {clock(message.options['eta'])}")


@main.command()
@click.argument("count", type=click.IntRange(1, 10_000))
@click.option("--spread", type=Delay(), default=2000, show_default=True, help="Due evenly over this many ms.")
def batch(count: int, spread: int) -> None:
    """COUNT messages due over the next --spread ms. The worker logs how late each one runs."""
    sent = send_batch(count, spread)
    click.echo(f"sent {count} messages to {QUEUE}.DQ, due {clock(sent[0].options['eta'])} "
               f"to {clock(sent[-1].options['eta'])}")


@main.command(short_help="How late delayed messages run, per worker_timeout (in-process worker).")
@click.option("--count", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--spread", type=Delay(), default=2000, show_default=True, help="Due evenly over this many ms.")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--worker-timeout", "timeouts", type=click.IntRange(min=1), multiple=True,
              default=(1000, 100), show_default=True, help="Repeat to compare; ms.")
def measure(count: int, spread: int, threads: int, timeouts: tuple[int, ...]) -> None:
    """Lateness of a batch for each worker_timeout, with a worker in this process.

    Lateness is start minus requested time. Needs no other worker; stop yours first.
    """
    broker.client.ping()  # an unreachable Redis: one line and exit 3, from lab.Group
    out = Console(highlight=False)
    table = Table("worker_timeout", "ran", "min", "median", "p95", "max", "early", box=None,
                  title=f"lateness in ms: {count} messages over {spread} ms, {threads} thread(s), "
                        f"{lab.mask_url(lab.redis_url())}")
    for wt in timeouts:
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=wt)
        worker.start()
        with out.status(f"worker_timeout={wt} ms: {count} messages due over {spread} ms..."):
            try:
                sent = send_and_wait(count, spread, wt)
            finally:
                lab.stop_worker(worker)
        late = lateness(sent)
        early = sum(started_ms[m.message_id] < m.options["eta"] for m in sent if m.message_id in started_ms)
        stats = summary(late) if late else {}
        table.add_row(f"{wt} ms", f"{len(late)}/{count}", *(f"{stats[k]:.0f}" if stats else "-"
                      for k in ("min", "median", "p95", "max")), str(early))
        if len(late) < count:
            out.print(table)
            raise click.ClickException(f"only {len(late)} of {count} ran here: is another worker consuming "
                                       f"{QUEUE} on this Redis? Stop it, or use {lab.URL_ENV}={lab.MEMORY_URL}")
    out.print(table)


if __name__ == "__main__":
    sys.exit(main())
