"""`python -m lab run e13 --broker amqp://...`: every lesson on that RabbitMQ and on a Redis, side by side.

The Redis is the run's broker when it is one, else ``$DRAMATIQ_REDIS_URL``, else the embedded one (fakeredis
over TCP, started here). Lessons 4, 9 and 10 start a private rabbitmq-server and redis-servers of their own
(``scenarios/e13_rabbitmq_servers.py``), meanwhile. Without a RabbitMQ every lesson is skipped, and without
rabbitmq-server or redis-server installed lessons 4, 9 and 10 are, each saying what it needs in one line.
The side-by-side tables go in ``run.tables``, which ``lab/report.py`` prints under the lessons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import lab
from lab.server import EmbeddedRedis

from rich.table import Table

from scenarios import e13_rabbitmq_servers as servers
from scenarios import e13_sides as sides
from scenarios.e13_sides import Side

NEEDS_RABBITMQ = "needs a RabbitMQ: python -m lab run e13 --broker amqp://USER:PASSWORD@HOST:PORT/VHOST"
TESTS = {
    "kill": "test_a_killed_workers_messages_come_back_at_once_on_rabbitmq_and_after_the_heartbeat_on_redis",
    "priority": "test_broker_priority_jumps_only_undelivered_messages_so_the_prefetch_decides",
    "declare": "test_a_queue_declared_again_with_another_max_priority_is_refused_with_406",
    "dead": "test_rabbitmq_expires_dead_letters_itself_redis_only_in_maintenance",
    "join": "test_rabbitmq_join_counts_ready_messages_only_and_waits_a_second",
    "publish": "test_publishing_to_a_deleted_queue_is_lost_without_confirm_delivery",
    "prefetch": "test_a_worker_holds_its_prefetch_on_both_brokers_seen_from_the_broker",
}
SERVERS = "tests/test_e13_private_servers.py::"  # lessons 4, 9 and 10: on private servers of their own
SERVER_TESTS = [SERVERS + name for name in (
    "test_a_task_longer_than_consumer_timeout_is_delivered_again_and_runs_twice",
    "test_consumer_timeout_raised_on_the_server_lets_the_long_task_run_once",
    "test_the_x_consumer_timeout_queue_argument_is_ignored_by_rabbitmq_3_10",
    "test_a_delayed_message_held_past_consumer_timeout_goes_back_to_its_dq_at_each_timeout",
    "test_a_quick_task_prefetched_behind_a_long_one_times_out_too_and_runs_twice",
    "test_durable_queues_and_persistent_messages_survive_a_rabbitmq_restart",
    "test_redis_keeps_its_queues_across_a_restart_only_with_appendonly",
    "test_a_tiny_drain_ran_every_message_once_on_both_brokers_beside_their_limits",
)]


def rabbitmq_url(run: lab.Run) -> str | None:
    """The RabbitMQ to play on: the run's broker, or $DRAMATIQ_BROKER_URL when that is an amqp:// URL."""
    url = getattr(run.broker, "lab_url", "") or ""
    if url.startswith("amqp"):
        return url
    url = os.environ.get("DRAMATIQ_BROKER_URL", "")
    return url if url.startswith("amqp") else None


def real_redis_url(run: lab.Run) -> str | None:
    """A real Redis: the run's broker when it is one, else ``$DRAMATIQ_REDIS_URL``; None for the embedded one."""
    for url in (getattr(run.broker, "lab_url", "") or "", os.environ.get(lab.URL_ENV, "")):
        if url.startswith(("redis", "unix")):
            return url
    return None


@contextmanager
def redis_url(run: lab.Run) -> Iterator[str]:
    """A Redis reachable by other processes too: a real one, or the embedded one (fakeredis over TCP)."""
    url = real_redis_url(run)
    if url is not None:
        yield url
    else:
        with EmbeddedRedis(port=0) as server:
            yield server.url


