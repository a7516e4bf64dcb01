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
import sys
from datetime import datetime, timedelta
from datetime import time as TimeOfDay

import lab
from lab.stats import summary

import click
import dramatiq
from dramatiq.common import current_millis
from rich.console import Console
from rich.table import Table

broker = lab.setup_broker()

QUEUE = "e03"


@dramatiq.actor(queue_name=QUEUE)
def wake_up(label: str, due_ms: int) -> None:
    """Log how late this run started: now minus ``due_ms``.

    The due time comes as an argument because the message a worker delivers no longer
    carries its eta: the worker deletes ``options["eta"]`` when it moves it out of e03.DQ.
    """
    wake_up.logger.info("%s: due %s, started %.0f ms late (%s)",
                        label, clock(due_ms), current_millis() - due_ms, lab.describe_attempt())


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


def lateness_ms(recorder: lab.Recorder, sent: list[dramatiq.Message]) -> list[float]:
    """Start minus due time, in ms, of each of ``sent`` that has started (first attempts)."""
    ids = {m.message_id: m.args[1] for m in sent}
    return [a.started_ms - ids[a.message_id] for a in recorder.attempts_of("wake_up") if a.message_id in ids]


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP + " measure: 1 if messages did not all run.")
def main() -> None:
    """Send e03's delayed messages (a delay is in milliseconds), or measure how late they run."""


spread_option = click.option("--spread", type=lab.Milliseconds(), default=2000, show_default=True, metavar="MS",
                             help="Due evenly over this many ms.")


@main.command(short_help="One message due in DELAY_MS ms (up to 7 days).")
@click.argument("delay_ms", metavar="DELAY_MS", type=lab.Milliseconds())
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
@click.option("--spread", type=lab.Milliseconds(60_000), default=2000, show_default=True, metavar="MS")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--worker-timeout", "timeouts", type=click.IntRange(10, 10_000), multiple=True,
              default=(1000, 100), show_default=True, help="Repeat to compare; ms.")
def measure(count: int, spread: int, threads: int, timeouts: tuple[int, ...]) -> None:
    """Lateness (start minus due time) of a batch, for each worker_timeout, with a worker in this
    process. Needs no other worker on this Redis: stop yours first."""
    broker.client.ping()  # no Redis: one line and exit 3 now, not a worker logging errors
    recorder, out = lab.Recorder.install(broker), Console(highlight=False)
    table = Table("worker_timeout", "ran", "min", "median", "p95", "max", box=None,
                  title=f"lateness in ms: {count} messages over {spread} ms, {threads} thread(s)")
    for wt in timeouts:
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=wt)
        worker.start()
        with out.status(f"worker_timeout={wt} ms: {count} messages due over {spread} ms..."):
            try:
                sent = send_batch(count, spread)
                lab.wait_until(lambda: len(lateness_ms(recorder, sent)) == count,  # noqa: B023
                               timeout=spread / 1000 + 3 * wt / 1000 + 5)
            finally:
                lab.stop_worker(worker)
        late = lateness_ms(recorder, sent)
        table.add_row(f"{wt} ms", f"{len(late)}/{count}", *(f"{v:.0f}" for v in summary(late or [math.nan]).values()))
        if len(late) < count:
            out.print(table)
            raise lab.Failure(f"only {len(late)} of {count} ran here: does another worker consume "
                              f"{QUEUE} on this Redis? Stop it, or use {lab.URL_ENV}=memory://", lab.EXIT_FAILED)
    out.print(table)


if __name__ == "__main__":
    sys.exit(main())
