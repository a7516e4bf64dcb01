"""Experiment 12's lessons: async actors and the AsyncIO middleware; writing middleware.

A word of care for tests of async actors: the AsyncIO middleware keeps ONE event loop
thread per process, in a global, and that thread is not a daemon. A test that leaves it
running makes pytest hang at exit, so every worker here is stopped in a fixture or a
``finally``, and ``no_event_loop_left_behind`` checks after each test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from types import ModuleType

import lab
from lab import experiments

import dramatiq
import pytest
import redis
from click.testing import CliRunner
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, Middleware, MiddlewareError, default_middleware

NAP_S = 0.2


@pytest.fixture(autouse=True)
def no_event_loop_left_behind() -> Iterator[None]:
    assert get_event_loop_thread() is None, "an event loop thread was left running before this test"
    yield
    leftover = get_event_loop_thread()
    if leftover is not None:  # stop it, or pytest would hang at exit on this non-daemon thread
        leftover.stop()
        set_event_loop_thread(None)
        pytest.fail("this test left the AsyncIO event loop thread running")


@pytest.fixture
def e12(load, recorder) -> ModuleType:
    """e12 on the test's broker (fakeredis, then redis-server)."""
    return load("e12")


@pytest.fixture
def fake_e12() -> Iterator[ModuleType]:
    """e12 on a fresh lab broker over fakeredis only: for the tests where the broker plays no part."""
    broker = lab.use_broker(lab.make_broker(lab.MEMORY_URL))
    lab.Recorder.install(broker)
    yield experiments.load(experiments.find("e12"))
    broker.close()