TITLES = {"kill": "1. a process holding 5 messages, SIGKILLed", "priority": "2. where a greeting with "
          "broker_priority 9 ran, after 6 jobs", "declare": "3. a queue declared again with another max_priority",
          "dead": "5. a dead letter, dead_message_ttl 500 ms", "join": "6. join() on an empty queue, then with one "
          "message running", "publish": "7. 5 messages sent to a queue deleted under the sender",
          "prefetch": "8. a worker with 1 thread and prefetch 4, on 10 messages"}
LESSONS = {"kill": sides.kill_lesson, "priority": sides.priority_lesson, "declare": sides.declare_lesson,
           "dead": sides.dead_letter_lesson, "join": sides.join_lesson, "publish": sides.publish_lesson,
           "prefetch": sides.prefetch_lesson}


def measure(rabbit: str, redis: str) -> dict[str, list[Side]]:
    """Every lesson of this module, on both brokers: what the tests assert on, and what the scenario checks.

    Two at a time: each uses queues and a namespace of its own, and most of a lesson is waiting (a heartbeat
    to age, a ttl, join's second), so the pairs take about half the time of one after the other.
    """
    with ThreadPoolExecutor(2, thread_name_prefix="e13") as pool:
        futures = {name: pool.submit(lesson, rabbit, redis) for name, lesson in LESSONS.items()}
    return {name: future.result() for name, future in futures.items()}


def holds(name: str, rabbit: Side, redis: Side) -> bool:
    """Whether lesson ``name`` held: the same conditions the tests assert."""
    if name == "kill":
        return (rabbit["lost"], redis["lost"]) == (0, 0) and all(rabbit["redelivered"]) \
            and rabbit["recovery_ms"] < 500 <= redis["recovery_ms"]
    if name == "priority":
        return (rabbit["prefetch_1"], rabbit["prefetch_default"]) == (2, 3) \
            and redis["prefetch_1"] == redis["prefetch_default"] == redis["backlog"] + 1
    if name == "declare":
        return rabbit["again"].startswith("(406, \"PRECONDITION_FAILED - inequivalent arg 'x-max-priority'") \
            and rabbit["new_name"] == rabbit["after_delete"] == "ok" and not redis["has_max_priority"]
    if name == "dead":
        return (rabbit["at_once"], rabbit["after_ttl"], redis["at_once"], redis["after_ttl"],
                redis["after_maintenance"]) == (1, 0, 1, 1, 0) and rabbit["gone_ms"] >= rabbit["ttl_ms"]
    if name == "join":
        return rabbit["empty_ms"] >= 1000 and rabbit["in_flight"] == "returned" \
            and redis["empty_ms"] < 1000 and redis["in_flight"] == "timed out"
    if name == "publish":
        return (rabbit["arrived_without_confirm"], rabbit["arrived_with_confirm"],
                redis["arrived_without_confirm"]) == (0, rabbit["sent"], redis["sent"])
    if name == "prefetch":
        return rabbit["held"] == redis["held"] == [rabbit["prefetch"]] * 2 and redis["in_acks_sets"] == redis["held"]
    raise LookupError(name)


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}"
    if isinstance(value, list) and value and all(v is True for v in value):
        return f"all {len(value)} True"
    return "n/a" if value is None else str(value)


def table(title: str, pair: list[Side]) -> Table:
    """One lesson's side-by-side table: a row per observed value, a column per broker."""
    rabbit, redis = pair
    grid = Table("", "RabbitMQ", "Redis", title=title, title_justify="left")
    for name in dict.fromkeys([*rabbit.values, *redis.values]):
        grid.add_row(name, show(rabbit.values.get(name)), show(redis.values.get(name)))
    return grid


