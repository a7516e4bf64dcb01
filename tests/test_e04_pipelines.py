"""e04: pipelines, groups and results, each finding on fakeredis and on a real redis-server.

Messages that fail on purpose carry max_retries=0, so they fail for good at once
(Dramatiq's default would retry for hours); a broken lesson then fails fast too.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from types import ModuleType, SimpleNamespace

import lab
from lab.keys import key

import dramatiq
import pytest
import redis
from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import ResultFailure, ResultMissing, Results, ResultTimeout
from dramatiq.results.backends import RedisBackend

from conftest import ROOT, lab_env

QUEUE = "e04"
WAIT_MS = 4000  # for a result that should come; under redis-py 8's 5 s socket timeout
FAIL = dict(kwargs={"fail": True}, max_retries=0)


@pytest.fixture
def e04(load, recorder) -> ModuleType:
    """The experiment, bound to this test's broker, with a recorder on it (no worker yet)."""
    return load("e04")


@pytest.fixture
def worker(e04, start_worker) -> dramatiq.Worker:
    return start_worker(threads=2)


def settle(broker) -> None:
    broker.join(QUEUE, interval=20, timeout=WAIT_MS)


def args_of(recorder, actor: str) -> list[tuple]:
    return [a.args for a in recorder.attempts if a.actor == actor]


# -- pipelines -------------------------------------------------------------------------------


def test_each_step_gets_the_previous_result_as_its_last_argument(e04, worker, recorder):
    pipe = dramatiq.pipeline([e04.add.message(3, 1), e04.double.message(), e04.power.message(2)]).run()

    assert pipe.get_result(block=True, timeout=WAIT_MS) == 256  # power(2, 8); first would be power(8, 2) = 64
    assert args_of(recorder, "double") == [(4,)]
    assert args_of(recorder, "power") == [(2, 8)]


def test_pipe_ignore_keeps_the_previous_result_out_of_the_arguments(e04, worker, recorder):
    # Without pipe_ignore the second step would be add(10, 20, 3): a TypeError, and max_retries=0 fails it.
    receiving = e04.add.message_with_options(args=(10, 20), pipe_ignore=True, max_retries=0)
    pipe = (e04.add.message(1, 2) | receiving).run()

    assert pipe.get_result(block=True, timeout=WAIT_MS) == 30
    assert args_of(recorder, "add") == [(1, 2), (10, 20)]


def test_an_actors_pipe_ignore_is_read_from_the_actor_that_sent_the_result(e04, worker, recorder):
    # stamp is declared with pipe_ignore=True. Between two steps, it still receives add's result,
    # and it is stamp's own result that the next step does not receive.
    pipe = (e04.add.message(1, 2) | e04.stamp.message("got") | e04.add.message(10, 20)).run()

    assert pipe.get_result(block=True, timeout=WAIT_MS) == 30
    assert args_of(recorder, "stamp") == [("got", 3)]
    assert args_of(recorder, "add") == [(1, 2), (10, 20)]


def test_a_step_that_fails_for_good_stops_the_pipeline(e04, worker, broker, recorder):
    (e04.add.message(1, 1) | e04.square.message_with_options(**FAIL) | e04.double.message()).run()
    settle(broker)

    assert [(a.args, a.outcome) for a in recorder.attempts if a.actor == "square"] == [((2,), "failed")]
    assert args_of(recorder, "double") == []


def test_a_step_that_will_be_retried_holds_the_pipeline_until_a_retry_succeeds(e04, worker, broker, recorder):
    # Given a middle step that fails on its first try and succeeds on its retry
    @dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=1, min_backoff=20, max_backoff=40)
    def flaky_increment(x: int) -> int:
        if CurrentMessage.get_current_message().options.get("retries", 0) == 0:
            raise ValueError("the first try fails")
        return x + 1

    # when it runs in a pipeline
    pipe = (e04.add.message(1, 1) | flaky_increment.message() | e04.double.message()).run()

    # then the next step runs once, with the retry's result: the failed try sent nothing on
    assert pipe.get_result(block=True, timeout=WAIT_MS) == 6
    settle(broker)
    assert [(a.args, a.outcome) for a in recorder.attempts if a.actor == "flaky_increment"] == [
        ((2,), "retried"), ((2,), "ok")]
    assert args_of(recorder, "double") == [(3,)]


def test_the_pipeline_result_is_the_last_steps_result(e04, worker):
    pipe = (e04.add.message(3, 1) | e04.double.message() | e04.power.message(2)).run()

    assert pipe.get_result(block=True, timeout=WAIT_MS) == 256
    assert list(pipe.get_results()) == [4, 8, 256]  # every step's, when each stores results