@contextmanager
def running(broker, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """One in-process worker, stopped whatever happens (and its event loop thread with it)."""
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield worker
    finally:
        lab.stop_worker(worker)


def recorder_of(module: ModuleType) -> lab.Recorder:
    return lab.Recorder.install(module.broker)


def stub_with_worker() -> tuple[StubBroker, dramatiq.Worker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    return broker, dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)


# -- async def actors need the AsyncIO middleware ------------------------------------------------


def test_asyncio_is_not_a_default_middleware_and_an_async_actor_without_it_fails():
    # Given a broker with Dramatiq's default middleware, which do not include AsyncIO
    assert AsyncIO not in default_middleware
    broker, worker = stub_with_worker()

    @dramatiq.actor(broker=broker, max_retries=0)
    async def hello() -> None:
        pass

    # when an async def actor's message is processed, then it fails at once: no event loop thread
    worker.start()
    try:
        hello.send()
        with pytest.raises(RuntimeError, match="Have you added the AsyncIO middleware to your middleware stack"):
            broker.join(hello.queue_name, timeout=5000)
    finally:
        worker.stop()


def test_asyncio_must_be_added_as_an_instance_not_the_class():
    broker = StubBroker()
    # add_middleware(AsyncIO), the class, fails (Dramatiq issue 643 shows the same mistake) ...
    with pytest.raises(TypeError, match="unsupported operand"):
        broker.add_middleware(AsyncIO)
    # ... after putting the class in the middleware list: that broker is broken now; build another
    assert broker.middleware[-1] is AsyncIO
    good = StubBroker()
    good.add_middleware(AsyncIO())
    assert isinstance(good.middleware[-1], AsyncIO)


def test_async_actors_run_on_one_event_loop_thread_not_the_worker_threads(e12, broker, recorder, start_worker):
    # Given a worker with 3 threads and the AsyncIO middleware (e12 adds it)
    start_worker(threads=3)
    loop = get_event_loop_thread()
    assert isinstance(loop, EventLoopThread)
    # when 3 async actors run at once
    messages = [e12.async_whoami.send() for _ in range(3)]
    answers = [m.get_result(block=True, timeout=5000) for m in messages]
    # then all 3 ran on the one event loop thread, while the worker threads only waited for them
    assert {a["thread"] for a in answers} == {loop.name}
    worker_threads = {a.thread for a in recorder.attempts_of("async_whoami")}
    assert loop.name not in worker_threads and len(worker_threads) >= 2, worker_threads
    # each waits for its coroutine in slices of 0.1 s, to notice an interrupt (a time limit, a shutdown) between
    assert loop.interrupt_check_ival == 0.1


def test_current_message_gives_each_async_actor_its_own_message(e12, broker, recorder, start_worker):
    # Given 3 async actors that await before they read CurrentMessage, interleaved on one event loop thread
    start_worker(threads=3)
    messages = [e12.async_whoami.send() for _ in range(3)]
    answers = [m.get_result(block=True, timeout=5000) for m in messages]
    # then each saw its own message: CurrentMessage keeps it in a contextvar, copied into the coroutine
    assert [a["message_id"] for a in answers] == [m.message_id for m in messages]
    attempts = recorder.attempts_of("async_whoami")  # (Results stored each answer before the Recorder's
    assert lab.wait_until(lambda: all(a.ended for a in attempts), timeout=5)  # after hook ran: wait for it)
    assert max(a.started for a in attempts) < min(a.ended for a in attempts)  # they did overlap


def naps(module: ModuleType, blocking: bool) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Send 4 naps of NAP_S to a 4-thread worker. Returns (started, ended) of each nap as the event loop
    ran it, and of each message as its worker thread held it, both sorted by start."""
    recorder = recorder_of(module)
    recorder.reset()
    module.NAPS.clear()
    for n in range(4):
        module.async_nap.send(n, NAP_S, blocking)
    assert lab.wait_until(lambda: len([a for a in recorder.attempts if a.ended]) == 4, timeout=10)
    on_the_loop = sorted((started, ended) for _, started, ended in module.NAPS)
    on_worker_threads = sorted((a.started, a.ended) for a in recorder.attempts)
    return on_the_loop, on_worker_threads


def test_a_blocking_call_in_an_async_actor_stalls_the_loop_and_await_does_not(fake_e12):
    # Given a worker with 4 threads, and 4 naps sent at once: first awaited, then blocking
    with running(fake_e12.broker, threads=4):
        awaited, awaited_held = naps(fake_e12, blocking=False)
        blocked, blocked_held = naps(fake_e12, blocking=True)
    # then in both runs the 4 worker threads held the 4 messages at once (each started before any ended)
    for held in (awaited_held, blocked_held):
        assert max(start for start, _ in held) < min(end for _, end in held), held
    # await asyncio.sleep: the 4 naps overlap on the loop, every one started before the first ended
    assert len(awaited) == 4 and max(start for start, _ in awaited) < min(end for _, end in awaited), awaited
    # time.sleep inside async def: the loop ran them one after another, each starting once the one before
    # it ended: 4 naps' time in all
    one_after_another = [later[0] >= earlier[1] for earlier, later in pairwise(blocked)]
    assert len(blocked) == 4 and one_after_another == [True, True, True], blocked


def test_calling_an_async_actor_directly_needs_the_event_loop_thread(fake_e12):
    # Given no worker running in this process, a direct call has no event loop to run on
    with pytest.raises(RuntimeError, match="Global event loop thread not set"):
        fake_e12.async_nap(1, 0)
    # to unit-test the coroutine itself, run the function underneath in a loop of the test's own
    assert asyncio.run(fake_e12.async_nap.fn.__wrapped__(1, 0)) is None
    # while a worker with AsyncIO runs in this process, the direct call borrows its loop
    with running(fake_e12.broker, threads=1):
        assert fake_e12.async_nap(1, 0) is None


def test_two_workers_in_one_process_share_one_event_loop_and_stopping_one_breaks_the_other():
    broker, first = stub_with_worker()
    broker.add_middleware(AsyncIO())
    second = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)

    @dramatiq.actor(broker=broker, max_retries=0)
    async def hello() -> None:
        pass

    first.start()
    replaced = get_event_loop_thread()
    try:
        # when a second worker starts in the same process, its AsyncIO replaces the global loop thread
        second.start()
        assert get_event_loop_thread() is not replaced
        # and stopping the first worker stops the *second* one's loop, and clears the global
        first.stop()
        assert get_event_loop_thread() is None
        # while the first loop runs on, and it is not a daemon thread: the interpreter would wait for it at exit
        assert replaced.is_alive() and not replaced.daemon
        # so the second worker's async actors fail
        hello.send()
        with pytest.raises(RuntimeError, match="Global event loop thread not set"):
            broker.join(hello.queue_name, timeout=5000)
    finally:
        second.stop()  # (its AsyncIO finds no loop to stop: Dramatiq logs a CRITICAL AttributeError)
        replaced.stop()  # the first loop, still running, and not a daemon: left alone, pytest would hang


# -- writing middleware ----------------------------------------------------------------------------


def test_an_actor_option_must_be_declared_by_a_middleware(fake_e12):
    broker = StubBroker()
    # Given a broker without KillSwitch, declaring an actor with kill_switch= fails at once
    with pytest.raises(ValueError, match="The following actor options are undefined: kill_switch"):
        dramatiq.actor(lambda: None, broker=broker, actor_name="guarded", kill_switch="reports")
    # with the middleware that declares it in actor_options, it is an option like max_retries
    broker.add_middleware(fake_e12.KillSwitch())
    guarded = dramatiq.actor(lambda: None, broker=broker, actor_name="guarded", kill_switch="reports")
    assert guarded.options == {"kill_switch": "reports"} and "kill_switch" in broker.actor_options
    # a message's options are not checked at all: a typo is sent as it is
    assert guarded.send_with_options(kill_swich="reports").options == {"kill_swich": "reports"}


def test_an_option_declared_on_the_actor_is_not_in_the_message_options(fake_e12):
    report = fake_e12.switched_report
    # Given switched_report, declared with kill_switch="reports"
    assert report.options["kill_switch"] == "reports"
    # then its messages do not carry it: a middleware that reads only message.options never sees it
    message = report.message(1)
    assert "kill_switch" not in message.options
    assert fake_e12.option(fake_e12.broker, message, "kill_switch") == "reports"  # e12 reads both
    # and a message option wins over the actor's
    other = report.message_with_options(args=(1,), kill_switch="other")
    assert fake_e12.option(fake_e12.broker, other, "kill_switch") == "other"


def test_skip_message_drops_the_message_acked_without_retry_or_dead_letter(e12, broker, recorder, start_worker,
                                                                         caplog):
    caplog.set_level(logging.INFO)
    # Given the kill switch "reports" off (a key in Redis), when a report is sent
    broker.client.set(lab.key(broker, e12.SWITCH.format("reports")), "off")
    skipped = e12.switched_report.send(1)
    start_worker()
    broker.join("e12", timeout=5000)
    # then it was skipped: the actor did not run, nothing was retried, nothing is in the dead letters
    assert [(a.message_id, a.outcome) for a in recorder.attempts] == [(skipped.message_id, "skipped")]
    assert "report 1" not in caplog.text
    assert len(recorder.enqueues) == 1 and lab.dead_letters(broker, "e12") == []
    assert ("WARNING", "Message switched_report(1) was skipped.") in [
        (r.levelname, r.getMessage()) for r in caplog.records]
    # and with the switch on again, the next report runs
    broker.client.delete(lab.key(broker, e12.SWITCH.format("reports")))
    e12.switched_report.send(2)
    broker.join("e12", timeout=5000)
    assert [a.outcome for a in recorder.attempts] == ["skipped", "ok"]


class Tap(Middleware):
    """Writes the hooks it sees into a trace."""

    def __init__(self, name: str, trace: list[str]) -> None:
        self.name, self.trace = name, trace

    def before_process_message(self, broker, message) -> None:
        self.trace.append(f"{self.name}.before_process_message")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.trace.append(f"{self.name}.after_process_message")

    def after_skip_message(self, broker, message) -> None:
        self.trace.append(f"{self.name}.after_skip_message")


def test_skip_message_stops_the_before_hooks_after_it_yet_every_after_skip_hook_runs(fake_e12):
    broker, trace = fake_e12.broker, []
    # Given taps on both sides of KillSwitch in the middleware list: [..., tap_a, KillSwitch, tap_b, ...]
    at = next(i for i, m in enumerate(broker.middleware) if type(m).__name__ == "KillSwitch")
    broker.middleware[at:at + 1] = [Tap("tap_a", trace), broker.middleware[at], Tap("tap_b", trace)]
    broker.client.set(lab.key(broker, fake_e12.SWITCH.format("reports")), "off")
    # when KillSwitch raises SkipMessage
    fake_e12.switched_report.send(1)
    with running(broker, threads=1):
        broker.join("e12", timeout=5000)
    # then the before hooks after it never ran, but every middleware got after_skip_message, in reverse
    assert trace == ["tap_a.before_process_message", "tap_b.after_skip_message", "tap_a.after_skip_message"]


class Refused(MiddlewareError):
    """A middleware's own error: a MiddlewareError, but not SkipMessage."""


def test_another_exception_in_a_before_hook_is_logged_and_the_actor_runs_anyway(caplog):
    # Given a middleware whose before hook is broken (ours was, before it had a logger: AttributeError),
    # and whose after hook raises even a MiddlewareError
    class Broken(Middleware):
        def before_process_message(self, broker, message) -> None:
            raise AttributeError("'Broken' object has no attribute 'logger'")

        def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
            raise Refused("too late to refuse")

    broker, worker = stub_with_worker()
    broker.add_middleware(broken := Broken())
    ran = []

    @dramatiq.actor(broker=broker)
    def guarded() -> None:
        ran.append(1)

    # when a message comes
    worker.start()
    try:
        guarded.send()
        broker.join(guarded.queue_name, timeout=5000)
        worker.join()
    finally:
        worker.stop()
    # then the actor ran anyway, and the message was acked: no dead letter
    assert ran == [1] and broker.dead_letters == []
    # and each hook's exception was logged at CRITICAL, and went no further
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "Unexpected failure" in r.getMessage()] == [
        ("CRITICAL", f"Unexpected failure in before_process_message of {broken!r}."),
        ("CRITICAL", f"Unexpected failure in after_process_message of {broken!r}.")]


