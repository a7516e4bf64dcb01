"""`python -m lab status`, `purge` and the dashboard on RabbitMQ (lab/rabbit_status.py).

The state is built on the run's shared RabbitMQ (a vhost of this test's own) through Dramatiq's
own code paths: a consumer that fetches and nacks (a dead letter), fetches and holds (in flight),
a delayed message that a consumer of ``.DQ`` holds, and one it does not. The management API's
counts are samples (every 5 s by default), so the test waits for them with a deadline.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator

import lab
from lab.cli import cli
from lab.dashboard import RabbitSource
from lab.rabbit_status import MANAGEMENT_ENV, read_rabbit_snapshot
from lab.rabbitmq import management
from lab.recorder import wait_until

import dramatiq
import pika
import pytest
from click.testing import CliRunner

from conftest import free_port

QUEUE = "t_rabbit_status"


def next_message(consumer) -> dramatiq.MessageProxy:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (message := next(consumer)) is not None:
            return message
    raise AssertionError("no message fetched in 10 s")


@pytest.fixture
def state(rabbitmq_url: str, rabbitmq_server, monkeypatch) -> Iterator[dramatiq.Broker]:
    """On QUEUE: 1 dead letter, 1 in flight, 2 ready, 2 delayed of which a consumer holds 1; 1 consumer."""
    monkeypatch.setenv(MANAGEMENT_ENV, rabbitmq_server.management_url)
    broker = lab.make_broker(rabbitmq_url)
    job = dramatiq.actor(lambda n: None, actor_name="job", queue_name=QUEUE, broker=broker)
    consumer = broker.consume(QUEUE, prefetch=1, timeout=100)
    delayed = broker.consume(f"{QUEUE}.DQ", prefetch=1, timeout=100)
    try:
        job.send(1)
        consumer.nack(next_message(consumer))  # what a worker does when a message fails for good
        job.send(2)
        next_message(consumer)  # fetched, never acked: in flight
        job.send(3)
        job.send(4)
        job.send_with_options(args=(5,), delay=60_000)
        next_message(delayed)  # a worker takes a delayed message at once and holds it until due
        job.send_with_options(args=(6,), delay=60_000)
        yield broker
    finally:
        consumer.close()
        delayed.close()
        broker.close()


def counts(snapshot) -> dict:
    q = next(q for q in snapshot.queues if q.name == QUEUE)
    return {"ready": q.ready, "delayed": q.delayed, "in_flight": q.in_flight, "dead": q.dead, "consumers": q.consumers}


def test_status_on_rabbitmq_counts_ready_delayed_in_flight_dead_and_consumers_through_the_management_api(
        state, rabbitmq_url, monkeypatch):
    # Given a queue with a message in every state, when status asks the management API
    expected = {"ready": 2, "delayed": 2, "in_flight": 1, "dead": 1, "consumers": 1}
    seen: list[dict] = []
    assert wait_until(lambda: seen.append(counts(read_rabbit_snapshot(state))) or seen[-1] == expected,
                      timeout=25, interval=0.5), f"the management API's counts never became {expected}: {seen[-1]}"
    snapshot = read_rabbit_snapshot(state)
    assert snapshot.via.startswith("management API at http://***:***@127.0.0.1:"), snapshot.via

    # Then `status --json` prints them, with the consumers and no heartbeats
    printed = CliRunner().invoke(cli, ["status", "--broker", rabbitmq_url, "--json"])
    assert printed.exit_code == 0, printed.output
    said = json.loads(printed.stdout)
    row = next(q for q in said["queues"] if q["name"] == QUEUE)
    assert {k: row[k] for k in expected} == expected
    assert said["broker"] == "rabbitmq" and said["heartbeats"] == [] and said["workers_alive"] is None
    assert said["consumers"] >= 1 and "guest" not in said["url"]
    assert any(q["name"] == "e02" for q in said["queues"]), "the experiments' queues are listed, even empty"

    # And `status --watch --json` prints one snapshot a refresh
    watched = CliRunner().invoke(cli, ["status", "--broker", rabbitmq_url, "--watch", "--json", "--count", "2",
                                       "--interval", "0.2"])
    assert watched.exit_code == 0, watched.output
    assert [json.loads(line)["broker"] for line in watched.stdout.splitlines()] == ["rabbitmq", "rabbitmq"]

    # And the text output names the columns and how it read them
    text = " ".join(CliRunner().invoke(cli, ["status", "--broker", rabbitmq_url]).stdout.split())
    assert "consumers" in text and "management API" in text and "no heartbeats" in text

    # When the management API does not answer, then AMQP alone counts ready, not-held delayed, dead and
    # consumers, and says it cannot count in flight
    monkeypatch.setenv(MANAGEMENT_ENV, f"http://guest:guest@127.0.0.1:{free_port()}")
    alone = read_rabbit_snapshot(state)
    assert counts(alone) == {"ready": 2, "delayed": 1, "in_flight": None, "dead": 1, "consumers": 1}
    assert alone.via.startswith("AMQP only (no management API answered at http://***:***@127.0.0.1:"), alone.via
    text = " ".join(CliRunner().invoke(cli, ["status", "--broker", rabbitmq_url]).stdout.split())
    assert "AMQP only" in text and "in flight unknown" in text

    # And purge removes the ready and not-held delayed messages, leaving the dead letter and what consumers hold
    purged = CliRunner().invoke(cli, ["purge", QUEUE, "--broker", rabbitmq_url, "--yes"])
    assert purged.exit_code == 0, purged.output
    assert "Removed 3 message(s) from t_rabbit_status: 2 ready, 1 delayed." in purged.stdout
    assert counts(read_rabbit_snapshot(state)) == {"ready": 0, "delayed": 0, "in_flight": None, "dead": 1,
                                                   "consumers": 1}

    # And the dashboard's source shows the same snapshot, purges, and refuses a requeue with a LookupError (404)
    source = RabbitSource(state, 10)
    assert next(q for q in source.snapshot()["queues"] if q["name"] == QUEUE)["dead"] == 1
    with pytest.raises(LookupError, match="cannot requeue"):
        source.requeue(QUEUE, "some-id")
    assert source.purge(QUEUE) == f"Removed 0 message(s) from {QUEUE}: 0 ready, 0 delayed."


# -- python -m lab rabbitmq --------------------------------------------------------------------


def test_the_run_s_rabbitmq_is_python_m_lab_rabbitmq_as_a_learner_starts_it(rabbitmq_server):
    # Given the run's shared RabbitMQ: `python -m lab rabbitmq`, started by the first test that needed it
    # (lab/rabbitmq_share.py; conftest presses Ctrl-C at the run's end and fails the run unless it stops with
    # exit code 0, "Stopped; its data is gone." and no process left)
    port, management_port = rabbitmq_server.port, rabbitmq_server.management_port
    # then it printed its URL, how long it took, its management API, and the two lines to paste
    assert rabbitmq_server.said.splitlines() == [
        f"RabbitMQ amqp://guest:guest@127.0.0.1:{port}/%2F ready in {rabbitmq_server.ready_seconds:.1f} s; "
        f"management API on http://127.0.0.1:{management_port} (guest/guest). Ctrl-C stops it; its data is gone "
        "then.",
        f"export DRAMATIQ_BROKER_URL=amqp://guest:guest@127.0.0.1:{port}/%2F",
        f"export LAB_RABBITMQ_MANAGEMENT_URL=http://guest:guest@127.0.0.1:{management_port}",
    ]
    # and both answer: the management API names the server, AMQP takes a connection
    assert re.fullmatch(r"\d+\.\d+\.\d+", management(rabbitmq_server.management_url, "GET", "/api/overview")[
        "rabbitmq_version"])
    pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url_for("/"))).close()


def test_lab_rabbitmq_refuses_a_port_in_use_and_a_missing_server_in_one_line(monkeypatch):
    # Given a port something listens on already, when `python -m lab rabbitmq --port` asks for it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["rabbitmq", "--port", str(port)])
    # then it starts nothing: one line, exit 4
    assert result.exit_code == 4, result.output
    assert result.stderr == (f"cli: port {port} on 127.0.0.1 is in use by another program; "
                             "pick another with --port N (0: any free one)\n")
    # and without rabbitmq-server installed: how to get it, exit 3
    monkeypatch.setattr("lab.processes.RABBITMQ_SERVER", "/nonexistent/rabbitmq-server")
    result = CliRunner().invoke(cli, ["rabbitmq"])
    assert result.exit_code == 3, result.output
    assert result.stderr == ("cli: rabbitmq-server is not installed: apt-get install rabbitmq-server "
                             "(the system service need not run)\n")
