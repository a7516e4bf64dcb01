"""Experiment 08's lessons: time limits, age limits and callbacks."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import lab
from lab import experiments

import dramatiq
import pytest
from click.testing import CliRunner
from dramatiq.errors import DramatiqError
from dramatiq.middleware import AgeLimit, Interrupt, TimeLimit, TimeLimitExceeded
from dramatiq.middleware.threading import raise_thread_exception

# One TimeLimit that checks every 50 ms instead of every second, shared by the tests (its checker
# thread never stops, so one is started for all): the tests then wait 50 ms, not 1 s, past a limit.
CHECK_MS = 50
FAST = TimeLimit(interval=CHECK_MS)


def use_fast_time_limits(broker: dramatiq.Broker) -> None:
    """Swap the broker's TimeLimit for FAST, started as the `dramatiq` CLI starts it (after_process_boot)."""
    index = next(i for i, m in enumerate(broker.middleware) if isinstance(m, TimeLimit))
    broker.middleware[index] = FAST
    if not FAST.manager.is_alive():
        FAST.after_process_boot(broker)


@pytest.fixture
def time_limits(broker) -> None:
    use_fast_time_limits(broker)


class Alone:
    """e08 on a fakeredis broker only, with its recorder and in-process workers.

    For the time limit's lessons: it lives in the worker's threads, and Redis cannot change it,
    so these tests run once (the conftest's ``broker`` runs a test on both brokers).
    """

    def __init__(self) -> None:
        self.broker = lab.use_broker(lab.make_broker(lab.MEMORY_URL))
        self.recorder = lab.Recorder.install(self.broker)
        self.e08: ModuleType = experiments.load(experiments.find("e08"))
        self.workers: list[dramatiq.Worker] = []

    def start_worker(self) -> dramatiq.Worker:
        worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=100)
        worker.start()
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            lab.stop_worker(worker)
        self.broker.close()


@pytest.fixture
def alone() -> Iterator[Alone]:
    bench = Alone()
    yield bench
    bench.close()


@pytest.fixture
def alone_with_time_limits(alone: Alone) -> Alone:
    use_fast_time_limits(alone.broker)
    return alone


def took(attempt: lab.Attempt) -> float:
    """How long an attempt ran, in ms: from before_process_message to when the actor returned or raised."""
    return (attempt.ended - attempt.started) * 1000


def settled(recorder: lab.Recorder, actor: str, count: int) -> bool:
    """True once ``actor`` has ``count`` attempts, all of them over."""
    attempts = recorder.attempts_of(actor)
    return len(attempts) == count and all(a.ended is not None for a in attempts)


# -- time limits -----------------------------------------------------------------------------


def test_time_limit_defaults_to_10_minutes_checked_once_a_second():
    time_limit = TimeLimit()
    assert time_limit.time_limit == 600_000  # ms: 10 minutes, for every actor that sets none
    assert time_limit.manager.interval == 1.0  # s: the checker thread looks at the deadlines once a second
    assert TimeLimit in dramatiq.middleware.default_middleware
    # and float("inf") is no limit: a check long after it was set finds nothing to interrupt
    time_limit.manager.add_timeout(threading.get_ident(), float("inf"))
    time_limit.manager._handle_deadlines()  # one check; an expired deadline would raise in this thread at once
    time.sleep(0)
    assert time_limit.manager.deadlines[threading.get_ident()] == float("inf")


def test_an_in_process_worker_never_enforces_a_time_limit_without_process_boot(alone):
    # Given the broker's TimeLimit, checking every 50 ms once started, and never sent after_process_boot
    index = next(i for i, m in enumerate(alone.broker.middleware) if isinstance(m, TimeLimit))
    alone.broker.middleware[index] = unbooted = TimeLimit(interval=CHECK_MS)
    # when a plain dramatiq.Worker runs a 300 ms loop whose limit is 100 ms
    alone.e08.spin.send_with_options(args=(300,), time_limit=100)
    alone.start_worker()
    assert lab.wait_until(lambda: settled(alone.recorder, "spin", 1), timeout=5)
    # then nothing stopped it: it ran its 300 ms and succeeded, and the checker thread never started
    [attempt] = alone.recorder.attempts_of("spin")
    assert attempt.outcome == "ok" and took(attempt) >= 300, (attempt.outcome, took(attempt))
    assert not unbooted.manager.is_alive()


