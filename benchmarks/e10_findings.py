"""What Experiment 10's figures say: the 1-thread trap worked out, and where the recommended setup's time goes.

Both read a finished report (``e10_bench`` calls them last); nothing here measures.
"""

from __future__ import annotations

import statistics
from typing import Any

from dramatiq.common import compute_backoff


def trap(report: dict[str, Any]) -> dict[str, Any]:
    """Why one thread with the default prefetch is slow, from this run's own numbers.

    The consumer fetches up to ``prefetch`` messages (2 x threads by default) and hands them to the
    worker threads. Until one of them is acked it may not fetch again, and instead of waiting for
    that ack it sleeps ``compute_backoff(misses)``: 5 to 10 ms after a fetch that found messages
    (``_RedisConsumer.__next__`` in dramatiq/brokers/redis.py). One thread runs its two messages in
    well under a millisecond and then waits for that sleep.
    """
    rows = {(r["config"], r["kind"]): r for r in report["processing"]}
    by_role = {role: r for r in report["processing"] if r["kind"] == "noop" for role in r["roles"]}
    one, raised = by_role.get("trap"), by_role.get("raised")
    sleeps = [compute_backoff(0, max_backoff=100)[1] for _ in range(20_000)]  # Dramatiq's own draw, in whole ms
    sleep_ms = statistics.fmean(sleeps)
    out: dict[str, Any] = {"sleep_ms": sleep_ms, "sleep_range_ms": [min(sleeps), max(sleeps)]}
    if one is not None:
        out["one_thread"] = {"rate": one["rate"]["median"], "prefetch": one["prefetch"],
                             "bound": one["prefetch"] / sleep_ms * 1000}
        dispatch = one["dispatch_per_message"]
        if dispatch is not None and dispatch["median"] > 1:
            # one ack per message; the rest are fetches (plus a few idle polls of the delay queue's consumer)
            out["one_thread"]["messages_per_fetch"] = 1 / (dispatch["median"] - 1)
            out["one_thread"]["ms_per_fetch"] = 1000 / one["rate"]["median"] / (dispatch["median"] - 1)
    eight = rows.get(("1×8", "noop"))
    if eight is not None:
        out["eight_threads"] = {"rate": eight["rate"]["median"], "prefetch": eight["prefetch"],
                                "bound": eight["prefetch"] / sleep_ms * 1000}
    if raised is not None:
        per_message_ms = 1000 / raised["rate"]["median"]
        out["raised"] = {"config": raised["config"], "prefetch": raised["prefetch"], "threads": raised["threads"],
                         "rate": raised["rate"]["median"], "per_message_ms": per_message_ms}
        if one is not None:  # a cycle: one sleep, then the prefetched messages one after another
            p = one["prefetch"]
            out["one_thread"]["model"] = p / (sleep_ms + p * per_message_ms) * 1000
    return out


def recommended(report: dict[str, Any]) -> dict[str, Any]:
    """The recommended setup's no-op drain as a fraction of its own dispatch limit, and where the time goes."""
    row = next((r for r in report["processing"] if "recommended" in r["roles"] and r["kind"] == "noop"), None)
    if row is None:
        return {}
    limit = next(m for m in report["limits"] if m["config"] == row["config"])
    out = {"config": row["config"], "processes": row["processes"], "threads": row["threads"],
           "prefetch": row["prefetch"], "rate": row["rate"]["median"], "limit": limit["rate"]["median"],
           "of_limit": row["of_limit"]["median"], "why": ""}
    cpu = row["cpu_ms_per_message"]["median"]
    driver = limit["cpu_ms_per_message"]["median"]
    cores, share = report["conditions"]["cores"], row["bench_core_share"]["median"]
    parts = [f"each message cost the worker processes {cpu:.3f} ms of CPU, the dispatch drivers "
             f"{driver:.3f} ms: the workers' own share (the actor call, middleware, the hand-off between threads) "
             f"is {max(cpu - driver, 0):.3f} ms, and {cores} cores, less the bench's {share:.1%} of one, allow at "
             f"most {(cores - share) * 1000 / cpu:,.0f} msg/s of such work if the workers had them all"]
    net, raw = row["server_cpu_ms_per_message"], row["server_cpu_ms_per_message_with_polls"]
    if net and limit["server_cpu_ms_per_message"]:
        parts.append(f"redis-server spent {net['median']:.3f} ms a message under the workers and "
                     f"{limit['server_cpu_ms_per_message']['median']:.3f} under the drivers, net of the bench's "
                     f"polls ({raw['median']:.3f} and {limit['server_cpu_ms_per_message_with_polls']['median']:.3f} "
                     "with them)")
    parts.append(f"the bench's own polling took {share:.1%} of a core ({row['bench_cpu_ms_per_message']['median']:.4f} "
                 f"ms of its CPU a message; the workers' figures never included it), and each drain's time is "
                 f"known to {row['timing_error']['max']:.1%} or better")
    out["why"] = "; ".join(parts)
    return out
