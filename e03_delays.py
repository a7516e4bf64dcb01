"""Experiment 03: delays

Goal: delay a message with send_with_options(delay=ms), see where it waits and measure how late it runs.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e03_delays               # the worker; each run logs how late it started
    python e03_delays.py send 5000              # one message, due in 5000 ms (a delay is in milliseconds)
    python e03_delays.py at 14:30               # due at 14:30 today: the time is turned into a delay
    python e03_delays.py batch 50 --spread 2000 # 50 messages due over the next 2 s
    python e03_delays.py measure                # lateness at worker_timeout 1000 and 100; stop your worker
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
    """Log how late this run started: now minus ``due_ms``.

    The due time comes as an argument because the message a worker delivers no longer
    carries its eta: the worker deletes ``options["eta"]`` when it moves it out of e03.DQ.
    """
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


def early(sent: list[dramatiq.Message]) -> list[dramatiq.Message]:
    """The ``sent`` messages that started before their eta (the broker's, not ours)."""
    return [m for m in sent if started_ms.get(m.message_id, math.inf) < m.options["eta"]]


def summary(values: list[float]) -> dict[str, float]:
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
    return {"min": min(values), "median": statistics.median(values), "p95": p95, "max": max(values)}


def wait_for(sent: list[dramatiq.Message], worker_timeout: int) -> bool:
    """Wait until all of ``sent`` have run: bounded by the last due time + 3 worker_timeouts + 5 s."""
    timeout = (max(m.args[1] for m in sent) - current_millis() + 3 * worker_timeout) / 1000 + 5
    return lab.wait_until(lambda: all(m.message_id in started_ms for m in sent), timeout=timeout)


def scenario(run: lab.Run) -> None:
    """`python -m lab run e03`: where a delayed message waits, who moves it, how late it runs."""
    client, dq, ready = broker.client, lab.keys.key(broker, f"{QUEUE}.DQ"), lab.keys.key(broker, QUEUE)
    parked = send_in("parked", 100)
    lists = {"e03.DQ": client.llen(dq), "e03": client.llen(ready)}
    run.lesson("send_with_options(delay=100) put the message in e03.DQ, not in e03",
               lists == {"e03.DQ": 1, "e03": 0} and parked.queue_name == "e03.DQ", f"list lengths {lists}")
    moved = run.wait_until(lambda: parked.message_id in started_ms, timeout=0.4)
    run.lesson("With no worker, nothing moves it: 400 ms later (4x its delay) it had not run",
               not moved and client.llen(dq) == 1, f"ran: {moved}; still in e03.DQ: {client.llen(dq) == 1}")

    batches, fetched_ms, overtook = {}, [], 0
    for wt in (1000, 100):
        run.start_worker(threads=1, worker_timeout=wt)  # one thread: were it blocked, nothing else would run
        batch = batches[wt] = send_batch(20, 1000)
        sent_at = current_millis()
        now = [wake_up.send(f"now {i}", current_millis()) for i in range(5)]
        if run.wait_until(lambda: client.llen(dq) == 0, timeout=1):
            fetched_ms.append(current_millis() - sent_at)
        wait_for(batch + now, wt)
        overtook += sum(started_ms.get(m.message_id, math.inf) < batch[-1].options["eta"] for m in now)
    run.lesson("A worker takes delayed messages into memory long before they are due",
               len(fetched_ms) == 2 and max(fetched_ms) < 1000,
               f"e03.DQ was empty {fetched_ms} ms after sending 20 messages due over the next 1000 ms")
    run.lesson("Holding them does not block the worker: its one thread ran the 10 undelayed messages "
               "sent after each batch before the batch's last was due", overtook == 10, f"{overtook} of 10")
    sent = [m for batch in batches.values() for m in batch]
    ran, too_soon = lateness(sent), early(sent)
    run.lesson("delay is a minimum: no message started before its eta",
               len(ran) == len(sent) and not too_soon, f"{len(ran)}/{len(sent)} ran, {len(too_soon)} early")
    stats = {wt: summary(lateness(batch) or [math.inf]) for wt, batch in batches.items()}
    run.lesson("A shorter worker_timeout makes delayed messages less late (20 messages over 1 s each)",
               stats[100]["median"] < stats[1000]["median"],
               "; ".join(f"worker_timeout={wt}: {', '.join(f'{k} {v:.0f}' for k, v in st.items())} ms"
                         for wt, st in stats.items()))


class Delay(click.IntRange):
    """Whole milliseconds from now, 0 to 7 days: the longest delay Dramatiq documents."""

    name = "integer"

    def __init__(self) -> None:
        super().__init__(0, MAX_DELAY_MS)

    def convert(self, value, param, ctx) -> int:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            self.fail(f"{exc.message} A delay is 0 ms to 7 days ({MAX_DELAY_MS} ms), counted from now; "
                      "7 days is the longest Dramatiq documents.", param, ctx)


spread_option = click.option("--spread", type=Delay(), default=2000, show_default=True, metavar="MS",
                             help="Due evenly over this many ms.")


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP + " measure: 1 if messages did not all run.")
def main() -> None:
    """Send e03's delayed messages (a delay is in milliseconds), or measure how late they run."""


@main.command(short_help="One message due in DELAY_MS ms (up to 7 days).",
              context_settings={"ignore_unknown_options": True})  # so `send -5` is a value, not an option
@click.argument("delay_ms", metavar="DELAY_MS", type=Delay())
def send(delay_ms: int) -> None:
    """One message due in DELAY_MS milliseconds (0 to 604800000, i.e. 7 days)."""
    message = send_in(f"sent with delay={delay_ms}", delay_ms)
    lab.confirm(message)
    click.echo(f"due at {clock(message.options['eta'])}; it waits in {QUEUE}.DQ until a worker moves it")


@main.command()
@click.argument("when", metavar="HH:MM[:SS]", type=click.DateTime(["%H:%M", "%H:%M:%S"]))
def at(when: datetime) -> None:
    """One message due at a time of day, today. Dramatiq has no "at": it becomes a delay."""
    try:
        delay_ms = delay_until(when.time(), datetime.now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'HH:MM[:SS]'") from None
    message = send_in(f"at {when:%H:%M:%S}", delay_ms)
    lab.confirm(message)
    click.echo(f"delay={delay_ms} ms, due at {clock(message.options['eta'])}")


@main.command()
@click.argument("count", type=click.IntRange(1, 10_000))
@spread_option
def batch(count: int, spread: int) -> None:
    """COUNT messages due over the next --spread ms. The worker logs how late each one runs."""
    sent = send_batch(count, spread)
    click.echo(f"sent {count} messages to {QUEUE}.DQ, due {clock(sent[0].options['eta'])} "
               f"to {clock(sent[-1].options['eta'])}")


@main.command(short_help="How late delayed messages run, per worker_timeout (in-process worker).")
@click.option("--count", type=click.IntRange(1, 1000), default=50, show_default=True)
@spread_option
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
                sent = send_batch(count, spread)
                wait_for(sent, wt)
            finally:
                lab.stop_worker(worker)
        late = lateness(sent)
        stats = [f"{v:.0f}" for v in summary(late).values()] if late else ["-"] * 4
        table.add_row(f"{wt} ms", f"{len(late)}/{count}", *stats, str(len(early(sent))))
        if len(late) < count:
            out.print(table)
            raise click.ClickException(f"only {len(late)} of {count} ran here: does another worker consume "
                                       f"{QUEUE} on this Redis? Stop it, or use {lab.URL_ENV}=memory://")
    out.print(table)


if __name__ == "__main__":
    sys.exit(main())
