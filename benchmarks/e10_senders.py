"""Experiment 10's sender processes: enqueue rates, paced sends for latency, and the end-to-end burst.

A sender process boots once, measures enqueue on a go signal (``send()`` into a namespace no worker
reads), then takes jobs from a list: a paced run of ``notes_its_latency`` or a burst of
``does_nothing``, both into the namespace the measured workers read. It sends through
``Actor.send()`` of actors declared here under the experiment's names (it never runs them), so
this package never imports ``e10_throughput``.

``python -m benchmarks.e10_senders sender COUNT ROUNDS SEND_NS WORK_NS`` is one sender process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import lab
from lab.processes import lab_env

import dramatiq
import redis

from benchmarks import e10_pool
from benchmarks.e10_common import QUEUE, Ledger, Plan, figure


def pace(send: Callable[[int], object], rate: float, seconds: float) -> tuple[int, float]:
    """Call ``send(intended_us)`` evenly, ``rate`` times a second for ``seconds``; (how many, the rate achieved).

    ``intended_us`` is when this call was due, in microseconds of the wall clock: latency counted from
    it includes a sender's own stall, which a latency counted from the actual send would hide.
    """
    count = max(1, round(rate * seconds))
    wall_us, started = int(time.time() * 1_000_000), time.perf_counter()
    for i in range(count):
        while (ahead := started + i / rate - time.perf_counter()) > 0:
            time.sleep(min(ahead, 0.002))
        send(wall_us + round(i * 1_000_000 / rate))
    took = time.perf_counter() - started
    return count, (count - 1) / took if count > 1 and took > 0 else rate


def next_item(client: redis.Redis, key: str, within: float) -> bytes | None:
    """BLPOP ``key`` for up to ``within`` seconds, 2 s at a time: redis-py 8 gives up on a socket after 5 s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (item := client.blpop([key], timeout=2)) is not None:
            return item[1]
    return None


def stand_ins(broker: dramatiq.Broker) -> dict[str, dramatiq.Actor]:
    """Actors of the experiment's names on ``broker``, to send with; their bodies never run here."""
    def never_runs(*args: object) -> None:
        raise AssertionError("a sender only sends")

    return {name: dramatiq.actor(never_runs, actor_name=name, queue_name=QUEUE, broker=broker)
            for name in ("does_nothing", "notes_its_latency")}


def sender_main(count: int, rounds: int, send_ns: str, work_ns: str) -> None:
    """A sender process: ``rounds`` enqueue runs of ``count`` messages on a go signal, then jobs."""
    url = lab.redis_url()
    send_broker, work_broker = lab.make_broker(url, namespace=send_ns), lab.make_broker(url, namespace=work_ns)
    client, send, work = send_broker.client, stand_ins(send_broker), stand_ins(work_broker)
    send["does_nothing"].send("warm-up")
    client.delete(f"{send_ns}:{QUEUE}", f"{send_ns}:{QUEUE}.msgs")  # see Senders.check_enqueued
    client.rpush(f"{send_ns}:__e10__.ready", os.getpid())
    for run in range(rounds):
        if next_item(client, f"{send_ns}:__e10__.go.{run}", 120) is None:
            sys.exit("no go signal in 120 s")
        started = time.time()
        for _ in range(count):
            send["does_nothing"].send(f"send-{run}")
        client.rpush(f"{send_ns}:__e10__.times.{run}", f"{started} {time.time()}")
    while (job := next_item(client, f"{send_ns}:__e10__.jobs", 3600)) not in (None, b"stop"):
        job = json.loads(job)
        if job["kind"] == "burst":
            started = time.time()
            for _ in range(job["count"]):
                work["does_nothing"].send(job["batch"])
            client.rpush(f"{send_ns}:__e10__.done.{job['batch']}", f"{job['count']} {started}")
            continue
        sent, rate = pace(lambda due: work["notes_its_latency"].send(job["batch"], job["ms"], due),  # noqa: B023
                          job["rate"], job["seconds"])
        client.rpush(f"{send_ns}:__e10__.done.{job['batch']}", f"{sent} {rate}")


