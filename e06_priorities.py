"""Experiment 06: priorities, queues and prefetch

Goal: see where an actor's priority acts (only among prefetched messages), what works instead, and how to scale.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --processes 1 --threads 1 e06_priorities --queues e06   # the notes' worker: 1 thread, prefetch 2
    python e06_priorities.py flood 100                  # 100 sleeps of 100 ms, priority=100 (low)
    python e06_priorities.py greet Ada                  # priority=0 (high), and still it waits about 10 s
    dramatiq e06_priorities --queues e06-urgent         # another terminal: a worker for the urgent queue only
    python e06_priorities.py greet Ada --urgent         # on e06-urgent: it runs at once
    python e06_priorities.py measure                    # where the greeting runs, per prefetch; stop your worker
    dramatiq_queue_prefetch=200 dramatiq -p 1 -t 1 e06_priorities   # now priority acts on 200 messages
    dramatiq -p 2 -t 4 e06_priorities -Q e06 e06-cpu    # 2 processes x 4 threads (-Q after the module!); then
    python e06_priorities.py flood 8 --ms 200 --wait    # 8 sleeps (threads help), or
    python e06_priorities.py crunch 8 --wait            # 8 CPU-bound crunches (processes help)
"""

import os
import sys
import time

import lab

import click
import dramatiq
from dramatiq.middleware import CurrentMessage
from rich.console import Console
from rich.table import Table

broker = lab.setup_broker()

QUEUE, URGENT, CPU = "e06", "e06-urgent", "e06-cpu"
LOW, HIGH = 100, 0  # a LOWER number is a HIGHER priority; an actor's default is 0


@dramatiq.actor(queue_name=QUEUE, priority=LOW)
def sleepy(i: int, ms: int = 100) -> None:
    """Bulk work: waits ``ms`` as a call to a slow service would (the GIL is free meanwhile)."""
    sleepy.logger.info("sleep %d: %d ms (%s)", i, ms, lab.describe_attempt())
    time.sleep(ms / 1000)


@dramatiq.actor(queue_name=QUEUE, priority=HIGH, store_results=True)
def greet(name: str) -> int:
    """Urgent work. On e06 its priority only beats the messages a worker already holds."""
    message = CurrentMessage.get_current_message()
    waited = round(time.time() * 1000 - message.message_timestamp)
    greet.logger.info("%s %s: waited %d ms (%s)", message.actor_name, name, waited, lab.describe_attempt())
    return waited


# The same function as a second actor, on a queue of its own that a worker of its own serves.
greet_urgent = dramatiq.actor(greet.fn, actor_name="greet_urgent", queue_name=URGENT, store_results=True)


@dramatiq.actor(queue_name=CPU, store_results=True)
def crunch(i: int, n: int = 3_000_000) -> dict:
    """CPU-bound: n rounds of Python arithmetic. It holds the GIL: threads of one process take turns."""
    started, cpu = time.time(), time.thread_time()
    total = sum(k * k % 7 for k in range(n))
    return {"pid": os.getpid(), "started": started, "ended": time.time(), "cpu_s": time.thread_time() - cpu, "n": total}


def notes_experiment(sleeps: int, ms: int, threads: int, prefetch: int | None) -> tuple[list[lab.Attempt], float]:
    """The notes' setup here: sleeps, a greeting, then a worker on e06 (prefetch None: Dramatiq's default).
    The attempts in start order until the greeting ran, and its wait in ms. Empties e06 before and after."""
    recorder = lab.Recorder.install(broker)
    broker.flush(QUEUE)
    sent = [*(sleepy.send(i, ms) for i in range(sleeps)), greet.send(f"after {sleeps} sleeps")]
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=100)
    worker.queue_prefetch = prefetch or worker.queue_prefetch  # what dramatiq_queue_prefetch sets
    worker.start()
    ids = {m.message_id for m in sent}
    ran = lambda: [a for a in recorder.attempts_of() if a.message_id in ids]  # noqa: E731
    try:
        if not lab.wait_until(lambda: any(a.actor == "greet" for a in ran()), timeout=sleeps * ms / threads / 1000 + 5):
            raise lab.Failure(f"the greeting did not run here: does another worker consume {QUEUE} on this Redis? "
                              f"Stop it, or use {lab.URL_ENV}=memory://", lab.EXIT_FAILED)
    finally:
        lab.stop_worker(worker, 2000)
        broker.flush(QUEUE)
    return ran(), next(a for a in ran() if a.actor == "greet").started_ms - sent[-1].message_timestamp


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP + " measure: 1 if the greeting did not run here.")
def main() -> None:
    """Flood e06 with low-priority sleeps, greet with a high priority, measure where the greeting runs."""


