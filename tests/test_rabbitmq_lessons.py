"""The lessons of e01-e12 that do not depend on the broker, on RabbitMQ too.

Each test loads an experiment on a RabbitmqBroker (a new vhost of the run's shared RabbitMQ,
the ``rabbitmq_url`` fixture), with a Redis beside it where the experiment keeps results or
switches (e04, e12) or its limiters and counts (e09) there, and runs its actors on an in-process
worker, as the experiments' own tests do on Redis; e07's schedulers run on the scenario's fake
clock. A few need no server: what a command says when RabbitMQ, or the Redis beside it, is
missing. Where a lesson reads a queue, it reads RabbitMQ's: a passive
``queue.declare`` (exact, not the management API's samples). No ``broker.join``: on RabbitMQ it
waits for 10 empty checks 100 ms apart (Experiment 13), so the tests wait on what the
recorder saw, with deadlines.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from types import ModuleType
from urllib.parse import urlsplit

import lab
from lab import experiments
from lab.processes import free_port
from lab.rabbit_status import amqp_counts
from lab.urls import BROKER_URL_ENV, URL_ENV

import dramatiq
import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import GroupCallbacks

UNLUCKY = 17
UTC = timezone.utc


class Lab:
    """This test's RabbitMQ broker, its recorder, experiments loaded on it, and its in-process workers."""

    def __init__(self, url: str) -> None:
        self.broker = lab.use_broker(lab.make_broker(url))
        self.recorder = lab.Recorder.install(self.broker)
        self.workers: list[dramatiq.Worker] = []

    def load(self, key: str) -> ModuleType:
        return experiments.load(experiments.find(key))  # its actors bind to this broker

    def start_worker(self, threads: int = 2) -> dramatiq.Worker:
        worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        self.workers.append(worker)
        return worker

    def ready(self, *queues: str) -> list[int | None]:
        """Each queue's ready messages, exactly, now (None: no such queue)."""
        found = amqp_counts(self.broker, list(queues))
        return [found[q]["messages_ready"] if q in found else None for q in queues]

    def dead_ids(self, queue: str) -> list[str]:
        """The message ids in ``queue``'s dead letters (``<queue>.XQ``): taken, read, and given back."""
        return [letter.message.message_id for letter in lab.dead_letters(self.broker, queue)]

    def outcomes(self, actor: str) -> list[str]:
        return [a.outcome for a in self.recorder.attempts_of(actor)]

    def stop_workers(self) -> None:
        while self.workers:
            lab.stop_worker(self.workers.pop())

    def close(self) -> None:
        self.stop_workers()
        self.broker.close()


@pytest.fixture
def rabbit(rabbitmq_url: str, monkeypatch) -> Iterator[Callable[..., Lab]]:
    """``rabbit()``: the lab on this test's vhost; ``rabbit(redis_beside=URL)``: with results in that Redis."""
    made: list[Lab] = []

    def make(redis_beside: str | None = None) -> Lab:
        monkeypatch.setenv(BROKER_URL_ENV, rabbitmq_url)
        if redis_beside:
            monkeypatch.setenv(URL_ENV, redis_beside)
        else:
            monkeypatch.delenv(URL_ENV, raising=False)
        made.append(Lab(rabbitmq_url))
        assert isinstance(made[-1].broker, RabbitmqBroker)
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_e01_a_worker_thread_runs_what_send_enqueued_on_rabbitmq(rabbit):
    # Given e01 on RabbitMQ, a message sent before any worker runs
    lab_ = rabbit()
    e01 = lab_.load("e01")
    message = e01.count_to.send(2)
    # then it waits in its queue on the server, and the actor is still a plain function
    assert [e.message_id for e in lab_.recorder.enqueues] == [message.message_id]
    assert lab_.ready("e01") == [1]
    assert e01.count_to(1) is None and len(lab_.recorder.attempts) == 0
    # when a worker starts, then one of its threads runs it, once
    lab_.start_worker()
    assert lab.wait_until(lambda: lab_.outcomes("count_to") == ["ok"], timeout=10), lab_.recorder.attempts
    assert lab_.recorder.attempts[0].thread != "MainThread" and lab_.ready("e01") == [0]


