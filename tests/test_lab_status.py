"""`python -m lab status` and `purge`: what Dramatiq keeps in Redis, read from its keys.

status and purge take a URL, and CliRunner runs them in this process, so
they cannot look into the ``broker`` fixture's in-process fakeredis
(``memory://``, which status refuses). The tests that go through the
command line therefore run on the two servers a learner would point them
at: the embedded server that ``python -m lab serve`` runs (fakeredis over
TCP, here in a thread of this process) and the real redis-server fixture.
The state is built through Dramatiq's own code paths (send, a consumer's
fetch and nack), never by writing keys by hand.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import lab
from lab.cli import cli
from lab.failures import how_to_get_redis
from lab.status import read_snapshot

import dramatiq
import pytest
import redis
from click.testing import CliRunner, Result

from conftest import free_port

QUEUE = "t_status"


def next_message(consumer) -> dramatiq.MessageProxy:
    """Fetch the next message the way a worker does (the consumer returns None while it backs off)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (message := next(consumer)) is not None:
            return message
    raise AssertionError("no message fetched in 5 s")


class State:
    """A queue with one message in each state, built by a broker that plays worker and sender."""

    def __init__(self, url: str) -> None:
        self.broker = lab.make_broker(url)
        self.job = dramatiq.actor(lambda n: None, actor_name="job", queue_name=QUEUE, broker=self.broker)
        self.consumer = self.broker.consume(QUEUE, prefetch=1, timeout=20)
        self.job.send(1)
        self.dead = next_message(self.consumer)
        self.consumer.nack(self.dead)  # what a worker does when a message fails for good
        self.job.send(2)
        self.in_flight = next_message(self.consumer)  # fetched, never acked
        self.job.send(3)  # ready
        self.job.send_with_options(args=(4,), delay=60_000)  # delayed


@pytest.fixture
def state(server_url: str) -> Iterator[State]:
    state = State(server_url)
    yield state
    state.consumer.close()
    state.broker.close()


def lab_cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, prog_name="python -m lab")