def test_a_pipeline_cannot_contain_a_group(e04):
    members = dramatiq.group([e04.square.message(1), e04.square.message(2)])

    with pytest.raises(AttributeError, match="'group' object has no attribute 'copy'"):
        dramatiq.pipeline([e04.add.message(1, 2), members])
    with pytest.raises(TypeError):
        members | e04.double.message()  # noqa: B018


# -- groups ----------------------------------------------------------------------------------


def test_a_group_runs_every_member_and_get_results_keeps_their_order(e04, worker):
    fan_out = dramatiq.group(e04.square.message(i) for i in range(1, 7)).run()

    assert list(fan_out.get_results(block=True, timeout=WAIT_MS)) == [1, 4, 9, 16, 25, 36]


def test_a_groups_members_run_at_the_same_time_on_the_workers_threads(e04, worker, broker, recorder):
    # Given two members that can only finish together: each waits for the other at a barrier
    meeting = threading.Barrier(2, timeout=2)

    @dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
    def meet() -> None:
        meeting.wait()

    # when the group runs on a worker with 2 threads
    dramatiq.group([meet.message(), meet.message()]).run()

    # then both ran at once, one on each thread, and both got past the barrier
    assert lab.wait_until(lambda: len(recorder.attempts) == 2 and all(a.ended for a in recorder.attempts), timeout=5)
    assert [a.outcome for a in recorder.attempts] == ["ok", "ok"]
    assert len({a.thread for a in recorder.attempts}) == 2


def test_the_completion_callback_runs_once_after_every_member_succeeded(e04, start_worker, broker, recorder):
    start_worker(threads=1)  # members one after another: "after the last one" is then a strict order
    fan_out = dramatiq.group(e04.square.message(i) for i in range(1, 6))
    callback = e04.group_done.message(5)
    fan_out.add_completion_callback(callback)
    fan_out.run()

    assert callback.get_result(block=True, timeout=WAIT_MS) == "all 5 members succeeded"
    settle(broker)
    members = [a for a in recorder.attempts if a.actor == "square"]
    [sent] = [e.at for e in recorder.enqueues if e.actor == "group_done"]
    assert len(members) == 5 and all(m.outcome == "ok" and m.started < sent for m in members)
    assert args_of(recorder, "group_done") == [(5,)]


def test_the_completion_callback_never_runs_when_a_member_fails_for_good(e04, worker, broker, recorder):
    failing = e04.square.message_with_options(args=(2,), **FAIL)
    fan_out = dramatiq.group([e04.square.message(1), failing, e04.square.message(3)])
    fan_out.add_completion_callback(e04.group_done.message(3))
    fan_out.run()
    with pytest.raises(ResultFailure):
        failing.get_result(block=True, timeout=WAIT_MS)  # stored once it is dead-lettered: wait for that
    settle(broker)

    assert sorted((a.args, a.outcome) for a in recorder.attempts if a.actor == "square") == [
        ((1,), "ok"), ((2,), "failed"), ((3,), "ok")]
    assert [e for e in recorder.enqueues if e.actor == "group_done"] == []
    results = fan_out.get_results()
    assert next(results) == 1
    with pytest.raises(ResultFailure):
        next(results)  # member 2: get_results stops here, member 3's result is never read


def test_waiting_on_a_group_inside_an_actor_deadlocks_the_only_thread(e04, start_worker, recorder):
    start_worker(threads=1)
    waiting = e04.wait_inside.send(2, 1500)  # the Redis backend waits whole seconds: 1 s

    with pytest.raises(ResultFailure) as failure:
        waiting.get_result(block=True, timeout=WAIT_MS)
    assert failure.value.orig_exc_type == "ResultTimeout"
    [stuck] = [a for a in recorder.attempts if a.actor == "wait_inside"]
    assert lab.wait_until(lambda: len(args_of(recorder, "square")) == 2, timeout=WAIT_MS / 1000)
    assert all(a.started >= stuck.ended for a in recorder.attempts if a.actor == "square")


# -- results ---------------------------------------------------------------------------------


