"""Experiment 02's lessons: retries, backoff, dead letters, throws= and Retry."""

from __future__ import annotations

import inspect
import logging
import statistics

import lab

import dramatiq
import fakeredis
import pytest
from click.testing import CliRunner
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import compute_backoff
from dramatiq.middleware import Retries

UNLUCKY = 17


def retry_delays(recorder: lab.Recorder, message_id: str) -> list[int]:
    """The backoffs Retries asked for, in order, for one message."""
    return [e.delay_ms for e in recorder.enqueues if e.message_id == message_id and e.delay_ms is not None]


def test_retry_k_waits_min_backoff_times_2_to_the_k_up_to_twice_that(load, recorder, start_worker):
    # Given Dramatiq's own backoff for retry k (from 0) with min_backoff=100, drawn 500 times each
    for k in range(3):
        backoffs_ms = [compute_backoff(k, factor=100, max_backoff=10**9)[1] for _ in range(500)]
        # then jitter only adds: never below 100·2^k, never twice that, and spread over the whole range
        low, high = 100 * 2**k, 2 * 100 * 2**k
        assert low <= min(backoffs_ms) < 1.1 * low and 0.95 * high < max(backoffs_ms) < high, (k, backoffs_ms)
    # and the worker waits that long between attempts
    e02 = load("e02")
    message = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=3, min_backoff=50, max_backoff=10_000)
    start_worker()
    tries = lambda: [a for a in recorder.attempts if a.actor == "unhandled"]  # noqa: E731
    assert lab.wait_until(lambda: len(tries()) == 4 and tries()[-1].outcome == "failed", timeout=10)
    delays = retry_delays(recorder, message.message_id)
    assert len(delays) == 3
    for k, delay in enumerate(delays):
        assert 50 * 2**k <= delay < 2 * 50 * 2**k, (k, delays)
    # and the worker honoured each one: no attempt started before its backoff ran out
    retries = [e for e in recorder.enqueues if e.delay_ms is not None]
    for enqueue, attempt in zip(retries, tries()[1:], strict=True):
        assert attempt.started - enqueue.at >= enqueue.delay_ms / 1000 - 0.005


def test_past_max_backoff_jitter_picks_50_to_100_percent_of_max_backoff(load, recorder, start_worker):
    # Given a retry whose doubled backoff would pass max_backoff (the 5th retry of min_backoff 100: 1600 ms+)
    draws = [compute_backoff(4, factor=100, max_backoff=1000)[1] for _ in range(2000)]
    # then it is brought back to 50-100 % of max_backoff: never above, never below half, and spread out
    assert 500 <= min(draws) < 550 and 950 < max(draws) <= 1000, (min(draws), max(draws))
    assert len(set(draws)) > 100  # jittered, not capped to exactly max_backoff
    # and the worker uses it: backoffs past the cap of 150 ms all land in 75-150 ms
    e02 = load("e02")
    message = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=3, min_backoff=100, max_backoff=150)
    start_worker()
    assert lab.wait_until(lambda: len(retry_delays(recorder, message.message_id)) == 3, timeout=10)
    assert all(75 <= d <= 150 for d in retry_delays(recorder, message.message_id))


def test_exhausted_message_goes_to_the_dead_letters_and_the_callback_runs(load, broker, recorder, start_worker):
    e02 = load("e02")
    message = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=2, min_backoff=20)
    start_worker()
    # (the callback may run on another thread before the last attempt's outcome is recorded: wait for both)
    assert lab.wait_until(lambda: [a.actor for a in recorder.attempts if a.outcome == "ok"] == ["retries_exhausted"]
                          and "running" not in {a.outcome for a in recorder.attempts}, timeout=10)
    assert [a.outcome for a in recorder.attempts if a.actor == "unhandled"] == ["retried", "retried", "failed"]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e02")] == [message.message_id]
    [callback] = [a for a in recorder.attempts if a.actor == "retries_exhausted"]
    assert callback.args[0]["message_id"] == message.message_id and callback.args[1]["retries"] == 2