def test_any_middleware_error_in_a_before_hook_stops_the_actor_and_counts_as_its_failure(caplog):
    # Given a middleware whose before hook raises its own MiddlewareError, which is not SkipMessage
    class Gate(Middleware):
        def before_process_message(self, broker, message) -> None:
            raise Refused("the gate is closed")

    broker, worker = stub_with_worker()
    broker.add_middleware(Gate())
    ran = []

    @dramatiq.actor(broker=broker, max_retries=1, min_backoff=10, max_backoff=20)
    def gated() -> None:
        ran.append(1)

    # when a message comes, then join re-raises the middleware's error: the message is dead
    worker.start()
    try:
        message = gated.send()
        with pytest.raises(Refused, match="the gate is closed"):
            broker.join(gated.queue_name, timeout=5000)
        worker.join()
    finally:
        worker.stop()
    # the actor never ran, and the message went the way of an actor's error, not of a skip:
    # logged at ERROR, retried once (max_retries=1), then dead-lettered
    assert ran == []
    assert [m.message_id for m in broker.dead_letters] == [message.message_id]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [("ERROR", "Failed to process message gated() with unhandled exception."),
                     ("ERROR", "Failed to process message gated() with unhandled exception."),
                     ("WARNING", f"Retries exceeded for message {message.message_id!r}.")], lines