def test_without_store_results_get_result_raises_result_missing(e04, worker, broker, recorder, caplog):
    caplog.set_level(logging.WARNING)
    message = e04.add.send_with_options(args=(2, 2), store_results=False)  # overrides the actor's True
    settle(broker)

    assert [(a.args, a.outcome) for a in recorder.attempts] == [((2, 2), "ok")]
    with pytest.raises(ResultMissing):
        message.get_result()
    with pytest.raises(ResultTimeout):
        message.get_result(block=True, timeout=999)  # (under 1 s the Redis backend does not wait: see below)
    # and the dropped value was logged as a warning
    dropped = [(r.levelname, r.getMessage()) for r in caplog.records if "has been discarded" in r.getMessage()]
    assert dropped == [("WARNING", "Actor 'add' returned a value that is not None, but you haven't set its "
                                   "`store_results' option to `True' so the value has been discarded.")]


def test_a_failed_messages_result_is_stored_after_the_nack_so_join_can_return_before_it(e04, broker, monkeypatch,
                                                                                     start_worker):
    # Given Results' after_nack held back until the test lets it go, as a busy machine can hold it
    [results] = [m for m in broker.middleware if isinstance(m, Results)]
    let_go, store = threading.Event(), results.after_nack
    monkeypatch.setattr(results, "after_nack", lambda *args: (let_go.wait(WAIT_MS / 1000), store(*args))[-1])
    start_worker(threads=1)
    try:
        # when a message fails for good
        failing = e04.square.send_with_options(args=(3,), **FAIL)
        # then join returns once the nack moved it to the dead letters, and its result is still missing
        settle(broker)
        assert [d.message.message_id for d in lab.dead_letters(broker, QUEUE)] == [failing.message_id]
        with pytest.raises(ResultMissing):
            failing.get_result()
    finally:
        let_go.set()
    # and a blocking get_result waits for after_nack to store the ResultFailure
    with pytest.raises(ResultFailure):
        failing.get_result(block=True, timeout=WAIT_MS)


def test_a_failed_messages_result_raises_result_failure(e04, worker, recorder):
    # Given a message that fails for good at once, one retried once before it fails for good,
    # and one that fails for good without storing results
    at_once = e04.square.send_with_options(args=(3,), **FAIL)
    retried = e04.square.send_with_options(args=(4,), kwargs={"fail": True}, max_retries=1, min_backoff=300,
                                           max_backoff=1000)
    unstored = e04.square.send_with_options(args=(5,), store_results=False, **FAIL)

    # then the first one's result is its exception
    with pytest.raises(ResultFailure) as failure:
        at_once.get_result(block=True, timeout=WAIT_MS)
    assert str(failure.value) == "actor raised ValueError: square(3) was told to fail"
    assert (failure.value.orig_exc_type, failure.value.orig_exc_msg) == ("ValueError", "square(3) was told to fail")
    # the retried one has no result while its retry waits (300 ms at least), and its exception once that failed
    tries = lambda: [a.outcome for a in recorder.attempts if a.args == (4,)]  # noqa: E731
    assert lab.wait_until(lambda: tries() == ["retried"], timeout=WAIT_MS / 1000), tries()
    with pytest.raises(ResultMissing):
        retried.get_result()
    with pytest.raises(ResultFailure):
        retried.get_result(block=True, timeout=WAIT_MS)
    assert tries() == ["retried", "failed"]
    # and the one that stores no results has none, not even its exception
    assert [a.outcome for a in recorder.attempts if a.args == (5,)] == ["failed"]
    with pytest.raises(ResultMissing):
        unstored.get_result()


def test_get_result_raises_result_timeout_when_no_result_comes_in_time(e04, broker, monkeypatch):
    message = e04.add.send(1, 2)  # no worker: no result, ever
    started = time.monotonic()

    with pytest.raises(ResultTimeout):
        message.get_result(block=True, timeout=1000)
    assert time.monotonic() - started >= 0.9
    # and without a timeout it would wait 10 s: the Redis backend asks BRPOPLPUSH for 10 (seconds)
    waits = []
    client = broker.get_results_backend().client
    monkeypatch.setattr(client, "brpoplpush", lambda source, destination, seconds: waits.append(seconds))
    with pytest.raises(ResultTimeout):
        message.get_result(block=True)
    assert waits == [10]