def test_e02_retries_back_off_then_the_message_is_dead_lettered_on_rabbitmq(rabbit):
    # Given e02's actor that always fails, with 3 retries from 50 ms, and one that handles its error
    lab_ = rabbit()
    e02 = lab_.load("e02")
    failing = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=3, min_backoff=50, max_backoff=10_000)
    e02.handled.send(UNLUCKY)
    lab_.start_worker()
    assert lab.wait_until(lambda: lab_.outcomes("unhandled")[-1:] == ["failed"]
                          and lab_.outcomes("retries_exhausted") == ["ok"], timeout=15), lab_.recorder.attempts
    # then it ran 4 times, retry k waiting 50·2^k to twice that, each retry through e02.DQ
    assert lab_.outcomes("unhandled") == ["retried", "retried", "retried", "failed"]
    retries = [e for e in lab_.recorder.enqueues_of("unhandled") if e.delay_ms is not None]
    assert [e.queue for e in retries] == ["e02.DQ"] * 3
    for k, retry in enumerate(retries):
        assert 50 * 2**k <= retry.delay_ms < 2 * 50 * 2**k, (k, retry.delay_ms)
    # (each retry's eta counts from inside enqueue, after the attempt before it started, and before the
    # recorder sees the publish end: on RabbitMQ a publish is a round trip, so measure from that start)
    attempts = lab_.recorder.attempts_of("unhandled")
    for retry, before, attempt in zip(retries, attempts[:-1], attempts[1:], strict=True):
        assert attempt.started - before.started >= retry.delay_ms / 1000 - 0.002, (retry, before, attempt)
    # and it is in the dead letters (e02.XQ, a queue on RabbitMQ), the callback ran, the handled one ran once
    assert lab_.dead_ids("e02") == [failing.message_id]
    assert lab_.outcomes("handled") == ["ok"]


def test_e03_a_delay_waits_in_the_delay_queue_and_is_a_minimum_on_rabbitmq(rabbit):
    # Given e03's messages due 100 to 300 ms from now, before any worker runs
    lab_ = rabbit()
    e03 = lab_.load("e03")
    sent = e03.send_batch(3, 300)
    # then they wait in e03.DQ, not e03, with an eta in milliseconds
    assert {m.queue_name for m in sent} == {"e03.DQ"}
    assert lab_.ready("e03", "e03.DQ") == [0, 3]
    # when a worker runs them, then none started before its eta
    lab_.start_worker()
    assert lab.wait_until(lambda: lab_.outcomes("wake_up") == ["ok"] * 3, timeout=10), lab_.recorder.attempts
    started = {a.message_id: a.started_ms for a in lab_.recorder.attempts}
    assert [m.message_id for m in sent if started[m.message_id] < m.options["eta"]] == []


def test_e04_a_pipeline_passes_each_result_on_with_results_in_the_redis_beside(rabbit, real_redis_url):
    # Given e04 on RabbitMQ with its results in a Redis beside it
    lab_ = rabbit(redis_beside=real_redis_url)
    e04 = lab_.load("e04")
    lab_.start_worker()
    # when add(3, 1) | double() | power(2) runs
    pipe = (e04.add.message(3, 1) | e04.double.message() | e04.power.message(2)).run()
    # then each step got the previous result as its last argument, and the pipeline's result is the last one's
    assert pipe.get_result(block=True, timeout=10_000) == 256
    assert list(pipe.get_results()) == [4, 8, 256]
    assert [a.args for a in lab_.recorder.attempts_of("double")] == [(4,)]
    assert [a.args for a in lab_.recorder.attempts_of("power")] == [(2, 8)]
    # and a group's results come back in the order of its members
    group = dramatiq.group([e04.square.message(n) for n in (3, 1, 2)]).run()
    assert list(group.get_results(block=True, timeout=10_000)) == [9, 1, 4]