def hook_trace(caplog) -> list[str]:
    """The middleware's lines, and Retries' verdict, in the order they were logged."""
    return [r.getMessage().split(" ")[0] if r.name == "e12_async_and_middleware" else "Retries: " + r.getMessage()[:16]
            for r in caplog.records if r.name in ("e12_async_and_middleware", "dramatiq.middleware.retries.Retries")]


def test_after_hooks_run_in_reverse_so_a_middleware_added_last_sees_the_outcome_before_retries(fake_e12, caplog):
    caplog.set_level(logging.INFO)
    broker = fake_e12.broker
    # Given Stopwatch added last (after Retries), when a report fails for good (n=0, max_retries=0)
    fake_e12.switched_report.send(0)
    with running(broker, threads=1):
        broker.join("e12", timeout=5000)
        trace = hook_trace(caplog)
        # then the before hooks ran in list order, the after hooks in reverse: Stopwatch's before Retries'
        assert trace == ["KillSwitch.before_process_message", "Stopwatch.before_process_message",
                         "Stopwatch.after_process_message", "Retries: Retries exceeded"], trace
        # so Stopwatch saw the error, but not yet the verdict: failed=False, though Retries then failed it
        assert "raised ValueError, failed=False" in caplog.text
        # moved first in the list (as the lab's Recorder is), its after hook runs last: it sees failed=True
        caplog.clear()
        stopwatch = next(m for m in broker.middleware if type(m).__name__ == "Stopwatch")
        broker.middleware.remove(stopwatch)
        broker.middleware.insert(0, stopwatch)
        fake_e12.switched_report.send(0)
        broker.join("e12", timeout=5000)
    assert hook_trace(caplog)[-2:] == ["Retries: Retries exceeded", "Stopwatch.after_process_message"]
    assert "raised ValueError, failed=True" in caplog.text


