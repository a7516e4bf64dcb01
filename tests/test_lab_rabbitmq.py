"""The lab on RabbitMQ: the broker an ``amqp://`` URL gives, the run's shared server, a private one.

The run's RabbitMQ (``rabbitmq_url``) starts once for all xdist workers; each test gets a vhost of its own.
"""

from __future__ import annotations

import lab
from lab.failures import Failure, explain
from lab.processes import lab_env
from lab.urls import BROKER_URL_ENV, URL_ENV, broker_url, redis_beside

import dramatiq
import pika
import pika.exceptions
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend


def test_the_broker_url_wins_over_the_redis_url_and_an_empty_one_counts_as_unset(monkeypatch):
    monkeypatch.setenv(URL_ENV, "redis://localhost:6379/3")
    monkeypatch.setenv(BROKER_URL_ENV, "")
    assert broker_url() == "redis://localhost:6379/3"
    monkeypatch.setenv(BROKER_URL_ENV, "amqp://guest:guest@localhost:5672/%2F")
    assert broker_url() == "amqp://guest:guest@localhost:5672/%2F"
    assert redis_beside(broker_url()) == "redis://localhost:6379/3", "results live in the Redis URL beside"
    monkeypatch.delenv(URL_ENV)
    assert redis_beside(broker_url()) is None


def test_an_amqp_url_gives_a_rabbitmq_broker_with_results_only_when_a_redis_is_beside(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    alone = lab.make_broker("amqp://guest:guest@127.0.0.1:1/%2F")
    monkeypatch.setenv(URL_ENV, "memory://")
    beside = lab.make_broker("amqp://guest:guest@127.0.0.1:1/%2F", max_priority=5)
    redis = lab.make_broker("memory://")

    assert isinstance(alone, RabbitmqBroker) and isinstance(beside, RabbitmqBroker)
    assert isinstance(redis, RedisBroker) and beside.max_priority == 5
    results = {b: next(m.backend for m in b.middleware if isinstance(m, Results)) for b in (alone, beside)}
    assert isinstance(results[beside], RedisResultBackend) and beside.client is results[beside].client
    # Without a Redis beside, what needs one fails when it is used, in one line and exit 2
    with pytest.raises(Failure) as client_used:
        alone.client.get("counter")
    assert client_used.value.exit_code == lab.EXIT_USAGE
    assert "needs a Redis beside RabbitMQ (amqp://***:***@127.0.0.1:1/%2F)" in client_used.value.line
    with pytest.raises(Failure, match="set DRAMATIQ_REDIS_URL=redis://HOST:PORT/0 next to DRAMATIQ_BROKER_URL"):
        results[alone].get_result(dramatiq.Message("q", "a", (), {}, {}))


def test_lab_env_puts_an_amqp_url_in_the_broker_url_and_a_redis_url_in_the_redis_url(monkeypatch):
    monkeypatch.setenv(BROKER_URL_ENV, "amqp://inherited/")
    assert lab_env("redis://h:1/0")[URL_ENV] == "redis://h:1/0"
    assert BROKER_URL_ENV not in lab_env("redis://h:1/0"), "an inherited broker URL would win over it"
    assert lab_env("amqp://h:1/v", **{URL_ENV: "redis://r/0"})[BROKER_URL_ENV] == "amqp://h:1/v"


def test_a_worker_on_the_shared_rabbitmq_runs_what_a_sender_sends(rabbitmq_url):
    broker = lab.use_broker(lab.make_broker(rabbitmq_url))
    ran = []

    @dramatiq.actor(queue_name="lab-rabbitmq-test")
    def note(n: int) -> None:
        ran.append(n)

    for n in range(3):
        note.send(n)
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        assert lab.wait_until(lambda: len(ran) == 3, timeout=15), ran
    finally:
        lab.stop_worker(worker)
        broker.close()
    assert sorted(ran) == [0, 1, 2]


@pytest.mark.parametrize("n", range(3))
def test_each_test_gets_an_empty_vhost_of_its_own(rabbitmq_url, n):
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    declared = channel.queue_declare("lab-isolation", durable=True)
    assert declared.method.message_count == 0, "a message another test left"
    channel.basic_publish("", "lab-isolation", b"left behind")
    connection.close()


def test_the_server_going_away_mid_command_is_unreachable_in_one_line_without_the_password():
    url = "amqp://guest:hunter2-secret@127.0.0.1:5999/%2F"
    lost = explain(ConnectionClosed(pika.exceptions.StreamLostError("Transport indicated EOF")), url)
    forced = explain(pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown"), url)

    assert (lost.exit_code, forced.exit_code) == (lab.EXIT_UNREACHABLE, lab.EXIT_UNREACHABLE)
    assert lost.line.startswith("cannot reach RabbitMQ at amqp://***:***@127.0.0.1:5999/%2F (the connection was lost)")
    assert "hunter2" not in lost.line + forced.line


def test_a_sender_on_a_rabbitmq_that_refuses_its_password_says_so_in_one_line(rabbitmq_server, sender):
    url = f"amqp://guest:hunter2-secret@127.0.0.1:{rabbitmq_server.port}/%2F"
    done = sender("e01_hello_world.py", "1", url=url)
    assert done.returncode == lab.EXIT_AUTH, done
    assert done.stderr.count("\n") == 1 and "refused the user or password" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr + done.stdout