def status_json(url: str) -> dict:
    result = lab_cli("status", "--redis", url, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def counts(report: dict, queue: str = QUEUE) -> dict:
    return next({k: v for k, v in q.items() if k not in ("name", "held_delayed")}
                for q in report["queues"] if q["name"] == queue)


# -- status -------------------------------------------------------------------------------


def test_status_counts_ready_delayed_in_flight_and_dead_per_queue(state, server_url):
    assert counts(status_json(server_url)) == {"ready": 1, "delayed": 1, "in_flight": 1, "dead": 1}


def test_in_flight_is_the_sum_of_every_acks_set_and_held_delayed_are_apart(server_url):
    # Given two workers (two broker ids) that each fetched one message of the queue, and a
    # third that holds a delayed message in memory (its __acks__.<id>.<q>.DQ set)
    brokers = [lab.make_broker(server_url) for _ in range(3)]
    jobs = [dramatiq.actor(lambda: None, actor_name="job", queue_name=QUEUE, broker=b) for b in brokers]
    for _ in range(3):
        jobs[0].send()
    jobs[0].send_with_options(delay=60_000)
    consumers = [brokers[0].consume(QUEUE, prefetch=1, timeout=20), brokers[1].consume(QUEUE, prefetch=1, timeout=20),
                 brokers[2].consume(f"{QUEUE}.DQ", prefetch=1, timeout=20)]
    try:
        for consumer in consumers:
            next_message(consumer)
        # then in flight counts both workers' sets, and the held delayed message stays delayed
        [queue] = [q for q in status_json(server_url)["queues"] if q["name"] == QUEUE]
        assert queue == {"name": QUEUE, "ready": 1, "delayed": 1, "in_flight": 2, "dead": 0, "held_delayed": 1}
    finally:
        for consumer, broker in zip(consumers, brokers, strict=True):
            consumer.close()
            broker.close()


def test_status_lists_the_experiments_queues_even_without_keys(state, server_url):
    queues = {q["name"]: q for q in status_json(server_url)["queues"]}
    assert {"e01", "e02", QUEUE} <= set(queues)
    assert queues["e01"] == {"name": "e01", "ready": 0, "delayed": 0, "in_flight": 0, "dead": 0, "held_delayed": 0}


def test_status_counts_a_worker_alive_from_its_heartbeat_and_not_a_stale_one(state, server_url):
    stale_ms = int(time.time() * 1000) - state.broker.heartbeat_timeout - 1000
    state.broker.client.zadd("dramatiq:__heartbeats__", {"gone-worker": stale_ms})
    report = status_json(server_url)
    alive = {h["broker_id"]: h["holding"] for h in report["heartbeats"] if h["alive"]}
    assert alive == {state.broker.broker_id: 1} and report["workers_alive"] == 1
    assert "gone-worker" in {h["broker_id"] for h in report["heartbeats"] if not h["alive"]}


def test_a_heartbeat_counts_as_alive_for_60_seconds_by_default(server_url):
    # Given three processes last seen 30, 59 and 61 s ago
    now_ms = int(time.time() * 1000)
    client = redis.Redis.from_url(server_url)
    client.zadd("dramatiq:__heartbeats__", {"seen-30s-ago": now_ms - 30_000, "seen-59s-ago": now_ms - 59_000,
                                            "seen-61s-ago": now_ms - 61_000})
    client.close()
    report = status_json(server_url)
    # then the two within the default heartbeat_timeout (60 s) are alive, the third is not
    assert report["heartbeat_timeout_ms"] == 60_000
    assert {h["broker_id"]: h["alive"] for h in report["heartbeats"]} == {
        "seen-30s-ago": True, "seen-59s-ago": True, "seen-61s-ago": False}


def test_a_sender_shows_up_in_the_heartbeats_too(server_url):
    sender = lab.make_broker(server_url)
    dramatiq.actor(lambda: None, actor_name="job", queue_name=QUEUE, broker=sender).send()
    alive = [h["broker_id"] for h in status_json(server_url)["heartbeats"] if h["alive"]]
    assert alive == [sender.broker_id]
    sender.close()


def test_status_writes_no_heartbeat_of_its_own(server_url):
    status_json(server_url)
    assert status_json(server_url)["heartbeats"] == []


def test_status_shows_the_newest_dead_letter_with_actor_args_and_when(state, server_url):
    [letter] = status_json(server_url)["dead_letters"]
    assert (letter["queue"], letter["actor"], letter["args"]) == (QUEUE, "job", [1])
    assert letter["message_id"] == state.dead.message_id
    assert abs(letter["dead_at_ms"] - time.time() * 1000) < 60_000


def test_status_prints_queues_workers_and_dead_letters_for_humans(state, server_url):
    result = lab_cli("status", "--redis", server_url)
    assert result.exit_code == 0, result.output
    assert re.search(rf"{QUEUE}\s+1\s+1\s+1\s+1", result.output)  # ready, delayed, in flight, dead
    assert "Alive: 1" in result.output and state.broker.broker_id in result.output
    assert "Senders show up here too" in result.output and "job" in result.output


def test_status_watch_json_prints_one_snapshot_per_refresh(server_url):
    result = lab_cli("status", "--redis", server_url, "--watch", "--json", "--count", "2",
                     "--interval", "0.2")
    assert result.exit_code == 0, result.output
    first, second = map(json.loads, result.output.splitlines())
    assert second["taken_at_ms"] - first["taken_at_ms"] >= 200


def test_status_watch_refreshes_a_live_view_count_times(server_url):
    result = lab_cli("status", "--redis", server_url, "--watch", "--count", "2", "--interval", "0.2")
    assert result.exit_code == 0, result.output
    assert "refresh 2, every 0.2 s" in result.output


def test_a_dead_letter_keeps_the_error_of_the_try_before_its_last(broker, start_worker):
    # Retries stores the traceback in the copy it re-enqueues; the last try's error is never stored.
    @dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=10)
    def flaky() -> None:
        tries = dramatiq.middleware.CurrentMessage.get_current_message().options.get("retries", 0) + 1
        raise ValueError(f"try {tries} failed")

    @dramatiq.actor(queue_name=QUEUE, throws=(ValueError,))
    def aborted() -> None:
        raise ValueError("expected")

    flaky.send()
    aborted.send()
    start_worker(threads=1)
    assert lab.wait_until(lambda: len(lab.dead_letters(broker, QUEUE)) == 2, timeout=5)
    why = {d.actor: (d.tries, d.why) for d in read_snapshot(broker).dead_letters}
    assert why["flaky"] == (2, "ValueError: try 1 failed")
    assert why["aborted"] == (1, "no traceback stored (never retried: throws= or max_retries=0)")


# -- purge --------------------------------------------------------------------------------


def test_purge_removes_ready_and_delayed_and_keeps_dead_letters_and_in_flight(state, server_url):
    result = lab_cli("purge", QUEUE, "--redis", server_url, "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Removed 2 message(s) from {QUEUE}: 1 ready, 1 delayed. "
                                    "1 dead letter(s) kept")
    assert counts(status_json(server_url)) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 1}
    # its worker can still finish the in-flight message, even dead-letter it: its stored copy was kept
    state.consumer.nack(state.in_flight)
    assert counts(status_json(server_url)) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 2}


