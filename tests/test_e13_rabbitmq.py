"""Experiment 13's lessons: where RabbitMQ and Redis differ, each measured on both in one run.

The measurements (``scenarios/e13_sides.py``) run once per test run, in a vhost of the run's shared private
rabbitmq-server (conftest's ``rabbitmq_server``) and on the session's redis-server; each test asserts on what
they recorded. The scenario checks the same conditions (the last tests check that it does).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import asdict

import lab
from lab.rabbitmq_share import SharedRabbit, delete_vhost, new_vhost

import dramatiq.brokers.rabbitmq as rabbitmq
import fakeredis
import pytest
from click.testing import CliRunner
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE, RedisBroker

from scenarios import e13_rabbitmq as scenario
from scenarios import e13_sides as sides


@pytest.fixture(scope="session")
def measured(once, rabbitmq_server: SharedRabbit, redis_server: str) -> dict[str, list[sides.Side]]:
    """Every lesson, played once per test run on a vhost of the run's RabbitMQ and on the session's redis-server:
    {lesson: [RabbitMQ side, Redis side]}. Under pytest-xdist the first worker to ask plays it (conftest's once)."""

    def play() -> dict[str, list[dict]]:
        vhost = f"e13-sides-{os.urandom(4).hex()}"
        try:
            found = scenario.measure(new_vhost(rabbitmq_server, vhost), redis_server)
        finally:
            delete_vhost(rabbitmq_server, vhost)
        return {name: [asdict(side) for side in pair] for name, pair in found.items()}

    return {name: [sides.Side(**side) for side in pair] for name, pair in once("e13-sides", play).items()}


def test_a_killed_workers_messages_come_back_at_once_on_rabbitmq_and_after_the_heartbeat_on_redis(measured):
    # Given 5 messages held unacked by a process, on each broker, when it is SIGKILLed
    rabbit, redis = measured["kill"]
    # then nothing is lost on either
    assert (rabbit["sent"], rabbit["lost"], redis["sent"], redis["lost"]) == (5, 0, 5, 0)
    # and RabbitMQ hands them to the live consumer at once, each marked redelivered
    assert rabbit["redelivered"] == [True] * 5
    assert rabbit["recovery_ms"] < 500, rabbit["recovery_ms"]
    # while Redis waits for the dead process's heartbeat to age (1000 ms here, 60 s by default), then maintenance
    assert redis["recovery_ms"] >= 500, redis["recovery_ms"]
    assert redis["redelivered"] == [None] * 5  # a Redis message carries no such flag
    assert (DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE) == (60_000, 1000)


def test_broker_priority_jumps_only_undelivered_messages_so_the_prefetch_decides(measured):
    # Given 6 jobs, a worker with 1 thread busy with the first, and then a greeting with broker_priority=9
    rabbit, redis = measured["priority"]
    # then on RabbitMQ (max_priority=10) it runs next with prefetch 1, after the one already held with the default (2)
    assert (rabbit["prefetch_1"], rabbit["prefetch_default"]) == (2, 3)
    # and on Redis the option means nothing: last, whatever the prefetch
    assert (redis["prefetch_1"], redis["prefetch_default"]) == (7, 7)


def test_a_queue_declared_again_with_another_max_priority_is_refused_with_406(measured):
    rabbit, redis = measured["declare"]
    # Given a queue declared with max_priority 10, when a broker with max_priority 5 declares it again
    assert rabbit["first"] == "ok"
    # then RabbitMQ refuses: its arguments were fixed when it was made
    assert rabbit["again"].startswith("(406, \"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue")
    assert "received '5' but current is '10'" in rabbit["again"]
    # and what works: a new queue name, or deleting the queue first
    assert (rabbit["new_name"], rabbit["after_delete"]) == ("ok", "ok")
    # Redis has no queue arguments: declaring writes nothing, and there is no max_priority to pass
    assert (redis["keys_after_declare"], redis["has_max_priority"]) == (0, False)


def test_rabbitmq_expires_dead_letters_itself_redis_only_in_maintenance(measured):
    rabbit, redis = measured["dead"]
    # Given one dead letter on each, with a dead_message_ttl of 500 ms
    assert (rabbit["ttl_ms"], rabbit["at_once"], redis["at_once"]) == (500, 1, 1)
    # then RabbitMQ's .XQ, a real queue with x-message-ttl, empties itself, no worker involved
    assert rabbit["after_ttl"] == 0 and rabbit["gone_ms"] >= 500
    # while Redis keeps it past its ttl, until maintenance runs for its queue
    assert (redis["after_ttl"], redis["after_maintenance"]) == (1, 0)
    assert rabbitmq.DEAD_MESSAGE_TTL == rabbit["default_ttl_ms"] == 7 * 86_400_000


def test_rabbitmq_join_counts_ready_messages_only_and_waits_a_second(measured):
    rabbit, redis = measured["join"]
    # Given an empty queue: RabbitMQ's join() wants 10 empty counts 100 ms apart, Redis's returns at the first
    assert rabbit["empty_ms"] >= 1000 and redis["empty_ms"] < 500, (rabbit["empty_ms"], redis["empty_ms"])
    # and with one message taken but not acked: RabbitMQ's returns, Redis's waits (here until its 1.5 s timeout)
    assert (rabbit["in_flight"], redis["in_flight"]) == ("returned", "timed out")
    defaults = inspect.signature(RabbitmqBroker.join).parameters
    assert (defaults["min_successes"].default, defaults["idle_time"].default) == (10, 100)


def test_redis_join_counts_messages_in_flight_on_fakeredis_too():
    # The same Lua script on fakeredis: one message taken and not acked keeps join() waiting
    broker = RedisBroker(client=fakeredis.FakeRedis(), namespace="e13-join")
    side = sides.join_side("Redis", broker, "e13-join", patience_ms=300)
    assert side["in_flight"] == "timed out" and side["empty_ms"] < 500


def test_publishing_to_a_deleted_queue_is_lost_without_confirm_delivery(measured):
    rabbit, redis = measured["publish"]
    # Given a sender that declared its queue, and the queue deleted under it, when it sends 5 messages
    assert rabbit["sent"] == 5
    # then without confirm_delivery none arrives, and no error was raised (upstream issue 832)
    assert rabbit["arrived_without_confirm"] == 0
    # with it, the unroutable return makes Dramatiq declare the queue again and publish: all 5 arrive
    assert rabbit["arrived_with_confirm"] == 5
    # Redis makes the queue when a message arrives
    assert redis["arrived_without_confirm"] == 5


def test_a_worker_holds_its_prefetch_on_both_brokers_seen_from_the_broker(measured):
    rabbit, redis = measured["prefetch"]
    # Given a worker with one thread and prefetch 4 on 10 messages, while message 1 runs and then message 2
    assert rabbit["prefetch"] == redis["prefetch"] == 4
    # then each broker sees 4 taken and not done: RabbitMQ keeps that count on the server (basic_qos)
    assert rabbit["ready"] == [6, 5] and rabbit["held"] == [4, 4]
    # Redis has the client fetch up to it, and shows them in the worker's acks set
    assert redis["ready"] == [6, 5] and redis["held"] == redis["in_acks_sets"] == [4, 4]


def test_the_scenario_holds_each_lesson_on_what_the_tests_measured(measured):
    # `python -m lab run e13` checks the same conditions as these tests: on this run's measurements, all hold
    assert {name: scenario.holds(name, *pair) for name, pair in measured.items()} == dict.fromkeys(scenario.LESSONS,
                                                                                                  True)


def test_scenario_skips_every_lesson_without_a_rabbitmq(monkeypatch):
    monkeypatch.delenv("DRAMATIQ_BROKER_URL", raising=False)
    run = lab.Run("e13_rabbitmq", lab.make_broker(lab.MEMORY_URL), lab.Recorder())
    scenario.scenario(run)
    assert [c.held for c in run.checks] == [None] * (len(scenario.SERVER_TESTS) + len(scenario.TESTS)) == [None] * 15
    assert {c.evidence for c in run.checks} == {scenario.NEEDS_RABBITMQ}


@pytest.mark.parametrize(("args", "says"), [
    (["work", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=10000."),
    (["greet", "--priority", "256"], "Invalid value for '--priority': 256 is not in the range 0<=x<=255."),
    (["nosuch"], "No such command 'nosuch'."),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(load, args, says):
    result = CliRunner().invoke(load("e13").main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output

