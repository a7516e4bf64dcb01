"""Experiment 09: rate limits and mutexes

Goal: limit how many messages work at once, across threads and processes, without dropping work by accident.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --processes 2 --threads 2 e09_rate_limits   # the worker: 4 threads in 2 processes
    python e09_rate_limits.py send free 8               # no limit: up to 4 at once, one per thread
    python e09_rate_limits.py send patient 8            # a mutex, retried later when busy: 1 at a time
    python e09_rate_limits.py send patient 8 --limit 3  # a semaphore: 3 at a time
    python e09_rate_limits.py send mutexed 8            # the default: busy raises, retries run out: work dropped
    python e09_rate_limits.py send skipping 8           # raise_on_failure=False: busy skips the work
    python e09_rate_limits.py send locked 8             # a threading.Lock: 1 at a time per process only
    python e09_rate_limits.py report --reset            # what did the work, how many at once, in how many processes
    python e09_rate_limits.py burst                     # what a bucket and windows let through at a second's edge
"""

import os
import random
import sys
import threading
import time

import lab

import click
import dramatiq
from dramatiq.rate_limits import BucketRateLimiter, ConcurrentRateLimiter, WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend  # the rate limiters' backend, NOT dramatiq.results.backends'

broker = lab.setup_broker()

QUEUE = "e09"
KEY = f"{broker.namespace}:e09"  # every key of this experiment starts with it
backend = RedisBackend(client=broker.client)  # the broker's own client: the same Redis, even on memory://
MUTEX = ConcurrentRateLimiter(backend, f"{KEY}:limit1", limit=1)  # a distributed mutex: limit=1
LOCK = threading.Lock()  # one per process: two processes have two locks
RETRIES = dict(max_retries=3, min_backoff=100, max_backoff=1000)


def work(actor: dramatiq.Actor, kind: str, n: int, hold_ms: int) -> None:
    """Work for ``hold_ms``, counting in Redis how many ``kind`` messages work right now, across every process."""
    running = broker.client.incr(f"{KEY}:{kind}:running")
    broker.client.rpush(f"{KEY}:{kind}:seen", f"{running} {os.getpid()}")
    try:
        actor.logger.info("%s(%d): %d working now (%s)", kind, n, running, lab.describe_attempt())
        time.sleep(hold_ms / 1000)
    finally:
        broker.client.decr(f"{KEY}:{kind}:running")


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def free(n: int, hold_ms: int = 300) -> None:
    """No limit: as many at once as there are worker threads."""
    work(free, "free", n, hold_ms)


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def mutexed(n: int, hold_ms: int = 300) -> None:
    """The default, raise_on_failure=True: a busy mutex raises RateLimitExceeded; its retries can run out."""
    with MUTEX.acquire():
        work(mutexed, "mutexed", n, hold_ms)


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def skipping(n: int, hold_ms: int = 300) -> None:
    """raise_on_failure=False: a busy mutex returns False; this skips the work, and the message succeeds."""
    with MUTEX.acquire(raise_on_failure=False) as acquired:
        if acquired:  # if not, the work is skipped, silently, and the message counts as done
            work(skipping, "skipping", n, hold_ms)