def test_e07_every_scheduler_sends_every_run_and_a_worker_runs_each_message_once_on_rabbitmq(rabbit):
    # Given two of e07's schedulers on RabbitMQ (two scheduler processes, or one per worker process), on a fake clock
    lab_ = rabbit()
    e07 = lab_.load("e07")
    steps = importlib.import_module("scenarios.e07_scheduling")  # FakeClock, SteppedScheduler: no real minute
    ready, events = [], []
    with steps.FakeClock(datetime(2025, 1, 6, 8, 59, 30, tzinfo=UTC)) as clock, \
            contextlib.redirect_stdout(io.StringIO()):  # enqueue() prints a line per message it sends
        schedulers = [steps.stepped(e07.cron_trigger("* * * * *")) for _ in range(2)]
        try:
            # when the clock passes three fire times, 09:00, 09:01, 09:02
            for minute in range(3):
                clock.set(2025, 1, 6, 9, minute)
                for scheduler in schedulers:
                    events += scheduler.step()
                # a publish reaches the queue a moment after basic_publish returns: wait for it, then count
                lab.wait_until(lambda n=2 * (minute + 1): lab_.ready("e07") == [n], timeout=5)
                ready.append(lab_.ready("e07")[0])
        finally:
            for scheduler in schedulers:
                scheduler.shutdown()
    # then every fire time put two messages in RabbitMQ's e07 queue, and each job run only enqueued, without error
    assert ready == [2, 4, 6]
    assert (steps.count(events, EVENT_JOB_EXECUTED), steps.count(events, EVENT_JOB_ERROR)) == (6, 0)
    # when a worker runs them, then it ran each message once, so each fire time twice, and nothing is left
    lab_.start_worker()
    assert lab.wait_until(lambda: lab_.outcomes("report") == ["ok"] * 6, timeout=10), lab_.recorder.attempts
    lab_.stop_workers()
    sent = [e.message_id for e in lab_.recorder.enqueues_of("report")]
    assert Counter(a.message_id for a in lab_.recorder.attempts_of("report")) == dict.fromkeys(sent, 1)
    assert lab_.ready("e07", "e07.DQ") == [0, 0]


