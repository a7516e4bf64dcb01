"""Experiment 10's latency runs: paced sends at light load and near saturation, pick-up after idle, end to end.

Each paced message carries the moment it was due (``intended_us``, microseconds of the wall clock);
``notes_its_latency`` notes its own start minus that, so a sender's stall counts, and nothing is
truncated to the millisecond. A warm-up run, not counted, comes first at each load: the consumers
are then fetching, not waking from the idle backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lab
from lab.processes import WorkerProcess
from lab.stats import percentile

import dramatiq
import redis

from benchmarks.e10_common import QUEUE, Ledger, Plan, figure
from benchmarks.e10_senders import Senders, pace


class Latency:
    def __init__(self, url: str, namespace: str, plan: Plan, client: redis.Redis, actor: dramatiq.Actor,
                 senders: Senders, ledger: Ledger, step: Callable[[str], None], idle_queues: tuple[str, ...]) -> None:
        self.idle_queues = idle_queues  # one message to each at once: three independent samples a round
        self.url, self.ns, self.plan, self.client, self.actor, self.senders, self.ledger, self.step = (
            url, namespace, plan, client, actor, senders, ledger, step)
        self.probe_brokers: dict[str, Any] = {}

    def drained(self, batch: str) -> None:
        self.senders.wait(lambda: self.client.hlen(f"{self.ns}:{QUEUE}.msgs") == 0, 30, f"{batch} to run")

    def under_load(self, io_rate: float) -> dict[str, Any]:
        """notes_its_latency, sleeping io_ms like waits_on_io: at a light rate, then at ``saturation`` x the
        drain rate of waits_on_io. An I/O-bound actor, so that the senders' CPU does not take the workers'."""
        loads = {"light": (self.plan.light_rate, self.plan.light_s),
                 "saturated": (io_rate * self.plan.saturation, self.plan.saturation_s)}
        out, sleep_ms, n = {}, self.plan.io_ms, len(self.senders.processes)
        for load, (rate, seconds) in loads.items():
            achieved, batches = [], []
            for run in range(-1, self.plan.runs):  # run -1: the warm-up, sent and checked, not counted
                batch = f"latency-{load}/{'warm-up' if run < 0 else run}"
                if run >= 0:
                    batches.append(batch)
                if load == "light":
                    self.step(f"latency, light load ({rate:.0f}/s from this process), run {run + 1}")
                    count, got = pace(lambda due: self.actor.send(batch, sleep_ms, due),  # noqa: B023
                                      rate, seconds / 2 if run < 0 else seconds)
                    self.ledger.sent[batch] = count
                else:
                    self.step(f"latency, near saturation ({rate:.0f}/s from {n} processes), run {run + 1}")
                    got = self.senders.paced(rate, seconds / 2 if run < 0 else seconds, batch, sleep_ms)
                if run >= 0:
                    achieved.append(got)
                self.drained(batch)
            out[load] = {"offered_rate": rate, "achieved_rate": figure(achieved), "actor_ms": sleep_ms,
                         "senders": 1 if load == "light" else n, "batches": batches}
        return out

    def end_to_end(self) -> dict[str, Any]:
        """N no-op messages sent by K sender processes at once while the workers drain: first send to last ack."""
        n, count, seconds = len(self.senders.processes), self.plan.sender_count, []
        for run in range(self.plan.runs):
            self.step(f"end to end: {n} senders x {count}, run {run + 1}")
            batch = f"end-to-end/{run}"
            first = self.senders.burst(count, batch)
            while self.client.hlen(f"{self.ns}:{QUEUE}.msgs"):
                time.sleep(self.plan.poll_s)
            seconds.append(time.time() - self.plan.poll_s / 2 - first)
        return {"senders": n, "messages": n * count, "seconds": figure(seconds),
                "rate": figure([n * count / s for s in seconds])}

    def idle_pickup(self, probes: dict[int, WorkerProcess], idle_since: dict[int, float]) -> None:
        """One message to each queue of each idle probe worker at once; again once they are idle again."""
        rounds = -(-self.plan.runs // len(self.idle_queues))  # 3 samples a round: ceil(runs / 3) rounds
        for round_ in range(rounds):
            for timeout, since in idle_since.items():
                time.sleep(max(0.0, self.plan.idle_wait_s[timeout] - (time.monotonic() - since)))
            self.step(f"latency after idle, round {round_ + 1}")
            for timeout in probes:
                ns, batch = f"{self.ns}-idle{timeout}", f"idle-{timeout}/{round_}"
                if ns not in self.probe_brokers:
                    self.probe_brokers[ns] = lab.make_broker(self.url, namespace=ns)
                for queue in self.idle_queues:
                    message = self.actor.message(batch, 0, int(time.time() * 1_000_000)).copy(queue_name=queue)
                    self.probe_brokers[ns].enqueue(message)
                self.ledger.sent[f"{ns}|{batch}"] = len(self.idle_queues)
            for timeout in probes:
                ns = f"{self.ns}-idle{timeout}"
                self.senders.wait(lambda ns=ns: not any(self.client.hlen(f"{ns}:{q}.msgs") for q in self.idle_queues),
                                  10, "the idle probes to run")
                idle_since[timeout] = time.monotonic()

    def close(self) -> None:
        for probe_broker in self.probe_brokers.values():
            probe_broker.close()


def tallies(client: redis.Redis, namespace: str) -> tuple[dict[str, int], dict[str, list[float]]]:
    """What the actors of ``namespace`` ran (batch -> count) and the latencies (ms) they noted."""
    ran = {k.decode(): int(v) for k, v in client.hgetall(f"{namespace}:__e10__.ran").items()}
    prefix = f"{namespace}:__e10__.latency."
    latencies = {k.decode().removeprefix(prefix): [float(v) for v in client.lrange(k, 0, -1)]
                 for k in client.scan_iter(f"{prefix}*")}
    return ran, latencies


def report(client: redis.Redis, namespace: str, latency: dict[str, Any], probes: dict[int, Any]) -> dict[str, Any]:
    """p50, p95 and p99 of each run (a figure over the runs) with the sample count; the idle pick-ups."""
    _, values = tallies(client, namespace)
    out = {}
    for load, info in latency.items():
        per_run = [values.get(batch, []) for batch in info.pop("batches")]
        out[load] = {**info, "samples": sum(map(len, per_run)),
                     **{f"p{p}": figure([percentile(v, p) for v in per_run]) if all(per_run) else None
                        for p in (50, 95, 99)}}
    for timeout in probes:
        _, probe_values = tallies(client, f"{namespace}-idle{timeout}")
        samples = [v for batch, vs in sorted(probe_values.items()) for v in vs]
        out[f"idle_{timeout}"] = {"worker_timeout": timeout, "samples": len(samples),
                                  "ms": figure(samples) if samples else None}
    return out