def test_a_python_loop_is_stopped_within_one_check_of_its_limit(alone_with_time_limits):
    bench = alone_with_time_limits
    bench.e08.spin.send_with_options(args=(5_000,), time_limit=200, max_retries=0)
    bench.start_worker()
    assert lab.wait_until(lambda: settled(bench.recorder, "spin", 1), timeout=5)
    [attempt] = bench.recorder.attempts_of("spin")
    assert (attempt.outcome, attempt.error) == ("failed", "TimeLimitExceeded: ")
    # stopped after its 200 ms, less than one check (50 ms) late, plus scheduling slack; not its 5 s
    assert 200 <= took(attempt) < 200 + CHECK_MS + 250, took(attempt)


def test_a_blocking_sleep_runs_to_its_end_past_the_limit(alone_with_time_limits, caplog):
    # Given an actor that sleeps 600 ms with a time limit of 100 ms
    caplog.set_level(logging.WARNING)
    bench = alone_with_time_limits
    bench.e08.nap.send_with_options(args=(600,), time_limit=100, max_retries=0)
    bench.start_worker()
    assert lab.wait_until(lambda: settled(bench.recorder, "nap", 1), timeout=5)
    # then the limit fired on time: TimeLimit logged its warning 100-350 ms in
    [attempt] = bench.recorder.attempts_of("nap")
    [fired] = [r for r in caplog.records if r.getMessage().startswith("Time limit exceeded.")]
    fired_after_ms = fired.created * 1000 - attempt.started_ms
    assert (fired.levelname, fired.name) == ("WARNING", "dramatiq.middleware.time_limit.TimeLimit")
    assert 100 <= fired_after_ms < 350, fired_after_ms
    # but the exception waited for time.sleep to return: the attempt ran all of its 600 ms, then failed
    assert attempt.outcome == "failed" and attempt.error.startswith("TimeLimitExceeded")
    assert took(attempt) >= 600, took(attempt)


def test_an_exception_raised_in_a_thread_waits_for_its_socket_read_to_end():
    # Given a thread blocked for 400 ms reading a socket nobody writes to
    reader, _writer = socket.socketpair()
    reader.settimeout(0.4)
    arrived: list[float] = []

    def read() -> None:
        started = time.monotonic()
        try:
            try:
                reader.recv(1)
            except TimeoutError:
                pass
            time.sleep(0)  # a bytecode boundary in Python code: where a pending async exception is raised
        except TimeLimitExceeded:
            arrived.append(time.monotonic() - started)

    thread = threading.Thread(target=read)
    thread.start()
    # when TimeLimit's mechanism raises TimeLimitExceeded in it 50 ms in
    time.sleep(0.05)
    raise_thread_exception(thread.ident, TimeLimitExceeded)
    thread.join(5)
    # then it arrived only once the read gave up, 400 ms in
    assert len(arrived) == 1 and arrived[0] >= 0.4, arrived
    reader.close()
    _writer.close()


