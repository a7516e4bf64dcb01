"""Experiment 09's lessons: rate limits and mutexes, across threads and processes."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import lab

import dramatiq
import fakeredis
import pytest
import redis
from click.testing import CliRunner
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits import BucketRateLimiter, ConcurrentRateLimiter, WindowRateLimiter
from dramatiq.rate_limits import backends as rate_limiter_backends
from dramatiq.results import backends as result_backends

from conftest import WorkerProcess

# -- how many at once, in one process -------------------------------------------------------------


def test_without_a_limiter_a_4_thread_worker_runs_4_at_once(load, start_worker):
    e09 = load("e09")
    for n in range(4):
        e09.free.send(n, 200)
    start_worker(threads=4)
    assert lab.wait_until(lambda: e09.tally("free")["ran"] == 4, timeout=5)
    assert e09.tally("free")["peak"] == 4


def test_a_concurrent_limiter_of_1_lets_one_message_work_at_a_time(load, recorder, start_worker):
    # Given 4 messages that take a mutex (ConcurrentRateLimiter, limit=1) and retry later when it is busy
    e09 = load("e09")
    for n in range(4):
        e09.patient.send(n, 100, 1)
    # when 4 threads take them at once
    start_worker(threads=4)
    assert lab.wait_until(lambda: e09.tally("patient1")["ran"] == 4, timeout=10)
    # then all 4 did the work, one at a time, and the others were turned away meanwhile
    assert e09.tally("patient1")["peak"] == 1
    assert len([a for a in recorder.attempts_of("patient") if a.outcome == "retried"]) >= 3


def test_a_concurrent_limiter_of_2_lets_two_work_at_a_time(load, start_worker):
    e09 = load("e09")
    for n in range(4):
        e09.patient.send(n, 200, 2)
    start_worker(threads=4)
    assert lab.wait_until(lambda: e09.tally("patient2")["ran"] == 4, timeout=10)
    assert e09.tally("patient2")["peak"] == 2


def test_a_threading_lock_serialises_the_threads_of_one_process(load, start_worker):
    e09 = load("e09")
    for n in range(4):
        e09.locked.send(n, 100)
    start_worker(threads=4)
    assert lab.wait_until(lambda: e09.tally("locked")["ran"] == 4, timeout=5)
    assert e09.tally("locked") == {"ran": 4, "peak": 1, "overlaps": 0, "processes": 1}


# -- across two worker processes ------------------------------------------------------------------


NAMESPACE = "e09-two-processes"  # its own, so the worker below takes none of the other tests' messages


@pytest.fixture(scope="module")
def two_processes(redis_server) -> Iterator[str]:
    """One `dramatiq --processes 2 --threads 2 e09_rate_limits` on redis-server, for the tests that need two
    processes (started once: a start takes a second or more). Yields the URL."""
    worker = WorkerProcess(["--processes", "2", "--threads", "2", "e09_rate_limits"], url=redis_server,
                           dramatiq_worker_timeout="100", LAB_NAMESPACE=NAMESPACE)
    try:
        worker.ready(2)
        yield redis_server
    finally:
        worker.kill()  # a clean stop takes 2 s, for nothing to keep
        worker.close()


def run_sender(sender, *args: str, url: str):
    """``python e09_rate_limits.py ARGS`` in the two processes' namespace."""
    return sender("e09_rate_limits.py", *args, url=url, LAB_NAMESPACE=NAMESPACE)


def forget(url: str) -> None:
    """Delete the two processes' counts, from the test before."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{NAMESPACE}:e09:*"):
        client.delete(key)


def tally_from(report: str, kind: str) -> dict[str, int]:
    """One kind's line of `python e09_rate_limits.py report`, as a dict."""
    [line] = [line for line in report.splitlines() if line.strip().startswith(f"{kind}:")]
    return {name: int(value) for name, value in (pair.split() for pair in line.split(": ", 1)[1].split(", "))}


def report_when(sender, url: str, kind: str, ran: int) -> dict[str, int]:
    """`report`'s counts for ``kind``, once ``ran`` messages of it did the work (10 s at most).

    Waits on the Redis list that ``report`` reads (a sender's start-up costs 0.3 s), then asks ``report``.
    """
    client = redis.Redis.from_url(url)
    seen = f"{NAMESPACE}:e09:{kind}:seen"
    assert lab.wait_until(lambda: client.llen(seen) >= ran, timeout=10), client.lrange(seen, 0, -1)
    return tally_from(run_sender(sender, "report", url=url).stdout, kind)


@pytest.mark.e2e
def test_the_mutex_holds_across_two_worker_processes(two_processes, sender):
    url = two_processes
    forget(url)
    # Given two worker processes of 2 threads each: without a limit, more than 2 work at once (both processes)
    assert run_sender(sender, "send", "free", "8", "--hold", "200", url=url).returncode == 0
    free = report_when(sender, url, "free", 8)
    assert free["peak"] >= 3 and free["processes"] == 2, free
    # when the same number take the mutex, in Redis
    assert run_sender(sender, "send", "patient", "8", "--hold", "100", url=url).returncode == 0
    # then one works at a time, while both processes try (one may win every turn: it did, once in a loaded run)
    patient = report_when(sender, url, "patient1", 8)
    assert patient["peak"] == 1 and patient["overlaps"] == 0 and patient["tried_in"] == 2, patient


