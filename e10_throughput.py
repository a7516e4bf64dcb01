"""Experiment 10: throughput and latency

Goal: measure how fast Dramatiq moves messages on your machine, next to the limits it is up against, and why.

Run it (against redis-server: `redis-server --port 6390 --save ''` and DRAMATIQ_REDIS_URL=redis://127.0.0.1:6390/0):

    python e10_throughput.py            # the whole report: about 11 minutes with the peers (estimated)
    python e10_throughput.py --quick    # about a minute (three with the peers, estimated): two setups, smaller batches
    python e10_throughput.py --json     # the same report for scripts
    python e10_throughput.py --rst      # and the table README.rst shows, ready to paste
    dramatiq e10_throughput             # its actors, for your own measurements

It starts its own `dramatiq` workers, in a namespace of its own, and deletes its keys when done.
With RQ, Huey and Celery installed (pip install -r benchmarks/requirements-peers.txt) it runs the
same jobs with them too, on the same Redis, each at its defaults and at 2 processes x 8 threads.
This file keeps the actors; benchmarks/ measures, and
never imports this file (the workers import it by name).
On memory:// (or `python -m lab serve`) it runs on the embedded fakeredis server: not Redis figures.
"""

import logging
import sys
import threading
import time
from collections import Counter, defaultdict

import lab

import click
import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware

broker = lab.setup_broker()

QUEUE = "e10"
# One message to each of these, on a worker idle for a while: three consumers, three independent samples.
IDLE_QUEUES = ("e10-idle0", "e10-idle1", "e10-idle2")
for _queue in IDLE_QUEUES:
    broker.declare_queue(_queue)


class Tally(Middleware):
    """What the actors ran in this process, kept in memory and written to Redis when the worker stops.

    Nothing goes to Redis while messages run, so a measured actor costs only Dramatiq's own round
    trips. Per batch: how many messages ran here, and the latencies (ms) that were noted.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran: Counter[str] = Counter()
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)

    def start(self, batch: str, latency_ms: float | None = None) -> None:
        with self.lock:
            self.ran[batch] += 1
            if latency_ms is not None:
                self.latencies[batch].append(latency_ms)

    def after_worker_shutdown(self, broker, worker) -> None:
        with self.lock:
            ran, latencies = dict(self.ran), dict(self.latencies)
            self.ran.clear(), self.latencies.clear()
        if not ran:
            return
        with broker.client.pipeline(transaction=False) as pipe:
            for batch, count in ran.items():
                pipe.hincrby(lab.key(broker, "__e10__.ran"), batch, count)
            for batch, values in latencies.items():
                pipe.rpush(lab.key(broker, f"__e10__.latency.{batch}"), *values)
            pipe.execute()
        logging.getLogger("e10").info("tally written: %d messages ran here, in %d batches: %s",
                                      sum(ran.values()), len(ran), ran)


tally = Tally()
broker.add_middleware(tally)


@dramatiq.actor(queue_name=QUEUE)
def does_nothing(batch: str) -> None:
    """A no-op: what a drain of these measures is Dramatiq's own cost per message."""
    tally.start(batch)


@dramatiq.actor(queue_name=QUEUE)
def waits_on_io(batch: str, ms: int = 10) -> None:
    """Sleeps, as a call to a slow API would: the thread waits without the GIL, so threads overlap."""
    tally.start(batch)
    time.sleep(ms / 1000)


@dramatiq.actor(queue_name=QUEUE)
def burns_cpu(batch: str, loops: int = 20_000) -> None:
    """Pure-Python arithmetic (about 1-2 ms): it holds the GIL, so only more processes add speed."""
    tally.start(batch)
    total = 0
    for i in range(loops):
        total += i * i


@dramatiq.actor(queue_name=QUEUE)
def notes_its_latency(batch: str, ms: int = 0, due_us: int | None = None) -> None:
    """Notes how long after it was due it started, then sleeps. ``due_us``: when the sender meant to send it
    (microseconds, the sender's clock); without it, message_timestamp (when it was built, whole ms)."""
    if due_us is None:
        due_us = CurrentMessage.get_current_message().message_timestamp * 1000
    tally.start(batch, latency_ms=(time.time() * 1_000_000 - due_us) / 1000)
    time.sleep(ms / 1000)


@click.command(cls=lab.Command, epilog=lab.EXIT_CODES_HELP + " 1: a count did not add up (the report says which).")
@click.option("--quick", is_flag=True, help="About a minute: two setups, smaller batches.")
@click.option("--runs", type=click.IntRange(5, 20), default=5, show_default=True,
              help="Repetitions of every figure, alternating limit and drain (median, range, interval).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead (progress goes to stderr).")
@click.option("--rst", "as_rst", is_flag=True, help="Print README.rst's table of this run instead (reStructuredText).")
def main(quick: bool, runs: int, as_json: bool, as_rst: bool) -> None:
    """Measure throughput and latency on the Redis at $DRAMATIQ_REDIS_URL: redis-benchmark and Dramatiq's
    protocol limit at each setup's concurrency, drains over processes x threads, enqueue, end to end,
    latency from due time to start, pick-up after idle, and RQ, Huey and Celery if installed. It starts
    its own `dramatiq` workers; stop yours first, on a small machine they compete."""
    if as_json and as_rst:
        raise click.UsageError("--json and --rst each print the whole report: choose one.")
    from benchmarks import e10_bench, e10_report  # the measuring code; this file keeps the actors

    report = e10_bench.measure_from_cli(sys.modules[__name__], lab.redis_url(), quick=quick, runs=runs)
    e10_report.show(report, as_json=as_json, as_rst=as_rst)
    if not report["consistency"]["ok"]:
        raise lab.Failure(f"counts did not add up: {'; '.join(report['consistency']['problems'])}", lab.EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
