"""Experiment 10's drains: a batch written beforehand, released at once, timed until every message is acked.

How a drain is timed. The consumers start first and sit idle. The bench writes the batch's messages
into ``<ns>:e10.msgs`` (what Dramatiq's enqueue writes), then pushes all their ids onto the list
``<ns>:e10`` in one RPUSH: the queue goes from empty to full at once. The clock starts when the
first id leaves the list (a consumer fetched) and stops when ``e10.msgs`` is empty (every message
acked). The same clock times the workers' drains here and the dispatch script's own limit
(``e10_ceilings``), so the two compare like with like.

The bench polls LLEN and HLEN to see those moments: every 5 ms until the first fetch (the pick-up
after idle is tens of ms), then every ``plan.poll_s`` (20 ms) or a 50th of the time drained so far,
whichever is longer, and it measures its own CPU meanwhile (``bench_core_share``: the fraction of
one core the bench took during the drain).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import redis

from benchmarks.e10_common import KINDS, QUEUE, Config, Ledger, Plan, cpu_seconds, figure


def server_cpu(client: redis.Redis, real: bool) -> float | None:
    """redis-server's CPU seconds so far (INFO cpu); None on another server."""
    if not real:
        return None
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def dispatch_calls(client: redis.Redis, real: bool) -> int | None:
    """EVALSHA calls so far: every Dramatiq fetch, ack and enqueue is one (redis-server only)."""
    if not real:
        return None
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def fill(client: redis.Redis, namespace: str, messages: list[dramatiq.Message]) -> list[str]:
    """Write ``messages`` into ``<namespace>:e10.msgs`` as Dramatiq's enqueue does; their ids, not yet queued."""
    ids = []
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
            ids.append(message.options["redis_message_id"])
            pipe.hset(f"{namespace}:{QUEUE}.msgs", ids[-1], message.encode())
        pipe.execute()
    return ids


def release(client: redis.Redis, namespace: str, ids: list[str], pids: list[int], *, poll_s: float, real: bool,
            ledger: Ledger, batch: str, go: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Push ``ids`` onto the queue at once (then call ``go``), and time the drain until every one is acked."""
    queue, msgs, count = f"{namespace}:{QUEUE}", f"{namespace}:{QUEUE}.msgs", len(ids)
    calls, cpu, server = dispatch_calls(client, real), cpu_seconds(pids), server_cpu(client, real)
    released = time.time()
    client.rpush(queue, *ids)
    go()
    bench_cpu = time.process_time()
    # Each moment is known to lie between two polls: the last that saw the old state and the first
    # that saw the new one. Take the middle.
    before, fetched, ended = released, None, None
    deadline = time.monotonic() + 30 + count * 0.02
    while ended is None:
        with client.pipeline(transaction=False) as pipe:
            waiting, stored = pipe.llen(queue).hlen(msgs).execute()
        now = time.time()
        if fetched is None and waiting < count:
            fetched = (before + now) / 2
        if stored == 0:
            ended = (before + now) / 2
        elif time.monotonic() > deadline:
            ledger.problems.append(f"{batch}: {stored} of {count} messages not done in time")
            ended = now
        before = now
        # every 5 ms until the first fetch (a pick-up takes tens of ms); then every poll_s, or a 50th of the
        # time drained so far if longer: the end is then known to 1 %, at a few polls a second
        time.sleep(0.005 if fetched is None else max(poll_s, (now - fetched) / 50))
    bench_cpu = time.process_time() - bench_cpu
    fetched = fetched or ended
    took = max(ended - fetched, 1e-3)
    after = server_cpu(client, real)
    return {"rate": count / took, "pickup_ms": (fetched - released) * 1000,
            "dispatch_per_message": (dispatch_calls(client, real) - calls) / count if calls is not None else None,
            "cpu_ms_per_message": (cpu_seconds(pids) - cpu) * 1000 / count,
            "server_cpu_ms_per_message": (after - server) * 1000 / count if server is not None else None,
            "bench_cpu_ms_per_message": bench_cpu * 1000 / count,
            "bench_core_share": bench_cpu / max(ended - released, 1e-3)}


class Drains:
    """Drains of the actors' messages by real ``dramatiq`` workers, in the run's namespace."""

    def __init__(self, client: redis.Redis, namespace: str, plan: Plan, actors: dict[str, dramatiq.Actor],
                 ledger: Ledger, step: Callable[[str], None]) -> None:
        self.client, self.ns, self.plan, self.actors, self.ledger, self.step = (client, namespace, plan, actors,
                                                                                 ledger, step)
        self.real = False

    def args(self, kind: str) -> tuple:
        return {"noop": (), "io": (self.plan.io_ms,), "cpu": (self.plan.cpu_loops,)}[kind]

    def drain(self, kind: str, count: int, batch: str, pids: list[int]) -> dict[str, Any]:
        actor = self.actors[KINDS[kind]]
        ids = fill(self.client, self.ns, [actor.message(batch, *self.args(kind)) for _ in range(count)])
        self.ledger.sent[batch] = count
        return release(self.client, self.ns, ids, pids, poll_s=self.plan.poll_s, real=self.real,
                       ledger=self.ledger, batch=batch)

    def size(self, config: Config, kind: str, pids: list[int]) -> int:
        """Two untimed drains: a first guess from a small batch, then a better one; messages for drain_s."""
        self.step(f"{config.label}: {KINDS[kind]}, warm-up")
        count = self.plan.warmup
        for warm_up in range(2):
            rate = self.drain(kind, count, f"{config.label}/{kind}/warm-up{warm_up}", pids)["rate"]
            count = int(max(self.plan.min_messages, min(self.plan.max_messages, rate * self.plan.drain_s / (
                3 if warm_up == 0 else 1))))
        return count


def row(config: Config, kind: str, count: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One setup's drains of one actor, each field a figure over the runs."""
    return {"config": config.label, "kind": kind, "actor": KINDS[kind], "processes": config.processes,
            "threads": config.threads, "prefetch": config.effective_prefetch,
            "prefetch_set": config.prefetch is not None, "roles": list(config.roles), "messages": count,
            **{name: figure([r[name] for r in runs]) if runs[0][name] is not None else None
               for name in ("rate", "pickup_ms", "dispatch_per_message", "cpu_ms_per_message",
                            "server_cpu_ms_per_message", "bench_cpu_ms_per_message", "bench_core_share")}}