@pytest.mark.e2e
def test_a_threading_lock_holds_in_one_process_only(two_processes, sender):
    url = two_processes
    forget(url)
    assert run_sender(sender, "send", "locked", "8", "--hold", "150", url=url).returncode == 0
    locked = report_when(sender, url, "locked", 8)
    # one at a time in each process, so two at a time in all: the lock is per process
    assert locked["peak"] == 2 and locked["overlaps"] >= 1 and locked["processes"] == 2, locked


# -- when the limiter is busy ---------------------------------------------------------------------


RETRYING = re.compile(r"Retrying message '[0-9a-f-]+' in (\d+) milliseconds\.")  # dramatiq/middleware/retries.py


def outcomes(recorder: lab.Recorder, actor: str) -> list[str]:
    return [a.outcome for a in recorder.attempts_of(actor)]


def test_by_default_a_busy_limiter_raises_and_the_retries_end_in_the_dead_letters(load, broker, recorder,
                                                                                 start_worker, caplog):
    # Given the mutex held elsewhere (here, by the test) and 3 messages that need it, with max_retries=1
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="dramatiq.worker.WorkerThread")
    e09 = load("e09")
    with e09.MUTEX.acquire():
        sent = [e09.mutexed.send_with_options(args=(n, 50), max_retries=1, min_backoff=20, max_backoff=40)
                for n in range(3)]
        start_worker(threads=2)
        assert lab.wait_until(lambda: len(lab.dead_letters(broker, "e09")) == 3, timeout=10)
    # then each made max_retries + 1 = 2 attempts, each raised RateLimitExceeded, and each message is a dead
    # letter: no work done
    attempts_per_message = Counter(a.message_id for a in recorder.attempts_of("mutexed"))
    assert attempts_per_message == {m.message_id: 2 for m in sent}
    assert sorted(outcomes(recorder, "mutexed")) == ["failed"] * 3 + ["retried"] * 3
    assert {a.error.split(":")[0] for a in recorder.attempts_of("mutexed")} == {"RateLimitExceeded"}
    assert sorted(d.message.message_id for d in lab.dead_letters(broker, "e09")) == sorted(m.message_id for m in sent)
    assert e09.tally("mutexed")["ran"] == 0
    # and quietly: each RateLimitExceeded at DEBUG, each retry one INFO line of Retries with its backoff in ms
    # (min_backoff 20, max_backoff 40), no ERROR, and only the final "Retries exceeded" at WARNING
    limited = [r.levelname for r in caplog.records if r.getMessage().startswith("Rate limit exceeded in message")]
    retrying = [(r.levelname, RETRYING.fullmatch(r.getMessage())) for r in caplog.records
                if r.getMessage().startswith("Retrying message")]
    backoffs_ms = [int(match.group(1)) for _, match in retrying if match]
    loud = [(r.levelname, r.getMessage().split(" for ")[0]) for r in caplog.records if r.levelno >= logging.WARNING]
    assert limited == ["DEBUG"] * 6
    assert [level for level, _ in retrying] == ["INFO"] * 3 and len(backoffs_ms) == 3, retrying
    assert all(20 <= ms <= 40 for ms in backoffs_ms), backoffs_ms
    assert loud == [("WARNING", "Retries exceeded")] * 3


def test_raise_on_failure_false_makes_a_busy_limiter_skip_the_work_silently(load, broker, recorder, start_worker,
                                                                          caplog):
    caplog.set_level(logging.INFO)
    e09 = load("e09")
    with e09.MUTEX.acquire():
        for n in range(3):
            e09.skipping.send(n, 50)
        start_worker(threads=2)
        assert lab.wait_until(lambda: outcomes(recorder, "skipping") == ["ok"] * 3, timeout=5)
    # then 3 messages "succeeded", none did the work, none was retried or dead-lettered, nothing above INFO
    assert e09.tally("skipping")["ran"] == 0
    assert [e for e in recorder.enqueues_of("skipping") if e.delay_ms is not None] == []
    assert lab.dead_letters(broker, "e09") == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_retrying_later_keeps_the_work_at_the_cost_of_extra_attempts(load, broker, recorder, start_worker):
    # Given the mutex held elsewhere until 3 attempts were turned away, and 3 patient messages of 50 ms each
    e09 = load("e09")
    with e09.MUTEX.acquire():
        for n in range(3):
            e09.patient.send(n, 50, 1)
        start_worker(threads=2)
        assert lab.wait_until(lambda: outcomes(recorder, "patient").count("retried") >= 3, timeout=5)
    # then, once it was free, all 3 did the work, one at a time, and none was lost
    assert lab.wait_until(lambda: e09.tally("patient1")["ran"] == 3, timeout=10)
    assert e09.tally("patient1")["peak"] == 1 and lab.dead_letters(broker, "e09") == []
    # at the price of more attempts than messages, each retry a trip through the delay queue, e09.DQ
    attempts = recorder.attempts_of("patient")
    retries = [e for e in recorder.enqueues_of("patient") if e.delay_ms is not None]
    assert len(attempts) >= 3 + 3 and len(retries) == len(attempts) - 3
    assert {e.queue for e in retries} == {"e09.DQ"} and all(25 <= e.delay_ms <= 75 for e in retries)