class Senders:
    """The sender processes of one run, driven from the bench through lists in ``<ns>-send``."""

    def __init__(self, url: str, namespace: str, plan: Plan, client: redis.Redis, ledger: Ledger,
                 step: Callable[[str], None]) -> None:
        self.url, self.ns, self.send_ns, self.plan, self.client, self.ledger, self.step = (
            url, namespace, f"{namespace}-send", plan, client, ledger, step)
        self.processes: list[subprocess.Popen] = []

    def key(self, name: str) -> str:
        return f"{self.send_ns}:{name}"

    def start(self) -> None:
        """Boot the sender processes now; they measure enqueue on a go signal, then take jobs."""
        self.processes = e10_pool.start("benchmarks.e10_senders", ["sender", str(self.plan.sender_count),
                                        str(self.plan.runs), self.send_ns, self.ns], self.plan.senders,
                                        lab_env(self.url))

    def one_sender(self) -> dict[str, Any]:
        """send() from this process, into ``<ns>-send``, which no worker reads."""
        send_broker = lab.make_broker(self.url, namespace=self.send_ns)
        actor = stand_ins(send_broker)["does_nothing"]
        rates, count = [], self.plan.enqueue_count
        try:
            actor.send("warm-up")
            for run in range(self.plan.runs):
                self.step(f"enqueue: one sender, run {run + 1}")
                started = time.perf_counter()
                for _ in range(count):
                    actor.send(f"send-{run}")
                rates.append(count / (time.perf_counter() - started))
                self.check_enqueued(count + (run == 0))
        finally:
            send_broker.close()
        return {"rate": figure(rates), "messages": count}

    def check_enqueued(self, expected: int) -> None:
        found = self.client.llen(self.key(QUEUE))
        if found != expected:
            self.ledger.problems.append(f"enqueue: {found} messages in the queue, {expected} sent")
        self.client.delete(self.key(QUEUE), self.key(f"{QUEUE}.msgs"))

    def enqueue(self) -> dict[str, Any]:
        """Sender processes sending at once, on one go signal: all messages / (last end - first start)."""
        n = len(self.processes)
        self.wait(lambda: self.client.llen(self.key("__e10__.ready")) >= n, 60, "sender processes ready")
        rates = []
        for run in range(self.plan.runs):
            self.step(f"enqueue: {n} sender processes, run {run + 1}")
            self.client.rpush(self.key(f"__e10__.go.{run}"), *range(n))
            times = self.key(f"__e10__.times.{run}")
            self.wait(lambda: self.client.llen(times) >= n, 60, "sender processes done")  # noqa: B023
            spans = [tuple(map(float, t.split())) for t in self.client.lrange(times, 0, -1)]
            rates.append(n * self.plan.sender_count / (max(e for _, e in spans) - min(s for s, _ in spans)))
            self.check_enqueued(n * self.plan.sender_count)
        return {"rate": figure(rates), "processes": n, "messages": n * self.plan.sender_count}

    def paced(self, rate: float, seconds: float, batch: str, sleep_ms: int) -> float:
        """Every sender sends notes_its_latency at rate / n for ``seconds``; the rate they achieved together."""
        n = len(self.processes)
        job = json.dumps({"kind": "paced", "rate": rate / n, "seconds": seconds, "batch": batch, "ms": sleep_ms})
        self.client.rpush(self.key("__e10__.jobs"), *[job] * n)
        done = self.key(f"__e10__.done.{batch}")
        self.wait(lambda: self.client.llen(done) >= n, 30 + 2 * seconds, f"{batch}: sender processes done")
        counts, rates = zip(*(map(float, d.split()) for d in self.client.lrange(done, 0, -1)), strict=True)
        self.ledger.sent[batch] = int(sum(counts))
        return sum(rates)

    def burst(self, count: int, batch: str) -> float:
        """Every sender sends ``count`` does_nothing as fast as it can; the first send's time (wall clock)."""
        n = len(self.processes)
        self.client.rpush(self.key("__e10__.jobs"), *[json.dumps({"kind": "burst", "count": count,
                                                                  "batch": batch})] * n)
        self.ledger.sent[batch] = n * count
        done = self.key(f"__e10__.done.{batch}")
        self.wait(lambda: self.client.llen(done) >= n, 60, f"{batch}: sender processes done",
                  interval=self.plan.poll_s)
        return min(float(d.split()[1]) for d in self.client.lrange(done, 0, -1))

    def stop(self) -> None:
        if self.processes and all(sender.poll() is None for sender in self.processes):
            self.client.rpush(self.key("__e10__.jobs"), *["stop"] * len(self.processes))
        e10_pool.stop(self.processes, self.ledger.problems, "a sender process")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str, interval: float | None = None) -> None:
        """Wait for ``condition``; RuntimeError, with what a failed sender said, at the deadline or if one fails.

        Polled every ``plan.poll_s`` (at least 5 ms): what is timed here is timed by the senders' and the
        actors' own clocks, so a poll only has to notice the end, and a rarer one leaves the cores to them."""
        def failed() -> list[subprocess.Popen]:
            return [p for p in self.processes if p.poll() not in (None, 0)]

        interval = interval or max(self.plan.poll_s, 0.005)
        if not lab.wait_until(lambda: condition() or failed(), timeout=timeout, interval=interval) or failed():
            said = "; ".join(p.stderr.read().strip().splitlines()[-1] for p in failed() if p.stderr) or "nothing"
            raise RuntimeError(f"gave up waiting for {what} after {timeout} s (a failed process said: {said})")


if __name__ == "__main__" and sys.argv[1:2] == ["sender"]:
    sender_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
