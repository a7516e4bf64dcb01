"""Experiment 13's lessons on private servers: RabbitMQ's consumer_timeout, and a broker restart.

One fixture plays ``scenarios/e13_rabbitmq_servers.server_lessons()`` once: a private rabbitmq-server with
``consumer_timeout`` of 300 ms (restarted with 60 s, 20 messages waiting) and two redis-servers, all on free
ports and stopped by pid; once it has restarted, the tiny throughput bench on it and on the session's
redis-server. The tests read what they observed. Without the servers they skip; in CI they fail.
"""

from __future__ import annotations

import lab

import pytest

from conftest import need_rabbitmq_server
from scenarios import e13_rabbitmq as scenario
from scenarios import e13_rabbitmq_servers as servers


@pytest.fixture(scope="session")
def observed(once, redis_server: str) -> dict:
    """What the servers showed, played once per test run (conftest's once: under pytest-xdist the first worker
    to ask plays it, the others read what it saved); the drains' Redis is the session's redis-server."""
    need_rabbitmq_server()
    return once("e13-servers", lambda: servers.server_lessons(redis_url=redis_server))


@pytest.fixture(scope="module")
def too_long(observed: dict) -> dict:
    return observed["consumer_timeout"]["too_long"]


@pytest.fixture(scope="module")
def raised(observed: dict) -> dict:
    return observed["consumer_timeout"]["raised"]


def test_a_task_longer_than_consumer_timeout_is_delivered_again_and_runs_twice(too_long: dict) -> None:
    # given a RabbitMQ with consumer_timeout 300 ms, and a task of 1000 ms
    # when the worker runs it
    runs = too_long["runs"]  # for each start: did RabbitMQ say it was a redelivery?
    # then the server closed the channel, delivered the message again, and it ran a second time
    assert len(runs) >= 2 and runs[0] is False and runs[1] is True, f"runs (redelivered?): {runs}"
    # and the first run's ack went to a closed channel: lost
    assert too_long["failed_acks"] >= 1, "no 'Failed to ack message' warning"


def test_the_x_consumer_timeout_queue_argument_is_ignored_by_rabbitmq_3_10(too_long: dict) -> None:
    # given the same task on a queue declared with x-consumer-timeout of 60 s (honoured from RabbitMQ 3.12)
    runs = too_long["arg_runs"]
    # then RabbitMQ 3.10.8 still applied the server's 300 ms: the task ran twice there too
    assert len(runs) >= 2 and runs[1] is True, f"runs with x-consumer-timeout (redelivered?): {runs}"


def test_consumer_timeout_raised_on_the_server_lets_the_long_task_run_once(raised: dict) -> None:
    # given the same server restarted with consumer_timeout 60 s
    # when the worker runs the same 1000 ms task
    # then it ran once, was never redelivered, and its ack went through
    assert raised["runs"] == [False], f"runs (redelivered?): {raised['runs']}"
    assert raised["failed_acks"] == 0
    assert raised["acked"] == 3, "the long task, the delayed message's .DQ copy and its run: 3 acks"


def test_a_delayed_message_held_past_consumer_timeout_goes_back_to_its_dq_at_each_timeout(too_long: dict,
                                                                                          raised: dict) -> None:
    # given a message delayed 900 ms, held unacked by the worker's .DQ consumer until its eta
    holds, runs = too_long["delayed_holds"], too_long["delayed_runs"]
    # then with consumer_timeout 300 ms the server took it back and delivered it again, at least once
    assert len(holds) >= 2 and holds[0] is False and all(holds[1:]), f"taken from the .DQ (redelivered?): {holds}"
    # and then it ran once: the worker forgot the copies it held when its consumer restarted
    assert runs == [False], f"runs of the delayed message (redelivered?): {runs}"
    # while with the timeout raised, it was taken from the .DQ once, and ran once
    assert raised["delayed_holds"] == [False] and raised["delayed_runs"] == [False], raised


def test_a_quick_task_prefetched_behind_a_long_one_times_out_too_and_runs_twice(too_long: dict) -> None:
    # given a worker with one thread, a 600 ms task, and a quick task it prefetched behind it
    runs = too_long["quick_runs"]
    # then the quick one waited unacked in the worker past the 300 ms timeout, came back, and ran (at least) twice
    assert len(runs) >= 2 and runs[0] is False and True in runs, f"runs of the quick task (redelivered?): {runs}"


def test_durable_queues_and_persistent_messages_survive_a_rabbitmq_restart(observed: dict) -> None:
    # given 20 messages waiting in a Dramatiq queue on RabbitMQ
    rabbit = observed["restart"]["rows"][0]
    # when the server restarts, then all 20 are still there
    assert (rabbit["broker"], rabbit["before"], rabbit["survived"]) == ("RabbitMQ", 20, 20)


def test_redis_keeps_its_queues_across_a_restart_only_with_appendonly(observed: dict) -> None:
    # given 20 messages waiting on a redis-server without persistence, and on one with appendonly
    plain, aof = observed["restart"]["rows"][1:]
    # when each restarts, then the first lost them all and the second kept them all
    assert (plain["before"], plain["survived"]) == (20, 0), plain
    assert (aof["before"], aof["survived"]) == (20, 20), aof


def test_a_tiny_drain_ran_every_message_once_on_both_brokers_beside_their_limits(observed: dict) -> None:
    # given 60 messages published before the drain, on RabbitMQ and on Redis, for the workers and for the limit
    report = observed["throughput"]
    # when real `dramatiq` workers drain them, and pika (or Dramatiq's Redis consumer) drains as many with no actor
    brokers = [row["broker"] for row in report["rows"]]
    # then each message ran exactly once, on each broker, in each drain; no speed is asserted
    assert brokers == ["RabbitMQ", "Redis"] and report["ok"], report["problems"]
    assert all(row["of_limit"]["median"] > 0 for row in report["rows"]), report["rows"]


def test_the_scenario_holds_each_of_these_lessons_on_what_the_tests_observed(observed: dict) -> None:
    # `python -m lab run e13` checks the same conditions as the tests above: on this run's observations, all hold
    run = lab.Run("e13_rabbitmq", lab.make_broker(lab.MEMORY_URL), lab.Recorder())
    scenario.check_servers(run, observed, observed["throughput"])
    assert [(c.test, c.held) for c in run.checks] == [(test, True) for test in scenario.SERVER_TESTS]
    assert [table.title.split(".")[0] for table in run.tables] == ["4", "9", "10"]