# -- bursts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("limiter", "got_through"), [
    (lambda backend, key: BucketRateLimiter(backend, key, limit=5, bucket=1000), 10),
    (lambda backend, key: WindowRateLimiter(backend, key, limit=5, window=1), 10),
    (lambda backend, key: WindowRateLimiter(backend, key, limit=5, window=2), 5),
], ids=["bucket-1000ms", "window-1s", "window-2s"])
def test_a_burst_across_a_second_boundary_gets_through(load, monkeypatch, limiter, got_through):
    # Given a limit of 5, and a clock we move: 20 tries at 0.95 s, then 20 more at 1.05 s, 100 ms later
    e09 = load("e09")
    clock = SimpleNamespace(time=lambda: 1_700_000_000.95)
    monkeypatch.setattr(dramatiq.rate_limits.bucket, "time", clock)
    monkeypatch.setattr(dramatiq.rate_limits.window, "time", clock)
    chosen = limiter(e09.backend, f"{e09.KEY}:burst")

    def burst() -> int:
        acquired = 0
        for _ in range(20):
            with chosen.acquire(raise_on_failure=False) as ok:
                acquired += ok
        return acquired

    before = burst()
    clock.time = lambda: 1_700_000_001.05
    after = burst()
    # then a bucket, or a window of 1 s, let 5 + 5 through in 100 ms; a window of 2 s kept to 5
    assert (before, before + after) == (5, got_through)


# -- the backend ---------------------------------------------------------------------------------


def test_the_results_redis_backend_is_not_a_rate_limiter_backend():
    # Given the RedisBackend of dramatiq.results.backends, imported by mistake (Dramatiq issue 147)
    wrong = result_backends.RedisBackend(client=fakeredis.FakeRedis())
    mutex = ConcurrentRateLimiter(wrong, "mutex", limit=1)
    # then the first acquire fails, with an error that does not say which import was wrong
    with pytest.raises(AttributeError, match="'RedisBackend' object has no attribute 'add'"):
        with mutex.acquire():
            pass


def test_a_rate_limiter_backend_without_a_client_connects_to_localhost_6379():
    backend = rate_limiter_backends.RedisBackend()
    where = backend.client.connection_pool.connection_kwargs
    assert (where.get("host", "localhost"), where.get("port", 6379), where.get("db", 0)) == ("localhost", 6379, 0)


def test_e09_uses_the_brokers_own_redis_client(load, broker):
    e09 = load("e09")
    [group_callbacks] = [m for m in broker.middleware if isinstance(m, GroupCallbacks)]
    assert e09.backend.client is broker.client is group_callbacks.rate_limiter_backend.client
    assert e09.KEY == f"{broker.namespace}:e09"


# -- a mutex's ttl --------------------------------------------------------------------------------


def test_a_mutex_left_by_a_dead_holder_stays_taken_for_its_ttl_15_minutes_by_default(load, broker):
    e09 = load("e09")
    assert e09.MUTEX.ttl == 900_000
    # Given a holder that took the mutex and never released it (a worker killed with SIGKILL, say)
    holder = e09.MUTEX.acquire()  # kept: a context manager that is garbage-collected releases
    assert holder.__enter__() is True
    # then the mutex is taken, and Redis will forget it only when its key expires, in 15 minutes
    assert 899_000 <= broker.client.pttl(e09.MUTEX.key) <= 900_000
    with e09.MUTEX.acquire(raise_on_failure=False) as acquired:
        assert acquired is False


def test_a_mutex_whose_ttl_runs_out_mid_task_lets_a_second_holder_in(load, broker):
    # Given a mutex with a ttl of 100 ms, taken by a task that takes longer
    e09 = load("e09")
    short = ConcurrentRateLimiter(e09.backend, f"{e09.KEY}:short", limit=1, ttl=100)
    first, second, third = (short.acquire(raise_on_failure=False) for _ in range(3))
    assert first.__enter__() is True
    assert lab.wait_until(lambda: not broker.client.exists(short.key), timeout=2)
    # then a second task gets in while the first still works
    assert second.__enter__() is True
    # and when the first one finishes, its release frees the second one's slot: a third gets in beside it
    first.__exit__(None, None, None)
    assert third.__enter__() is True


# -- the sender -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["send", "nosuch", "3"], "Invalid value for 'KIND': 'nosuch' is not one of"),
    (["send", "free", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=1000."),
    (["send", "free", "3", "--hold", "0"], "Invalid value for '--hold': 0 is not in the range 1<=x<=60000."),
    (["send", "patient", "3", "--limit", "0"], "Invalid value for '--limit': 0 is not in the range 1<=x<=100."),
    (["report", "--bogus"], "No such option '--bogus'."),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(load, args, says):
    result = CliRunner().invoke(load("e09").main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output