def test_the_checker_fires_on_its_own_ticks_so_a_loop_can_run_up_to_a_second_past_its_limit():
    # Given TimeLimit's default checker (once a second), started just now: its first check found nothing
    manager = TimeLimit().manager
    manager.start()
    started = time.monotonic()
    stopped: dict[int, float] = {}

    def loop(limit_ms: int) -> None:
        manager.add_timeout(threading.get_ident(), limit_ms)
        try:
            while time.monotonic() - started < 5:
                pass
        except TimeLimitExceeded:
            stopped[limit_ms] = time.monotonic() - started

    # when three loops start at once with limits of 100, 300 and 500 ms
    threads = [threading.Thread(target=loop, args=(ms,)) for ms in (100, 300, 500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # then all three were stopped at the same check, about 1 s in: up to 900 ms past their limits
    assert sorted(stopped) == [100, 300, 500], stopped
    assert max(stopped.values()) - min(stopped.values()) < 0.2, stopped
    assert min(stopped.values()) >= 0.9, stopped


def test_a_caught_time_limit_exceeded_fires_once_and_the_message_succeeds(alone_with_time_limits):
    # Given tidy, which catches TimeLimitExceeded and then cleans up for 250 ms, past its 100 ms limit again
    bench = alone_with_time_limits
    bench.e08.tidy.send_with_options(args=(5_000, 250), time_limit=100)
    bench.start_worker()
    assert lab.wait_until(lambda: settled(bench.recorder, "tidy", 1), timeout=5)
    # then the cleanup was not interrupted a second time, and the message succeeded: no retry
    [attempt] = bench.recorder.attempts_of("tidy")
    assert attempt.outcome == "ok" and took(attempt) >= 100 + 250, (attempt.outcome, took(attempt))
    assert bench.recorder.enqueues_of("tidy")[1:] == []


def caught_by(clause: type[BaseException]) -> bool:
    """Whether ``except clause:`` catches a TimeLimitExceeded."""
    try:
        try:
            raise TimeLimitExceeded
        except clause:
            return True
    except TimeLimitExceeded:
        return False


def caught_by_a_bare_except() -> bool:
    try:
        raise TimeLimitExceeded
    except:  # noqa: E722 - the point: a bare except catches every BaseException
        return True


def test_time_limit_exceeded_escapes_except_exception_but_not_interrupt_base_exception_or_a_bare_except():
    # Given TimeLimitExceeded: an Interrupt, which is a BaseException and deliberately not a DramatiqError
    assert TimeLimitExceeded.__mro__ == (TimeLimitExceeded, Interrupt, BaseException, object)
    # then `except Exception` (and `except DramatiqError`) let it through; its name, Interrupt,
    # BaseException and a bare except catch it
    clauses = (TimeLimitExceeded, Interrupt, BaseException, Exception, DramatiqError)
    assert {clause.__name__: caught_by(clause) for clause in clauses} == {
        "TimeLimitExceeded": True, "Interrupt": True, "BaseException": True, "Exception": False,
        "DramatiqError": False}
    assert caught_by_a_bare_except()


def test_a_timed_out_message_is_retried_and_uses_up_max_retries(load, broker, recorder, start_worker,
                                                                time_limits, caplog):
    caplog.set_level(logging.INFO)
    e08 = load("e08")
    message = e08.spin.send_with_options(args=(5_000,), time_limit=100, max_retries=2, min_backoff=20,
                                         max_backoff=40)
    start_worker()
    assert lab.wait_until(lambda: settled(recorder, "spin", 3), timeout=10)
    # then a time-out is an error like any other: retried twice with a backoff, then dead
    attempts = recorder.attempts_of("spin")
    assert [(a.number, a.outcome) for a in attempts] == [(1, "retried"), (2, "retried"), (3, "failed")]
    assert {a.error for a in attempts} == {"TimeLimitExceeded: "}
    assert len([e for e in recorder.enqueues_of("spin") if e.delay_ms is not None]) == 2  # the backoffs
    # (the worker dead-letters it just after the recorder saw the last attempt fail: waited for, under load)
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e08"), timeout=5)
    assert [d.message.message_id for d in lab.dead_letters(broker, "e08")] == [message.message_id]
    # and each attempt was logged: the limit at WARNING, the failure at ERROR with its traceback, then what
    # Retries did, at INFO for a retry and at WARNING for the last
    logged = [(r.name.rsplit(".", 1)[-1], r.levelname, r.getMessage().split(" ")[0], bool(r.exc_info))
              for r in caplog.records if r.getMessage().startswith(
                  ("Time limit exceeded.", "Failed to process message", "Retrying message", "Retries exceeded"))]
    attempt = [("TimeLimit", "WARNING", "Time", False), ("WorkerThread", "ERROR", "Failed", True)]
    assert logged == [*attempt, ("Retries", "INFO", "Retrying", False)] * 2 + [
        *attempt, ("Retries", "WARNING", "Retries", False)], logged


# -- age limits ------------------------------------------------------------------------------


def test_a_message_older_than_max_age_is_skipped_unrun_into_the_dead_letters(load, broker, recorder, start_worker,
                                                                             caplog):
    # Given a message sent with a 200 ms delay and a max_age of 50 ms
    caplog.set_level(logging.INFO)
    e08 = load("e08")
    message = e08.spin.send_with_options(args=(10,), delay=200, max_age=50)
    start_worker()
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e08"), timeout=5)
    # then the worker took it when it was due, and skipped it: the actor never ran, nothing retried
    assert [(a.number, a.outcome) for a in recorder.attempts_of("spin")] == [(1, "skipped")]
    assert not [r for r in caplog.records if r.getMessage().startswith("spinning")]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e08")] == [message.message_id]
    assert [e.queue for e in recorder.enqueues_of("spin")] == ["e08.DQ", "e08"]  # sent, then due: no retry
    # and it was logged twice at WARNING: by AgeLimit, with the message id, then by the worker
    assert AgeLimit().max_age is None  # the default: no age limit unless the actor or the message sets one
    logged = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged == [
        ("dramatiq.middleware.age_limit.AgeLimit", "WARNING",
         f"Message {message.message_id!r} has exceeded its age limit."),
        ("dramatiq.worker.WorkerThread", "WARNING", "Message spin(10) was skipped."),
    ]


def test_max_age_counts_from_the_first_send_so_a_retry_can_age_out(load, broker, recorder, start_worker,
                                                                    time_limits):
    # Given a message with a max_age of 400 ms whose first attempt times out after 500 ms, then is retried
    # (once) 20 to 40 ms later
    e08 = load("e08")
    start_worker()
    message = e08.spin.send_with_options(args=(5_000,), time_limit=500, max_age=400, max_retries=1,
                                         min_backoff=20, max_backoff=40)
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e08"), timeout=5)
    # then the first attempt ran, and its retry was skipped, unrun, into the dead letters
    attempts = recorder.attempts_of("spin")
    assert [(a.number, a.outcome) for a in attempts] == [(1, "retried"), (2, "skipped")]
    first, retry = attempts
    assert took(first) >= 500 and first.error == "TimeLimitExceeded: ", (took(first), first.error)
    [dead] = [d.message for d in lab.dead_letters(broker, "e08")]
    assert dead.message_id == message.message_id
    # because the retry kept the first send's timestamp, and was over 400 ms past it when taken,
    assert dead.message_timestamp == message.message_timestamp
    assert retry.started_ms - message.message_timestamp >= 400
    # while less than 400 ms had passed since the retry was sent: counted from there, it would have run
    sent_again_ms = dead.options["requeue_timestamp"]
    assert 0 < retry.started_ms - sent_again_ms < 400, retry.started_ms - sent_again_ms


# -- callbacks -------------------------------------------------------------------------------


def callbacks(recorder: lab.Recorder) -> dict[str, int]:
    return {name: len(recorder.attempts_of(name)) for name in ("failed", "succeeded", "exhausted")}


def test_on_failure_fires_on_every_failed_attempt_and_on_success_once(load, broker, recorder, start_worker):
    # Given flaky(3): it fails on attempts 1, 2 and 3, then succeeds (3 retries allowed)
    e08 = load("e08")
    e08.flaky.send_with_options(args=(3,), min_backoff=10, max_backoff=20)
    start_worker()
    assert lab.wait_until(lambda: settled(recorder, "succeeded", 1), timeout=10)
    broker.join("e08", timeout=5000)
    # then on_failure ran 3 times, on_success once with the result (attempt 4), on_retry_exhausted never
    assert [a.outcome for a in recorder.attempts_of("flaky")] == ["retried", "retried", "retried", "ok"]
    assert callbacks(recorder) == {"failed": 3, "succeeded": 1, "exhausted": 0}
    errors = [a.args[1] for a in recorder.attempts_of("failed")]
    assert errors == [{"type": "RuntimeError", "message": f"attempt {n} of the 3 that fail"} for n in (1, 2, 3)]
    [success] = recorder.attempts_of("succeeded")
    assert success.args[0]["actor_name"] == "flaky" and success.args[1] == 4


def test_on_retry_exhausted_fires_once_when_the_retries_run_out(load, broker, recorder, start_worker):
    # Given flaky(9): it never succeeds within its 1 + 3 attempts
    e08 = load("e08")
    e08.flaky.send_with_options(args=(9,), min_backoff=10, max_backoff=20)
    start_worker()
    assert lab.wait_until(lambda: settled(recorder, "exhausted", 1), timeout=10)
    broker.join("e08", timeout=5000)
    # then on_failure ran 4 times (every attempt, the last one included), on_retry_exhausted once
    assert [a.outcome for a in recorder.attempts_of("flaky")] == ["retried"] * 3 + ["failed"]
    assert callbacks(recorder) == {"failed": 4, "succeeded": 0, "exhausted": 1}
    [exhausted] = recorder.attempts_of("exhausted")
    assert exhausted.args[1] == {"retries": 3, "max_retries": 3}


def test_a_throws_abort_fires_on_failure_but_not_on_retry_exhausted(load, broker, recorder, start_worker,
                                                                   time_limits, caplog):
    # Given spin_once: spin with throws=(TimeLimitExceeded,), max_retries=2, on_failure and on_retry_exhausted
    caplog.set_level(logging.INFO)
    e08 = load("e08")
    message = e08.spin_once.send_with_options(args=(5_000,), time_limit=100)
    start_worker()
    # when it times out
    assert lab.wait_until(lambda: settled(recorder, "failed", 1), timeout=5)
    broker.join("e08", timeout=5000)
    # then it failed at once: one attempt, no retry, in the dead letters
    assert [(a.outcome, a.error) for a in recorder.attempts_of("spin_once")] == [("failed", "TimeLimitExceeded: ")]
    assert [e.queue for e in recorder.enqueues_of("spin_once")] == ["e08"]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e08")] == [message.message_id]
    # and on_failure ran once, on_retry_exhausted never: no retry ran out
    assert callbacks(recorder) == {"failed": 1, "succeeded": 0, "exhausted": 0}
    [failure] = recorder.attempts_of("failed")
    assert failure.args[1] == {"type": "TimeLimitExceeded", "message": ""}
    # and the worker logged the failure at INFO as expected, without a traceback, and Retries its abort
    logged = [(r.name.rsplit(".", 1)[-1], r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records
              if r.name.startswith(("dramatiq.worker", "dramatiq.middleware.retries"))]
    assert logged == [
        ("WorkerThread", "INFO", "Failed to process message spin_once(5000) with expected exception "
                                 "TimeLimitExceeded.", False),
        ("Retries", "INFO", f"Aborting message {message.message_id!r}.", False),
    ], logged


def test_a_message_skipped_by_its_age_limit_fires_no_callback(load, broker, recorder, start_worker):
    e08 = load("e08")
    e08.flaky.send_with_options(args=(0,), delay=200, max_age=50)
    start_worker()
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e08"), timeout=5)
    broker.join("e08", timeout=5000)  # a callback would have been enqueued before the skipped message's nack
    assert [a.outcome for a in recorder.attempts_of("flaky")] == ["skipped"]
    assert callbacks(recorder) == {"failed": 0, "succeeded": 0, "exhausted": 0}


# -- the worker and the sender ---------------------------------------------------------------


@pytest.mark.e2e
def test_the_dramatiq_cli_enforces_time_limits(real_redis_url, dramatiq_worker, sender):
    worker = dramatiq_worker("--threads", "2", "e08_time_limits", url=real_redis_url)
    sent = sender("e08_time_limits.py", "spin", "5000", "--limit", "100", url=real_redis_url)
    assert sent.returncode == 0 and sent.stdout.startswith("sent spin(5000)"), sent
    output = worker.wait_for(r"Retrying message")
    worker.kill()  # now: a clean stop takes 1.5 s or more (Experiment 05), and its retry does not matter here
    assert "[dramatiq.middleware.time_limit.TimeLimit] [WARNING] Time limit exceeded." in output
    ran_ms = int(output.split("spin(5000) ran ")[1].split(" ms")[0])
    assert 100 <= ran_ms < 1_100 + 500, ran_ms  # the limit, plus up to one check (1 s), plus slack


@pytest.mark.parametrize(("args", "says"), [
    (["spin", "abc"], "Invalid value for 'MS': 'abc' is not a valid integer range."),
    (["spin", "700000"], "700000 is not in the range 0<=x<=600000."),
    (["nap", "10", "--limit", "0"], "Invalid value for '--limit': 0 is not in the range 1<=x<=600000."),
    (["tidy", "10", "--max-age", "0"], "Invalid value for '--max-age': 0 is not in the range"),
    (["flaky", "11"], "Invalid value for 'FAILURES': 11 is not in the range 0<=x<=10."),
    (["flaky", "1", "--delay", "-1"], "-1 is not in the range 0<=x<=604800000."),
    (["sleep", "3"], "No such command 'sleep'."),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(load, args, says):
    result = CliRunner().invoke(load("e08").main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output