def evidence(name: str, rabbit: Side, redis: Side) -> str:
    if name == "kill":
        return (f"RabbitMQ: {rabbit['lost']} lost, back in {rabbit['recovery_ms']:.0f} ms, redelivered "
                f"{set(rabbit['redelivered'])}; Redis (heartbeat 1000 ms): {redis['lost']} lost, "
                f"back in {redis['recovery_ms']:.0f} ms")
    if name == "priority":
        return (f"greeting ran at position {rabbit['prefetch_1']} (prefetch 1) and {rabbit['prefetch_default']} "
                f"(default) on RabbitMQ; {redis['prefetch_1']} of {redis['backlog'] + 1}, last, on Redis")
    if name == "declare":
        return f"again with 5: {rabbit['again'][:60]}...; a new name: {rabbit['new_name']}"
    if name == "dead":
        return (f"RabbitMQ .XQ empty {rabbit['gone_ms']:.0f} ms after (ttl {rabbit['ttl_ms']}); Redis kept it "
                f"({redis['after_ttl']}) until maintenance ({redis['after_maintenance']})")
    if name == "join":
        return (f"empty: {rabbit['empty_ms']:.0f} vs {redis['empty_ms']:.0f} ms; one in flight: RabbitMQ "
                f"{rabbit['in_flight']}, Redis {redis['in_flight']}")
    if name == "publish":
        return (f"{rabbit['sent']} sent to a deleted queue: {rabbit['arrived_without_confirm']} arrived without "
                f"confirm_delivery, {rabbit['arrived_with_confirm']} with; Redis {redis['arrived_without_confirm']}")
    return f"held {rabbit['held']} on RabbitMQ, {redis['held']} on Redis (acks sets {redis['in_acks_sets']})"


def figure(value: Any) -> str:
    """A cell of the servers' tables: an e10-style figure as "median (min to max)", a ratio as a percentage."""
    if not isinstance(value, dict):
        return show(value)
    shown = "{:.0%}" if value["median"] < 5 else "{:,.0f}"
    spread = "" if value["min"] == value["max"] else f" ({shown.format(value['min'])} to {shown.format(value['max'])})"
    return shown.format(value["median"]) + spread


def rows_table(title: str, found: dict[str, Any]) -> Table:
    """A servers' lesson's table: its own columns, a row per setup, both brokers in it."""
    grid = Table(*found["columns"], title=title, title_justify="left")
    for row in found["rows"]:
        grid.add_row(*(figure(row[column]) for column in found["columns"]))
    return grid