def send_batch(actor: dramatiq.Actor, count: int, wait: bool, *args: int) -> None:
    """``count`` messages to ``actor``, ``(i, *args)``; with ``wait``, wait until a worker has run them all."""
    start = time.monotonic()
    for i in range(count):
        actor.send(i, *args)
    click.echo(f"sent {count} x {actor.actor_name}  queue={actor.queue_name}  priority={actor.priority}")
    if wait:
        with lab.waiting(f"waiting for a worker on {actor.queue_name} to run all {count}"):
            broker.join(actor.queue_name, interval=10, timeout=3_600_000)
        click.echo(f"all {count} done {time.monotonic() - start:.2f} s after the first was sent")


wait_option = click.option("--wait", is_flag=True, help="Then wait until a worker has run them all, and say when.")


@main.command()
@click.argument("count", type=click.IntRange(1, 10_000))
@click.option("--ms", type=click.IntRange(0, 60_000), default=100, show_default=True, help="How long each sleeps.")
@wait_option
def flood(count: int, ms: int, wait: bool) -> None:
    """COUNT sleeps on e06 with priority 100 (low: a lower number goes first): the bulk work."""
    send_batch(sleepy, count, wait, ms)


@main.command("crunch")
@click.argument("count", type=click.IntRange(1, 10_000))
@wait_option
def crunch_command(count: int, wait: bool) -> None:
    """COUNT crunches on e06-cpu: CPU-bound, about 0.2 s of CPU each."""
    send_batch(crunch, count, wait)


@main.command("greet")
@click.argument("name")
@click.option("--urgent", is_flag=True, help=f"Send greet_urgent to {URGENT}, not greet to {QUEUE}.")
def greet_command(name: str, urgent: bool) -> None:
    """Greet NAME (1 to 100 characters) with priority 0 (high), on e06 or, with --urgent, on e06-urgent."""
    if not 1 <= len(name) <= 100:
        raise click.BadParameter(f"{len(name)} characters; a name has 1 to 100", param_hint="'NAME'")
    lab.confirm((greet_urgent if urgent else greet).send(name))


@main.command(short_help="Where the greeting runs after a flood, per threads and prefetch (in-process workers).")
@click.option("--sleeps", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--ms", type=click.IntRange(1, 1000), default=20, show_default=True, help="How long each sleeps.")
def measure(sleeps: int, ms: int) -> None:
    """The notes' experiment: SLEEPS sleeps, a greeting, then a worker (in this process, on e06 only), for
    several threads and prefetch settings. Empties e06 first: stop your e06 worker."""
    table = Table("threads", "prefetch", "greeting ran", "it waited", box=None,
                  title=f"{sleeps} sleeps of {ms} ms (priority {LOW}), then a greeting (priority {HIGH})")
    for threads, prefetch in ((1, None), (1, 10), (1, 50), (1, 200), (8, None), (8, 200)):
        ran, waited_ms = notes_experiment(sleeps, ms, threads, prefetch)
        position = [a.actor for a in ran].index("greet") + 1
        table.add_row(str(threads), str(prefetch or f"{2 * threads} (default)"), f"{position} of {sleeps + 1}",
                      f"{waited_ms:.0f} ms")
    Console(highlight=False).print(table)


if __name__ == "__main__":
    sys.exit(main())