def test_e12_adds_each_middleware_once_and_leaves_other_experiments_actors_alone(broker, load, recorder,
                                                                                start_worker, caplog):
    caplog.set_level(logging.INFO)
    # Given a broker that already has AsyncIO (another experiment added it), when e02 and e12 are loaded
    broker.add_middleware(AsyncIO())
    e02, e12 = load("e02"), load("e12")
    # then e12 added no second AsyncIO (two would start two loops, and leak one), and its own once
    names = [type(m).__name__ for m in broker.middleware]
    assert [names.count(n) for n in ("AsyncIO", "KillSwitch", "Stopwatch")] == [1, 1, 1]
    assert names[0] == "Recorder" and "same type twice" not in caplog.text
    # and e02's actor runs as before: e12's middleware look only at actors that declare their options
    start_worker()
    e02.handled.send(3)
    broker.join("e02", timeout=5000)
    assert [a.outcome for a in recorder.attempts_of("handled")] == ["ok"]
    assert [r.getMessage() for r in caplog.records if r.name == e12.__name__] == []


@pytest.mark.e2e
def test_worker_cli_runs_async_actors_and_skips_reports_while_the_switch_is_off(real_redis_url, dramatiq_worker,
                                                                               sender):
    worker = dramatiq_worker("--threads", "2", "e12_async_and_middleware", url=real_redis_url)
    assert worker.output.count("Event loop is running.") == 1  # AsyncIO: one loop for the worker process
    redis.Redis.from_url(real_redis_url).set("dramatiq:e12:off:reports", "off")  # what `switch off` does
    assert sender("e12_async_and_middleware.py", "report", "7", url=real_redis_url).returncode == 0
    worker.wait_for(r"Message switched_report\(7\) was skipped")
    asked = sender("e12_async_and_middleware.py", "whoami", url=real_redis_url)
    assert asked.returncode == 0, asked.stderr
    sent_id = asked.stdout.split("id=")[1].split()[0]
    assert f"the actor saw {sent_id} (sent {sent_id})" in asked.stdout
    assert "report 7" not in worker.output
    assert worker.stop() == 0


def test_switch_sets_and_deletes_the_key_that_every_worker_reads(fake_e12):
    key = lab.key(fake_e12.broker, "e12:off:reports")
    result = CliRunner().invoke(fake_e12.main, ["switch", "off"])
    assert result.exit_code == 0 and fake_e12.broker.client.get(key) == b"off", result.output
    assert result.output == f"switch 'reports' is off: key {key} set\n"
    CliRunner().invoke(fake_e12.main, ["switch", "on", "--name", "reports"])
    assert fake_e12.broker.client.exists(key) == 0


@pytest.mark.parametrize(("args", "says"), [
    (["nap", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=100."),
    (["report", "0"], "Invalid value for 'N': 0 is not in the range 1<=x<=1000."),
    (["switch", "off", "--name", "emails"], "Invalid value for '--name': 'emails' is not 'reports'."),
    (["switch", "maybe"], "Invalid value for 'on|off': 'maybe' is not one of 'on', 'off'."),
    (["switch"], "Missing argument 'on|off'."),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(fake_e12, args, says):
    result = CliRunner().invoke(fake_e12.main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output
