"""Experiment 10's drains: a batch written beforehand, released at once, timed until every message is acked.

How a drain is timed. The consumers start first and sit idle. The bench writes the batch's messages
into ``<ns>:e10.msgs`` (what Dramatiq's enqueue writes), then pushes all their ids onto the list
``<ns>:e10`` in one RPUSH: the queue goes from empty to full at once. The clock starts when the
first id leaves the list (a consumer fetched) and stops when ``e10.msgs`` is empty (every message
acked). The same clock times the workers' drains here and the dispatch script's own limit
(``e10_ceilings``), so the two compare like with like.

The bench polls to see those moments, one plain command at a time: LLEN every 5 ms until the first
fetch (the pick-up after idle is tens of ms), then HLEN, once a tenth is done, after a quarter of the time the drain has
left at its rate so far, and never sooner than ``plan.poll_s`` (20 ms) or a 50th of the time
drained so far: a few polls where the end is far, and the last gap as short as before. Each
moment is the middle of the gap between the poll before it and the poll that saw it;
``timing_error`` is the sum of the two half-gaps over the drain's time, the most the rate can be
off by that way.

What the polling costs is measured, not guessed: ``bench_core_share`` is the fraction of one core
the bench process took during the drain, and redis-server's CPU per message is given net of the
polls it served (``server_cpu_ms_per_message``; ``..._with_polls`` before that subtraction), at
redis-server's cost of one poll measured back to back before the run (``poll_cost``). The workers'
and the drivers' CPU figures, read from /proc by pid, never included the bench.
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


def poll_cost(client: redis.Redis, real: bool, polls: int = 300) -> dict[str, Any]:
    """What one poll of a drain costs, in µs of CPU: the bench's own, and redis-server's (None on another
    server). Measured back to back, before the run, so that each drain's redis-server figure can be taken
    net of the polls it served."""
    server, bench = server_cpu(client, real), time.process_time()
    for _ in range(polls):
        client.hlen(f"__e10__.calibration.{QUEUE}.msgs")
    bench, after = time.process_time() - bench, server_cpu(client, real)
    return {"polls": polls, "bench_us": bench * 1e6 / polls,
            "server_us": (after - server) * 1e6 / polls if server is not None else None}


def release(client: redis.Redis, namespace: str, ids: list[str], pids: list[int], *, poll_s: float, real: bool,
            ledger: Ledger, batch: str, go: Callable[[], None] = lambda: None,
            server_us_per_poll: float = 0.0) -> dict[str, Any]:
    """Push ``ids`` onto the queue at once (then call ``go``), and time the drain until every one is acked."""
    queue, msgs, count = f"{namespace}:{QUEUE}", f"{namespace}:{QUEUE}.msgs", len(ids)
    calls, cpu, server = dispatch_calls(client, real), cpu_seconds(pids), server_cpu(client, real)
    released = time.time()
    client.rpush(queue, *ids)
    go()
    bench_cpu, polls = time.process_time(), 0
    # Each moment is known to lie between two polls: the last that saw the old state and the first
    # that saw the new one. Take the middle; half the gap is how well it is known.
    before, fetched, fetch_gap, ended = released, None, 0.0, None
    deadline = time.monotonic() + 30 + count * 0.02
    while fetched is None:  # one LLEN every 5 ms: a pick-up after idle takes tens of ms
        waiting, now, polls = client.llen(queue), time.time(), polls + 1
        if waiting < count:
            fetched, fetch_gap = (before + now) / 2, now - before
        elif time.monotonic() > deadline:
            ledger.problems.append(f"{batch}: none of {count} messages fetched in time")
            fetched = now
        else:
            before = now
            time.sleep(0.005)
    while ended is None:  # then one HLEN, sooner the nearer the end looks
        stored, now, polls = client.hlen(msgs), time.time(), polls + 1
        if stored == 0:
            ended = (before + now) / 2
        elif time.monotonic() > deadline:
            ledger.problems.append(f"{batch}: {stored} of {count} messages not done in time")
            ended = now
        else:
            before, so_far = now, now - fetched
            # a quarter of the time left at the rate so far (the rest would have to run 4 times as fast to end
            # unseen), once a tenth is done: before that the rate so far is the slow start (pick-up, the first
            # fetches) and would sleep past the end. Never under poll_s or a 50th of the time drained so far.
            done = count - stored
            left = stored * so_far / done if done >= count / 10 else 0.0
            time.sleep(max(poll_s, so_far / 50, left / 4))
    bench_cpu = time.process_time() - bench_cpu
    took = max(ended - fetched, 1e-3)
    after = server_cpu(client, real)
    raw = (after - server) * 1000 / count if server is not None else None
    return {"rate": count / took, "pickup_ms": (fetched - released) * 1000,
            "timing_error": (fetch_gap + now - before) / 2 / took,  # at most: half of each moment's gap
            "dispatch_per_message": (dispatch_calls(client, real) - calls) / count if calls is not None else None,
            "cpu_ms_per_message": (cpu_seconds(pids) - cpu) * 1000 / count,
            "server_cpu_ms_per_message": raw - polls * server_us_per_poll / 1000 / count if raw is not None else None,
            "server_cpu_ms_per_message_with_polls": raw, "polls": polls,
            "bench_cpu_ms_per_message": bench_cpu * 1000 / count,
            "bench_core_share": bench_cpu / max(ended - released, 1e-3)}


class Drains:
    """Drains of the actors' messages by real ``dramatiq`` workers, in the run's namespace."""

    def __init__(self, client: redis.Redis, namespace: str, plan: Plan, actors: dict[str, dramatiq.Actor],
                 ledger: Ledger, step: Callable[[str], None]) -> None:
        self.client, self.ns, self.plan, self.actors, self.ledger, self.step = (client, namespace, plan, actors,
                                                                                 ledger, step)
        self.real, self.server_us_per_poll = False, 0.0  # set by the run, once it knows the server

    def args(self, kind: str) -> tuple:
        return {"noop": (), "io": (self.plan.io_ms,), "cpu": (self.plan.cpu_loops,)}[kind]

    def drain(self, kind: str, count: int, batch: str, pids: list[int]) -> dict[str, Any]:
        actor = self.actors[KINDS[kind]]
        ids = fill(self.client, self.ns, [actor.message(batch, *self.args(kind)) for _ in range(count)])
        self.ledger.sent[batch] = count
        return release(self.client, self.ns, ids, pids, poll_s=self.plan.poll_s, real=self.real,
                       ledger=self.ledger, batch=batch, server_us_per_poll=self.server_us_per_poll)

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
               for name in ("rate", "pickup_ms", "timing_error", "dispatch_per_message", "cpu_ms_per_message",
                            "server_cpu_ms_per_message", "server_cpu_ms_per_message_with_polls",
                            "bench_cpu_ms_per_message", "bench_core_share")}}