def test_the_redis_result_backend_does_not_wait_below_one_second(e04, monkeypatch):
    message = e04.add.send(1, 2)
    started = time.monotonic()

    with pytest.raises(ResultTimeout):
        message.get_result(block=True, timeout=999)  # whole seconds, rounded down: 0, so no wait
    assert time.monotonic() - started < 0.5
    # Given a group of two whose first member's result takes 250 ms to come (on a clock of our own)
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(dramatiq.composition, "time", SimpleNamespace(monotonic=lambda: clock.now))
    asked = []

    def get_result(member, *, backend=None, block=False, timeout=None):
        asked.append(timeout)
        clock.now += 0.25
        return 0

    monkeypatch.setattr(dramatiq.Message, "get_result", get_result)
    # when its results are read with one timeout of 1000 ms
    list(dramatiq.group([e04.add.message(1, 2), e04.add.message(3, 4)]).get_results(block=True, timeout=1000))
    # then the second member gets what is left, 750 ms: under a second, so the Redis backend would not wait
    assert asked == [1000, 750]


def test_a_wait_longer_than_the_socket_timeout_raises_redis_timeout_error(real_redis_url):
    # redis-py 8 defaults socket_timeout to 5 s, less than get_result's default 10 s wait; a 0.2 s
    # socket timeout shows the same in 0.2 s. (Real Redis only: fakeredis has no socket.)
    assert redis.connection.Connection().socket_timeout == 5
    backend = RedisBackend(client=redis.Redis.from_url(real_redis_url, socket_timeout=0.2))
    message = dramatiq.Message(queue_name=QUEUE, actor_name="add", args=(1, 2), kwargs={}, options={})

    with pytest.raises(redis.TimeoutError):
        backend.get_result(message, block=True, timeout=1000)


def test_the_sender_waits_in_slices_of_1_to_4_seconds(monkeypatch):
    # Given a result that is there (the wait asked for is recorded)
    asked = []

    def get_result(message, *, backend=None, block=False, timeout=None):
        asked.append(timeout)
        return 256

    monkeypatch.setattr(dramatiq.Message, "get_result", get_result)
    message = dramatiq.Message(queue_name=QUEUE, actor_name="add", args=(1, 2), kwargs={}, options={})
    # when the sender waits for it with 10 s, 2.5 s and 0.3 s left
    results = [lab.wait_for_result(message, time.monotonic() + left) for left in (10, 2.5, 0.3)]
    # then each wait is the time left in whole seconds, rounded up, and 4 s at most: under redis-py's 5 s
    assert results == [256] * 3 and asked == [4000, 3000, 1000]


def test_the_results_middleware_needs_a_backend_since_dramatiq_2():
    with pytest.raises(TypeError, match="backend"):
        Results()  # a required keyword argument since Dramatiq 2.0 (pull request 728)


def test_store_results_without_the_results_middleware_fails_at_declaration():
    bare = StubBroker()  # Dramatiq's default middleware: no Results

    with pytest.raises(ValueError, match="The following actor options are undefined: store_results"):
        dramatiq.actor(lambda: 1, actor_name="keeps", store_results=True, broker=bare)


def test_a_group_barrier_lives_a_day_by_default(e04, broker, monkeypatch):
    [callbacks] = [m for m in broker.middleware if isinstance(m, GroupCallbacks)]
    assert callbacks.barrier_ttl == 86_400_000  # ms; GroupCallbacks(barrier_ttl=...) to change it
    # Given a group with a completion callback, run with no worker: no member ever counts down
    fan_out = dramatiq.group([e04.square.message(1), e04.square.message(2)])
    fan_out.add_completion_callback(e04.group_done.message(2))
    fan_out.run()
    # then its barrier, keyed by the group's completion uuid, expires in 24 hours
    [barrier] = {dramatiq.Message.decode(data).options["group_completion_uuid"]
                 for data in broker.client.hvals(key(broker, f"{QUEUE}.msgs"))}
    assert 86_390_000 < broker.client.pttl(barrier) <= 86_400_000
    # and the older environment variable still sets the ttl, with a warning that it goes away in 3.0
    monkeypatch.setenv("dramatiq_group_callback_barrier_ttl", "5000")
    with pytest.warns(FutureWarning, match="will be removed in dramatiq v3.0.0"):
        from_env = GroupCallbacks(RedisRateLimiterBackend(client=broker.client))
    assert from_env.barrier_ttl == 5000


def test_a_stored_result_expires_after_ten_minutes_by_default(e04, worker, broker):
    message = e04.add.send(1, 2)
    message.get_result(block=True, timeout=WAIT_MS)

    ttl_ms = broker.client.pttl(broker.get_results_backend().build_message_key(message))
    assert 590_000 < ttl_ms <= 600_000
    # and result_ttl changes it per actor, or per message
    @dramatiq.actor(queue_name=QUEUE, broker=broker, store_results=True, result_ttl=30_000)
    def kept_briefly() -> int:
        return 1

    per_actor = kept_briefly.send()
    per_message = kept_briefly.send_with_options(result_ttl=5_000)
    ttls_ms = []
    for sent in (per_actor, per_message):
        sent.get_result(block=True, timeout=WAIT_MS)
        ttls_ms.append(broker.client.pttl(broker.get_results_backend().build_message_key(sent)))
    assert 20_000 < ttls_ms[0] <= 30_000 and 0 < ttls_ms[1] <= 5_000, ttls_ms