def test_e07_the_scheduler_checks_rabbitmq_when_it_starts_and_a_run_it_cannot_send_is_one_line(monkeypatch, capsys):
    # Given e07 on a RabbitMQ URL where nothing listens, and no Redis beside it (its report needs none)
    monkeypatch.setenv(BROKER_URL_ENV, f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setattr(lab.broker, "_broker", None)  # as in a new process
    monkeypatch.setattr(lab.urls, "_in_use", None)
    e07 = experiments.load(experiments.find("e07"))
    # when the scheduler starts, then it checks RabbitMQ, not a Redis: one line and exit 3
    with pytest.raises(SystemExit) as exit_:
        e07.main(["scheduler"], prog_name="e07_scheduling.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 3 and err.count("\n") == 1 and "cannot reach RabbitMQ at amqp://***:***@" in err, err
    # and a fire time whose message cannot be sent is one line, and lost: the scheduler's job does not fail
    steps = importlib.import_module("scenarios.e07_scheduling")
    with steps.FakeClock(datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)) as clock:
        scheduler = steps.stepped(e07.cron_trigger("* * * * *"))
        clock.set(2025, 1, 6, 9, 1)
        events = scheduler.step()
        scheduler.shutdown()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and " not sent: report: ConnectionClosed: " in lines[0], lines
    assert (steps.count(events, EVENT_JOB_EXECUTED), steps.count(events, EVENT_JOB_ERROR)) == (1, 0)
    e07.broker.close()


def test_e08_a_message_past_its_max_age_is_skipped_into_the_dead_letters_on_rabbitmq(rabbit):
    # Given a message due in 200 ms with a max_age of 50 ms, and flaky(1): it fails once, then succeeds
    lab_ = rabbit()
    e08 = lab_.load("e08")
    old = e08.spin.send_with_options(args=(10,), delay=200, max_age=50)
    e08.flaky.send_with_options(args=(1,), min_backoff=10, max_backoff=20)
    lab_.start_worker()
    # (the thread that moved it from e08.DQ to e08 records that after the publish returns: under load another
    # thread had already skipped it, so the wait includes the record)
    assert lab.wait_until(lambda: lab_.outcomes("spin") == ["skipped"] and lab_.outcomes("succeeded") == ["ok"]
                          and len(lab_.recorder.enqueues_of("spin")) == 2, timeout=10), lab_.recorder.attempts
    # then the old one never ran: skipped, not retried, dead-lettered
    assert [e.queue for e in lab_.recorder.enqueues_of("spin")] == ["e08.DQ", "e08"]
    assert lab.wait_until(lambda: lab_.dead_ids("e08"), timeout=5)  # dead-lettered just after the skip
    assert lab_.dead_ids("e08") == [old.message_id]
    # and on_failure fired for the failed attempt, on_success once with the result
    assert lab_.outcomes("flaky") == ["retried", "ok"] and lab_.outcomes("failed") == ["ok"]
    [success] = lab_.recorder.attempts_of("succeeded")
    assert success.args[0]["actor_name"] == "flaky" and success.args[1] == 2


def test_e11_a_message_travels_as_json_so_int_keys_arrive_as_strings_on_rabbitmq(rabbit):
    # Given e11's receipt, sent with int product ids ({1: 2, 3: 1}) that JSON turns into strings
    lab_ = rabbit()
    e11 = lab_.load("e11")
    e11.OUTBOX.clear()
    lab_.start_worker()
    e11.send_receipt.send("ada@example.com", {1: 2, 3: 1})
    assert lab.wait_until(lambda: lab_.outcomes("send_receipt") == ["ok"], timeout=10), lab_.recorder.attempts
    # then the actor got string keys, and its int() made the same receipt as on Redis
    [attempt] = lab_.recorder.attempts_of("send_receipt")
    assert attempt.args == ("ada@example.com", {"1": 2, "3": 1})
    assert e11.OUTBOX == ["to ada@example.com: 3 item(s), 9.99 EUR"]


def test_e12_async_actors_run_on_the_event_loop_and_a_skipped_message_is_acked_on_rabbitmq(rabbit, real_redis_url):
    # Given e12 on RabbitMQ (AsyncIO and its middleware), its switches and results in a Redis beside
    lab_ = rabbit(redis_beside=real_redis_url)
    e12 = lab_.load("e12")
    lab_.start_worker(threads=3)
    # when 3 async actors run, then all ran on the one event loop thread, not on the worker threads
    answers = [m.get_result(block=True, timeout=10_000) for m in [e12.async_whoami.send() for _ in range(3)]]
    loop = dramatiq.asyncio.get_event_loop_thread()
    assert {a["thread"] for a in answers} == {loop.name}
    assert loop.name not in {a.thread for a in lab_.recorder.attempts_of("async_whoami")}
    # when the kill switch "reports" is off, then a report is skipped: not run, not retried, not dead-lettered
    lab_.broker.client.set(lab.key(lab_.broker, e12.SWITCH.format("reports")), "off")
    skipped = e12.switched_report.send(1)
    assert lab.wait_until(lambda: lab_.outcomes("switched_report") == ["skipped"], timeout=10)
    assert [e.message_id for e in lab_.recorder.enqueues_of("switched_report")] == [skipped.message_id]
    # and it was acked: nothing waits in e12, nothing in its dead letters
    assert lab.wait_until(lambda: lab_.ready("e12", "e12.XQ") in ([0, 0], [0, None]), timeout=5)


def test_e09_a_busy_mutex_in_the_redis_beside_retries_through_e09_dq_and_dead_letters_on_rabbitmq(rabbit,
                                                                                                 real_redis_url):
    # Given e09 on RabbitMQ, its mutex and counts in the Redis beside it: the broker's client, as on Redis
    lab_ = rabbit(redis_beside=real_redis_url)
    e09 = lab_.load("e09")
    [callbacks] = [m for m in lab_.broker.middleware if isinstance(m, GroupCallbacks)]
    assert e09.backend.client is lab_.broker.client is callbacks.rate_limiter_backend.client
    assert lab_.broker.client.connection_pool.connection_kwargs["port"] == urlsplit(real_redis_url).port
    # when the mutex is held elsewhere (by the test) while 3 messages meet it each of three ways
    with e09.MUTEX.acquire():
        mutexed = [e09.mutexed.send_with_options(args=(n, 50), max_retries=1, min_backoff=20, max_backoff=40)
                   for n in range(3)]
        for n in range(3):
            e09.skipping.send(n, 50)
            e09.patient.send(n, 50, 1)
        lab_.start_worker(threads=4)
        assert lab.wait_until(lambda: len(lab_.dead_ids("e09")) == 3 and lab_.outcomes("skipping") == ["ok"] * 3
                              and lab_.outcomes("patient").count("retried") >= 3, timeout=15), lab_.recorder.attempts
    # then by default (raise): 2 attempts each, both RateLimitExceeded, the retry through e09.DQ, and the message
    # in RabbitMQ's dead letters, e09.XQ, its work never done
    attempts = lab_.recorder.attempts_of("mutexed")
    assert Counter(a.message_id for a in attempts) == {m.message_id: 2 for m in mutexed}
    assert {a.error.split(":")[0] for a in attempts} == {"RateLimitExceeded"}
    assert [e.queue for e in lab_.recorder.enqueues_of("mutexed") if e.delay_ms is not None] == ["e09.DQ"] * 3
    assert sorted(lab_.dead_ids("e09")) == sorted(m.message_id for m in mutexed)
    # and raise_on_failure=False: 3 "successes", no work done, nothing retried
    assert [e.queue for e in lab_.recorder.enqueues_of("skipping")] == ["e09"] * 3
    assert (e09.tally("mutexed")["ran"], e09.tally("skipping")["ran"]) == (0, 0)
    # when the mutex is free, then every patient message did the work, one at a time, each retry through e09.DQ
    assert lab.wait_until(lambda: e09.tally("patient1")["ran"] == 3, timeout=10), lab_.recorder.attempts
    assert e09.tally("patient1")["peak"] == 1
    retries = [e for e in lab_.recorder.enqueues_of("patient") if e.delay_ms is not None]
    assert len(retries) >= 3 and {e.queue for e in retries} == {"e09.DQ"}
    assert all(25 <= e.delay_ms <= 75 for e in retries), retries


@pytest.mark.parametrize("args", [["send", "free", "2"], ["report"]], ids=["send", "report"])
def test_e09_without_a_redis_beside_rabbitmq_says_what_it_needs_and_exits_2(args, monkeypatch, capsys):
    # Given e09 on a RabbitMQ URL and no DRAMATIQ_REDIS_URL: nowhere for its counts and limiters
    monkeypatch.setenv(BROKER_URL_ENV, f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setattr(lab.broker, "_broker", None)  # as in a new process
    monkeypatch.setattr(lab.urls, "_in_use", None)
    e09 = experiments.load(experiments.find("e09"))  # it imports: its limiters touch Redis only when used
    # when it sends or reports, then one line says what to set, exit 2, before anything is sent
    with pytest.raises(SystemExit) as exit_:
        e09.main(args, prog_name="e09_rate_limits.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "this needs a Redis beside RabbitMQ (amqp://***:***@127.0.0.1:" in err and f"set {URL_ENV}=" in err, err