def test_purge_is_one_transaction_that_starts_again_when_the_queue_changes_meanwhile(state, server_url, monkeypatch):
    # Given a sender that enqueues one more message just after purge has read the queue
    multi, sent = redis.client.Pipeline.multi, []

    def send_then_multi(pipe: redis.client.Pipeline) -> None:
        if not sent:
            sent.append(state.job.send(5))
        multi(pipe)

    monkeypatch.setattr(redis.client.Pipeline, "multi", send_then_multi)
    # when the queue is purged
    result = lab_cli("purge", QUEUE, "--redis", server_url, "--yes")
    # then WATCH saw the change, EXEC refused, and purge read the queue again: it removed the new message too
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Removed 3 message(s) from {QUEUE}: 2 ready, 1 delayed.")
    assert counts(status_json(server_url)) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 1}
    assert state.broker.client.hlen(f"dramatiq:{QUEUE}.msgs") == 1  # only the in-flight message's copy is left


def test_purge_with_dead_letters_removes_them_too(state, server_url):
    result = lab_cli("purge", QUEUE, "--dead-letters", "--redis", server_url, "--yes")
    assert result.exit_code == 0, result.output
    assert "Removed 3 message(s)" in result.output
    assert counts(status_json(server_url)) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}


def test_purge_says_when_a_worker_already_holds_a_delayed_message_which_still_runs(server_url):
    # Given a worker that has taken a delayed message (due in 2 s: purge, which imports every experiment,
    # took over 500 ms on a loaded machine, and the message had run and gone) into memory
    broker = lab.make_broker(server_url)
    recorder = lab.Recorder.install(broker)
    job = dramatiq.actor(lambda: None, actor_name="job", queue_name=QUEUE, broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        job.send_with_options(delay=2000)
        assert lab.wait_until(lambda: broker.client.llen(f"dramatiq:{QUEUE}.DQ") == 0, timeout=5)
        # when the queue is purged
        result = lab_cli("purge", QUEUE, "--redis", server_url, "--yes")
        # then purge counts it as removed, says a worker still holds it, and the worker still runs it
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Removed 1 message(s) from {QUEUE}: 0 ready, 1 delayed. 1 of the "
                                        "delayed were already held in memory by a worker, which will still run")
        assert lab.wait_until(lambda: [a.outcome for a in recorder.attempts] == ["ok"], timeout=10)
    finally:
        lab.stop_worker(worker)
        broker.close()


def test_purge_asks_first_and_no_removes_nothing(state, server_url):
    result = lab_cli("purge", QUEUE, "--redis", server_url, input="n\n")
    assert result.exit_code == 1
    assert f"Remove 1 ready, 1 delayed from {QUEUE} on {server_url}? [y/N]" in result.output
    assert counts(status_json(server_url)) == {"ready": 1, "delayed": 1, "in_flight": 1, "dead": 1}


def test_purge_an_unknown_queue_is_a_usage_error_naming_the_known_ones(server_url):
    result = lab_cli("purge", "nope", "--redis", server_url, "--yes")
    assert result.exit_code == 2
    assert "Invalid value for QUEUE: no queue 'nope'" in result.output and "known: e01, e02" in result.output


# -- bad input, for both commands ------------------------------------------------------------

COMMANDS = [pytest.param(["status"], id="status"), pytest.param(["purge", "e01", "--yes"], id="purge")]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_url_that_is_not_redis_is_a_usage_error(command):
    result = lab_cli(*command, "--redis", "http://localhost:6379")
    assert result.exit_code == 2
    assert result.output == ("python -m lab: 'http://localhost:6379' is not a valid Redis URL (DRAMATIQ_REDIS_URL "
                             "or --redis): it must start with redis://, rediss://, unix://, amqp:// or amqps:// (or be memory://)\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_memory_url_is_refused_because_it_lives_in_one_process(command):
    result = lab_cli(*command, "--redis", "memory://")
    assert result.exit_code == 2
    assert "memory:// lives inside one process" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_redis_gets_one_line_and_exit_3(command):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = lab_cli(*command, "--redis", url)
    assert result.exit_code == 3
    assert result.output == f"python -m lab: {how_to_get_redis(url)}\n"


def test_status_defaults_to_dramatiq_redis_url(monkeypatch, server_url):
    monkeypatch.setenv(lab.URL_ENV, server_url)
    result = lab_cli("status", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["url"] == server_url