# -- the sender ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["pipeline", "x"], "Invalid value for 'N': 'x' is not a valid integer range."),
    (["pipeline", "-1"], "Invalid value for 'N': -1 is not in the range 0<=x<=1000000."),
    (["group", "0"], "Invalid value for 'N': 0 is not in the range 1<=x<=1000."),
    (["group", "3", "--fail", "4"], "Invalid value for --fail: 4 is not a member of a group of 3"),
    (["group", "3", "--timeout", "0"], "Invalid value for '--timeout': 0 is not in the range 1<=x<=3600."),
])
def test_bad_input_is_a_one_line_usage_error_with_exit_code_2(e04, args, says):
    result = CliRunner().invoke(e04.main, args)

    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and says in result.output, result.output


@pytest.mark.parametrize("error", [redis.ConnectionError, redis.TimeoutError])
def test_redis_failing_while_waiting_exits_3_with_one_line(e04, monkeypatch, error):
    def lost(message, **options):
        raise error("Connection closed by server.")  # what get_result raised when Redis died or hung

    monkeypatch.setattr(dramatiq.Message, "get_result", lost)
    result = CliRunner().invoke(e04.main, ["group", "3"])

    assert result.exit_code == 3
    [sent, error_line] = result.output.splitlines()
    assert sent.startswith("sent a group of 3") and "cannot reach Redis at" in error_line


@pytest.mark.e2e
def test_senders_report_results_and_failures_from_the_dramatiq_cli_worker(dramatiq_worker, sender,
                                                                          real_redis_url):
    dramatiq_worker("e04_pipelines", url=real_redis_url)

    group = sender("e04_pipelines.py", "group", "5", url=real_redis_url)
    assert group.returncode == 0, group.stderr
    assert "results: 1, 4, 9, 16, 25" in group.stdout
    assert "completion callback: all 5 members succeeded" in group.stdout
    pipe = sender("e04_pipelines.py", "pipeline", "3", url=real_redis_url)
    assert pipe.returncode == 0, pipe.stderr
    assert "step results: 4, 8, 256; pipeline result: 256" in pipe.stdout
    failed = sender("e04_pipelines.py", "group", "5", "--fail", "2", url=real_redis_url)
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == [
        "e04_pipelines.py: member 2, square(2, fail=True), failed for good: actor raised ValueError: square(2) "
        "was told to fail; the completion callback group_done never fired: a failed member never counts down "
        "the group's barrier"]


@pytest.mark.e2e
def test_sender_without_a_worker_times_out_with_exit_code_4(sender, real_redis_url):
    result = sender("e04_pipelines.py", "pipeline", "3", "--timeout", "1", url=real_redis_url)

    assert result.returncode == 4
    assert result.stderr.splitlines() == [
        "e04_pipelines.py: no result for add(3, 1) in time: is a worker for queue e04 running?"]


@pytest.mark.e2e
def test_ctrl_c_while_the_sender_waits_exits_130_in_one_line(real_redis_url, tmp_path):
    # Given a sender waiting for results no worker will produce
    out, err = tmp_path / "out", tmp_path / "err"
    waiting = subprocess.Popen([sys.executable, "e04_pipelines.py", "group", "3", "--timeout", "30"], cwd=ROOT,
                               env=lab_env(real_redis_url), stdout=out.open("w"), stderr=err.open("w"))
    try:
        assert lab.wait_until(lambda: "sent a group of 3" in out.read_text(), timeout=15), err.read_text()
        # when the user presses Ctrl-C
        waiting.send_signal(signal.SIGINT)
        # then it exits 130 with one line, and what it sent is still queued, for a worker to run later
        assert waiting.wait(timeout=15) == lab.EXIT_INTERRUPTED == 130
    finally:
        waiting.kill()
    # (click first ends the terminal's "^C" with a newline)
    assert err.read_text().lstrip("\n") == "e04_pipelines.py: interrupted (Ctrl-C)\n"
    assert redis.Redis.from_url(real_redis_url).llen("dramatiq:e04") == 3