@dramatiq.actor(queue_name=QUEUE, max_retries=100)
def patient(n: int, hold_ms: int = 300, limit: int = 1) -> None:
    """Busy? Retry(delay=...) in about one hold, up to 100 times: no work lost. limit=1 a mutex, N a semaphore."""
    broker.client.sadd(f"{KEY}:patient{limit}:tried", os.getpid())  # the processes that contended for it
    with ConcurrentRateLimiter(backend, f"{KEY}:limit{limit}", limit=limit).acquire(raise_on_failure=False) as ok:
        if not ok:
            raise dramatiq.Retry(delay=random.randint(hold_ms // 2, hold_ms * 3 // 2))  # jittered
        work(patient, f"patient{limit}", n, hold_ms)


@dramatiq.actor(queue_name=QUEUE, **RETRIES)
def locked(n: int, hold_ms: int = 300) -> None:
    """A threading.Lock: one at a time in this process; another process has a lock of its own."""
    with LOCK:
        work(locked, "locked", n, hold_ms)


def tally(kind: str) -> dict[str, int]:
    """How many did the work, the most at once, how many started beside another, in how many processes (and, for
    patient, how many processes tried: one may win every turn)."""
    seen = [(int(running), pid) for running, pid in map(bytes.split, broker.client.lrange(f"{KEY}:{kind}:seen", 0, -1))]
    counts = {"ran": len(seen), "peak": max((r for r, _ in seen), default=0), "overlaps": sum(r > 1 for r, _ in seen),
              "processes": len({pid for _, pid in seen})}
    return counts | ({"tried_in": broker.client.scard(f"{KEY}:{kind}:tried")} if kind.startswith("patient") else {})


def burst(limit: int = 5, ms: int = 200) -> dict[str, int]:
    """What a 1 s bucket and 1 and 2 s windows of ``limit`` let through of acquires tried for ``ms`` from x.9 s
    (again at the next x.9 s, 3 tries at most, if fewer than ``limit`` tries fell on either side of the edge)."""
    for _ in range(3):
        key = f"{KEY}:burst:{time.time()}"
        limiters = {"bucket=1000": BucketRateLimiter(backend, f"{key}:b", limit=limit, bucket=1000),
                    "window=1": WindowRateLimiter(backend, f"{key}:w1", limit=limit, window=1),
                    "window=2": WindowRateLimiter(backend, f"{key}:w2", limit=limit, window=2)}
        # each limiter's tries before the second's edge, and after (read at each try: under load one round
        # of three can straddle the edge)
        acquired, tries = dict.fromkeys(limiters, 0), {name: [0, 0] for name in limiters}
        time.sleep((0.9 - time.time() % 1) % 1)
        second, ends = int(time.time()), time.monotonic() + ms / 1000
        while time.monotonic() < ends:
            for name, limiter in limiters.items():
                edge = int(time.time()) > second
                with limiter.acquire(raise_on_failure=False) as ok:
                    acquired[name] += ok
                tries[name][edge] += 1
        if min(min(sides) for sides in tries.values()) >= limit:
            break
    return acquired


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send e09's messages, report how many worked at once, or measure a burst."""


@main.command()
@click.argument("kind", type=click.Choice(["free", "mutexed", "skipping", "patient", "locked"]), metavar="KIND")
@click.argument("count", type=click.IntRange(1, 1000))
@click.option("--hold", type=click.IntRange(1, 60_000), default=300, show_default=True, metavar="MS")
@click.option("--limit", type=click.IntRange(1, 100), default=1, show_default=True, help="For patient.")
def send(kind: str, count: int, hold: int, limit: int) -> None:
    """Send COUNT messages of KIND, each working --hold ms."""
    actor = {a.actor_name: a for a in (free, mutexed, skipping, patient, locked)}[kind]
    broker.client.ping()  # the counts and limiters live in Redis: none (beside RabbitMQ) fails here, not in a worker
    for n in range(count):
        actor.send(n, hold, limit) if kind == "patient" else actor.send(n, hold)
    click.echo(f"sent {count} x {kind}  queue={QUEUE}")


@main.command()
@click.option("--reset", is_flag=True, help="Then forget the counts.")
def report(reset: bool) -> None:
    """For each kind: ran (did the work), peak (most at once), overlaps, processes."""
    for key in sorted(broker.client.scan_iter(f"{KEY}:*:seen")):
        kind = key.decode().split(":")[-2]
        click.echo(f"{kind:>9}: " + ", ".join(f"{name} {value}" for name, value in tally(kind).items()))
    for key in broker.client.scan_iter(f"{KEY}:*") if reset else ():
        broker.client.delete(key)


@main.command("burst")
def burst_command() -> None:
    """Try to acquire from 100 ms before a whole second to 100 ms after: what a limit of 5 lets through."""
    for name, acquired in burst().items():
        click.echo(f"{name:>11}: {acquired} acquired")


if __name__ == "__main__":
    sys.exit(main())