def test_handled_error_runs_exactly_once(load, broker, recorder, start_worker):
    e02 = load("e02")
    e02.handled.send(UNLUCKY)
    start_worker()
    broker.join("e02", timeout=5000)
    assert [(a.number, a.outcome) for a in recorder.attempts] == [(1, "ok")]
    assert lab.dead_letters(broker, "e02") == []


def test_throws_fails_at_once_without_retry(load, broker, recorder, start_worker, caplog):
    e02 = load("e02")
    caplog.set_level(logging.INFO)
    message = e02.aborted.send(UNLUCKY)
    start_worker()
    broker.join("e02", timeout=5000)
    assert [(a.number, a.outcome) for a in recorder.attempts] == [(1, "failed")]
    assert retry_delays(recorder, message.message_id) == []
    assert [d.message.message_id for d in lab.dead_letters(broker, "e02")] == [message.message_id]
    # logged at INFO, without a traceback: an expected failure, not an error
    failed = [(r.levelname, r.exc_info, r.getMessage()) for r in caplog.records
              if r.getMessage().startswith("Failed to process message")]
    assert failed == [("INFO", None, "Failed to process message aborted(17) with expected exception ValueError.")]
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_retry_exception_reschedules_after_at_least_its_delay(load, broker, recorder, start_worker):
    e02 = load("e02")
    message = e02.postponed.send(1, 200)
    start_worker()
    broker.join("e02", timeout=5000)
    first, second = recorder.attempts
    assert (first.outcome, second.outcome) == ("retried", "ok")
    # Retry(delay=200): that delay exactly, no backoff formula, through the delay queue like any delay
    [retry] = [e for e in recorder.enqueues if e.message_id == message.message_id and e.delay_ms is not None]
    assert (retry.delay_ms, retry.queue) == (200, "e02.DQ")
    # a minimum: the retry starts no earlier than its eta, 200 ms after Retries enqueued it (measured from the first
    # try's end instead, it can look early: that end is recorded after Retries' own hook); how much later: e03
    assert second.started_ms >= retry.eta_ms


def test_a_retry_exception_counts_against_max_retries(broker, recorder, start_worker):
    @dramatiq.actor(queue_name="e02-always-later", broker=broker, max_retries=2)
    def always_later() -> None:
        raise dramatiq.Retry(delay=10)

    message = always_later.send()
    start_worker()
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e02-always-later"), timeout=5)
    assert [(a.number, a.outcome) for a in recorder.attempts] == [(1, "retried"), (2, "retried"), (3, "failed")]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e02-always-later")] == [message.message_id]


def test_a_retry_is_re_enqueued_so_the_thread_runs_other_work_meanwhile(load, recorder, start_worker):
    e02 = load("e02")
    failing = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=1, min_backoff=400)
    start_worker(threads=1)  # one thread: if it slept through the backoff, nothing else could run
    assert lab.wait_until(lambda: recorder.attempts and recorder.attempts[0].ended, timeout=5)
    other = e02.handled.send(1)
    assert lab.wait_until(lambda: len(recorder.attempts) >= 3, timeout=5)
    order = [(a.message_id, a.number) for a in recorder.attempts[:3]]
    assert order == [(failing.message_id, 1), (other.message_id, 1), (failing.message_id, 2)]
    assert len(retry_delays(recorder, failing.message_id)) == 1  # the retry went back through the broker


def test_maintenance_runs_on_one_dispatch_in_a_thousand_and_never_on_ack_or_nack():
    broker = RedisBroker(client=fakeredis.FakeRedis())
    assert (broker.maintenance_chance, MAINTENANCE_SCALE) == (1000, 1_000_000)  # 0.1 %
    # Each dispatch call (enqueue, fetch, requeue, qsize, purge...) draws its own chance
    runs = sum(broker._should_do_maintenance("fetch") for _ in range(200_000))
    assert 130 <= runs <= 270, runs  # 200 expected; outside this range: p < 1e-5
    # ack and nack never trigger it, whatever the chance
    broker.maintenance_chance = MAINTENANCE_SCALE
    assert {broker._should_do_maintenance(command) for command in ("ack", "nack")} == {0}
    assert broker._should_do_maintenance("fetch") == 1