def check_servers(run: lab.Run, found: dict[str, Any], drains: dict[str, Any]) -> None:
    """Lessons 4, 9 and 10, on the private servers: the same conditions tests/test_e13_private_servers.py asserts."""
    short, fixed = found["consumer_timeout"]["too_long"], found["consumer_timeout"]["raised"]
    rabbit, plain, aof = found["restart"]["rows"]
    run.check("tests/test_e13_private_servers.py::test_a_task_longer_than_consumer_timeout_is_delivered_again_and_"
              "runs_twice", short["runs"][:2] == [False, True] and short["failed_acks"] >= 1,
              f"a {found['consumer_timeout']['task_ms']} ms task on consumer_timeout "
              f"{found['consumer_timeout']['timeout_ms']} ms: started {len(short['runs'])} times (redelivered "
              f"{short['runs']}), {short['failed_acks']} acks failed")
    run.check("tests/test_e13_private_servers.py::test_consumer_timeout_raised_on_the_server_lets_the_long_task_run_once",
              fixed["runs"] == [False] and fixed["failed_acks"] == 0,
              f"restarted with {found['consumer_timeout']['raised_ms']} ms: ran {len(fixed['runs'])} time(s), "
              f"{fixed['failed_acks']} acks failed")
    run.check("tests/test_e13_private_servers.py::test_the_x_consumer_timeout_queue_argument_is_ignored_by_rabbitmq_3_10",
              len(short["arg_runs"]) >= 2 and short["arg_runs"][1] is True,
              f"with x-consumer-timeout on the queue: started {len(short['arg_runs'])} times ({found['rabbitmq']})")
    run.check("tests/test_e13_private_servers.py::test_a_delayed_message_held_past_consumer_timeout_goes_back_to_its_"
              "dq_at_each_timeout", len(short["delayed_holds"]) >= 2 and all(short["delayed_holds"][1:])
              and short["delayed_runs"] == [False] and fixed["delayed_holds"] == [False],
              f"delayed {short['delay_ms']} ms: taken from its .DQ {len(short['delayed_holds'])} times, ran "
              f"{len(short['delayed_runs'])}; raised: taken {len(fixed['delayed_holds'])}")
    run.check("tests/test_e13_private_servers.py::test_a_quick_task_prefetched_behind_a_long_one_times_out_too_and_"
              "runs_twice", len(short["quick_runs"]) >= 2 and short["quick_runs"][0] is False
              and True in short["quick_runs"], f"the quick task behind a long one ran {len(short['quick_runs'])} times")
    run.check("tests/test_e13_private_servers.py::test_durable_queues_and_persistent_messages_survive_a_rabbitmq_restart",
              rabbit["before"] == rabbit["survived"] == rabbit["sent"],
              f"RabbitMQ: {rabbit['survived']} of {rabbit['sent']} after a restart")
    run.check("tests/test_e13_private_servers.py::test_redis_keeps_its_queues_across_a_restart_only_with_appendonly",
              (plain["survived"], aof["survived"]) == (0, aof["sent"]),
              f"redis-server: {plain['survived']} of {plain['sent']} without persistence, {aof['survived']} with "
              "appendonly")
    brokers = [row["broker"] for row in drains["rows"]]
    run.check("tests/test_e13_private_servers.py::test_a_tiny_drain_ran_every_message_once_on_both_brokers_beside_"
              "their_limits", drains["ok"] and brokers == ["RabbitMQ", "Redis"],
              "; ".join(drains["problems"]) or f"every message ran once on {' and '.join(brokers)}; "
              + ", ".join(f"{row['broker']} {figure(row['of_limit'])} of its limit" for row in drains["rows"]))
    run.tables = [*getattr(run, "tables", []),
                  rows_table(f"4. consumer_timeout ({found['rabbitmq']}, private)", found["consumer_timeout"]),
                  rows_table("9. a restart, messages waiting, no worker", found["restart"]),
                  rows_table(f"10. throughput, {drains['plan']} plan: {drains['conditions']}", drains)]


def scenario(run: lab.Run) -> None:
    rabbit = rabbitmq_url(run)
    why = NEEDS_RABBITMQ if rabbit is None else servers.missing()
    if why is not None:
        for test in SERVER_TESTS:
            run.skip(test, why)
    if rabbit is None:
        for test in TESTS.values():
            run.skip(test, NEEDS_RABBITMQ)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="e13-servers") as pool, redis_url(run) as redis:
        # The private servers' lessons meanwhile: most of their time is a RabbitMQ starting and restarting
        on_servers = pool.submit(servers.server_lessons) if why is None else None
        results = measure(rabbit, redis)
        found = on_servers.result() if on_servers else None

    def seen(name: str) -> tuple[bool, str]:
        return holds(name, *results[name]), evidence(name, *results[name])

    run.check("test_a_killed_workers_messages_come_back_at_once_on_rabbitmq_and_after_the_heartbeat_on_redis",
              *seen("kill"))
    run.check("test_broker_priority_jumps_only_undelivered_messages_so_the_prefetch_decides", *seen("priority"))
    run.check("test_a_queue_declared_again_with_another_max_priority_is_refused_with_406", *seen("declare"))
    run.check("test_rabbitmq_expires_dead_letters_itself_redis_only_in_maintenance", *seen("dead"))
    run.check("test_rabbitmq_join_counts_ready_messages_only_and_waits_a_second", *seen("join"))
    run.check("test_publishing_to_a_deleted_queue_is_lost_without_confirm_delivery", *seen("publish"))
    run.check("test_a_worker_holds_its_prefetch_on_both_brokers_seen_from_the_broker", *seen("prefetch"))
    run.tables = [table(TITLES[name], pair) for name, pair in results.items()]  # lab/report.py prints them
    run.tables[0].title += f" (RabbitMQ {lab.mask_url(rabbit)}, Redis {lab.mask_url(redis)})"
    if found is not None:
        check_servers(run, found, found["throughput"])