def test_dead_letters_go_only_when_maintenance_runs_for_their_queue(load, broker, start_worker):
    assert RedisBroker(client=broker.client).dead_message_ttl == 7 * 86_400_000
    # Given a dead letter in e02.XQ, and its worker stopped (its own fetches must not draw maintenance)
    e02 = load("e02")
    e02.aborted.send(UNLUCKY)
    worker = start_worker()
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e02"), timeout=5)
    lab.stop_worker(worker)
    # and a process whose every dispatch call runs maintenance, with dead letters expiring at once
    sweeper = RedisBroker(client=broker.client, namespace=broker.namespace, dead_message_ttl=1,
                          maintenance_chance=MAINTENANCE_SCALE)
    # when maintenance runs for another queue, e02's dead letter stays
    sweeper.do_qsize("another-queue")
    assert len(lab.dead_letters(broker, "e02")) == 1
    # and when it runs for e02, the expired dead letter goes
    sweeper.do_qsize("e02")
    assert lab.dead_letters(broker, "e02") == []


def test_default_retries_are_20_from_15_seconds_and_last_about_a_month():
    retries = Retries()
    assert (retries.max_retries, retries.min_backoff, retries.max_backoff) == (20, 15_000, 7 * 86_400_000)
    days = [
        sum(compute_backoff(k, factor=retries.min_backoff, max_backoff=retries.max_backoff)[1]
            for k in range(retries.max_retries)) / 86_400_000
        for _ in range(200)
    ]
    assert 23 <= min(days) and max(days) <= 47 and 30 <= statistics.median(days) <= 40


def test_redis_broker_join_has_no_fail_fast_and_stub_broker_fails_fast_by_default():
    assert "fail_fast" not in inspect.signature(RedisBroker.join).parameters
    stub = StubBroker()
    stub.emit_after("process_boot")

    @dramatiq.actor(broker=stub, max_retries=0)
    def boom() -> None:
        raise ValueError("boom")

    worker = dramatiq.Worker(stub, worker_timeout=100)
    worker.start()
    try:
        boom.send()
        with pytest.raises(ValueError):
            stub.join(boom.queue_name)  # 2.x: fail_fast defaults to True and re-raises
        boom.send()
        stub.join(boom.queue_name, fail_fast=False)  # the way to wait when failure is the point
    finally:
        worker.stop()


@pytest.mark.e2e
def test_worker_cli_retries_dead_letters_and_stops_cleanly(real_redis_url, dramatiq_worker, sender):
    worker = dramatiq_worker("--threads", "2", "e02_error_handling", url=real_redis_url)
    assert sender("e02_error_handling.py", "handled", "3", url=real_redis_url).returncode == 0
    sent = sender("e02_error_handling.py", "unhandled", str(UNLUCKY), "--max-retries", "1",
                  "--min-backoff", "100", url=real_redis_url)
    assert sent.returncode == 0 and sent.stdout.startswith("sent unhandled(17)")
    worker.wait_for(r"handled\] \[INFO\] ok 3")
    output = worker.wait_for(r"gave up on unhandled\(17\) after 1 retries")
    assert "attempt 2" in output and "Retrying message" in output
    letters = sender("e02_error_handling.py", "dead-letters", url=real_redis_url)
    assert letters.stdout.startswith("1 dead letter(s) in e02.XQ")
    assert worker.stop() == 0


@pytest.mark.parametrize(("args", "says"), [
    (["unhandled", "abc"], "Invalid value for 'N': 'abc' is not a valid integer range."),
    (["nosuch", "3"], "No such command 'nosuch'."),
    (["unhandled", "3", "--min-backoff", "0"], "Invalid value for '--min-backoff': 0 is not in the range"),
    (["unhandled", "3", "--min-backoff", "9000"], "Invalid value for --min-backoff: 9000 is above the max backoff, "
                                                  "8000 ms: raise --max-backoff too"),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(e02_main, args, says):
    result = CliRunner().invoke(e02_main, args)  # in-process: the same click checks, faster
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output


@pytest.fixture
def e02_main(load):
    return load("e02").main
