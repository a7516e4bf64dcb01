"""Experiment 11: testing your own actors. These tests are the examples: copy them.

The first fixtures are the ones Dramatiq's own test suite uses: a fresh StubBroker per
test and a Worker that polls every 100 ms. A test sends, waits with ``broker.join(queue,
timeout=...)`` then ``worker.join()``, and asserts on what the actors did. The last
tests run the same story on a real Redis through the lab's ``broker`` fixture, which is
parametrized over fakeredis and redis-server (tests/conftest.py).
"""

from __future__ import annotations

import decimal
import inspect
import subprocess
import sys
import threading
from types import ModuleType
from urllib.parse import urlsplit

import lab
from lab import experiments

import dramatiq
import fakeredis
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import Retries

from conftest import ROOT

JOIN_MS = 5_000  # every join has a timeout: a stuck test fails in 5 s instead of hanging


# -- the fixtures (Dramatiq's own tests/conftest.py does the same) ---------------------------


@pytest.fixture
def stub_broker():
    broker = StubBroker()  # since Dramatiq 2.0, join() re-raises a failed message's exception
    broker.emit_after("process_boot")  # what the dramatiq CLI sends each worker process (TimeLimit starts here)
    broker.lab_url = lab.MEMORY_URL  # the lab's bookkeeping only: your project does not need this line
    lab.use_broker(broker)  # in your project: dramatiq.set_broker(broker), before importing your actors
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def e11(stub_broker) -> ModuleType:
    """The module under test, imported after the broker is set: its actors are declared on the stub."""
    return experiments.load(experiments.find("e11"))


@pytest.fixture
def stub_worker(stub_broker, e11):
    worker = dramatiq.Worker(stub_broker, worker_timeout=100, worker_threads=2)  # notices new work in 0.1 s
    worker.start()
    yield worker
    worker.stop()


class Enqueues(dramatiq.Middleware):
    """Every message put on a queue, with its delay: the first send, each retry, each delayed send."""

    def __init__(self) -> None:
        self.seen: list[tuple[Message, int | None]] = []

    def after_enqueue(self, broker, message, delay) -> None:
        self.seen.append((message, delay))


@pytest.fixture
def enqueues(stub_broker) -> Enqueues:
    stub_broker.add_middleware(recorder := Enqueues())
    return recorder


def run_what_was_sent(broker: StubBroker, worker: dramatiq.Worker, queue: str = "e11") -> None:
    """The honest stand-in for an "eager mode": the messages run on a real Worker, through JSON and
    every middleware, and the test waits for them, 5 s at most. A failed message re-raises here."""
    broker.join(queue, timeout=JOIN_MS)
    worker.join()


# -- send, join, assert ------------------------------------------------------------------------


def test_send_then_join_and_the_actor_has_run(e11, stub_broker, stub_worker):
    # Given a worker on a StubBroker, when the code under test sends a message
    e11.send_receipt.send("ada@example.com", {1: 2, 3: 1})
    # and the test waits for the queue, then for the worker
    run_what_was_sent(stub_broker, stub_worker)
    # then the actor has run, exactly once: 2 x 2.50 + 1 x 4.99
    assert e11.OUTBOX == ["to ada@example.com: 3 item(s), 9.99 EUR"]
    # (broker.join takes a timeout, Worker.join() none: call it once a broker.join with a timeout returned)
    assert list(inspect.signature(stub_worker.join).parameters) == []


def test_join_waits_for_the_delay_queue_and_counts_a_dead_letter_as_done(e11, stub_broker, stub_worker):
    # Given a receipt due in 100 ms, on e11.DQ, and a reminder that fails for good (no retries)
    e11.send_receipt.send_with_options(args=("ada@example.com", {2: 1}), delay=100)
    failed = e11.remind.send_with_options(args=("nobody",), max_retries=0)
    # when the test joins e11 (fail_fast=False: the failure is expected here)
    stub_broker.join("e11", timeout=JOIN_MS, fail_fast=False)
    # then join waited for the delayed receipt too: it has run, though worker.join() was not called yet
    assert e11.OUTBOX == ["to ada@example.com: 1 item(s), 10.00 EUR"]
    # and join returned once the reminder was nacked: it counts as done, in the dead letters
    assert [m.message_id for m in stub_broker.dead_letters] == [failed.message_id]
    stub_worker.join()


def test_a_failing_actor_with_default_retries_makes_join_wait_15_s_or_more(e11, stub_broker, stub_worker, enqueues):
    # Given remind, declared with Dramatiq's default retries, and an input that makes it fail
    message = e11.remind.send("not-an-address")
    # when the test joins (with a timeout, or it would wait for the retries: about a month of them)
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join("e11", timeout=300)
    # then the message is not lost, nor failed: Retries put it back, on the delay queue, 15 to 30 s away
    retries = [(m.queue_name, m.options["retries"], delay) for m, delay in enqueues.seen
               if m.message_id == message.message_id and delay is not None]
    assert len(retries) == 1 and retries[0][:2] == ("e11.DQ", 1), retries
    assert 15_000 <= retries[0][2] <= 30_000, retries  # min_backoff 15 s, and jitter only adds
    assert stub_broker.dead_letters == [] and e11.OUTBOX == []  # no reminder sent, no dead letter


def test_max_retries_0_or_small_backoffs_make_join_return_at_once(e11, stub_broker, stub_worker, enqueues):
    # Given the same failing message, sent with max_retries=0: join returns at once, with the actor's error
    e11.remind.send_with_options(args=("not-an-address",), max_retries=0)
    with pytest.raises(ValueError, match="not an e-mail address"):
        run_what_was_sent(stub_broker, stub_worker)
    stub_broker.flush_all()  # (the dead letter would make the next join raise too; see below)
    # or with small backoffs: it is retried twice, 10-20 ms apart, then join raises
    message = e11.remind.send_with_options(args=("still-not",), max_retries=2, min_backoff=10, max_backoff=20)
    with pytest.raises(ValueError, match="still-not"):
        run_what_was_sent(stub_broker, stub_worker)
    backoffs_ms = [delay for m, delay in enqueues.seen if m.message_id == message.message_id and delay]
    assert len(backoffs_ms) == 2 and all(10 <= d <= 20 for d in backoffs_ms), backoffs_ms


def test_a_test_brokers_retries_setting_reaches_only_actors_without_their_own(e11, stub_broker, stub_worker,
                                                                             enqueues):
    # Given the test broker's Retries middleware set to no retries, for every actor at once
    retries = next(m for m in stub_broker.middleware if isinstance(m, Retries))
    retries.max_retries = 0
    # then remind, which sets no max_retries of its own, fails for good on its first error
    e11.remind.send("nobody")
    with pytest.raises(ValueError, match="'nobody'"):
        run_what_was_sent(stub_broker, stub_worker)
    stub_broker.flush_all()
    # but an option on the message wins: remind, sent with max_retries=1, is retried once, 10 to 20 ms later
    once = e11.remind.send_with_options(args=("nobody-else",), max_retries=1, min_backoff=10, max_backoff=20)
    with pytest.raises(ValueError, match="'nobody-else'"):
        run_what_was_sent(stub_broker, stub_worker)
    backoffs_ms = [d for m, d in enqueues.seen if m.message_id == once.message_id and d]
    assert len(backoffs_ms) == 1 and 10 <= backoffs_ms[0] <= 20, backoffs_ms
    # and so does the actor's own: send_receipt, declared with max_retries=3, is still retried, 100 to 200 ms later
    message = e11.send_receipt.send("ada@example.com", {9: 1})  # there is no product 9
    retried = lambda: [d for m, d in enqueues.seen if m.message_id == message.message_id and d]  # noqa: E731
    assert lab.wait_until(retried, timeout=2) and 100 <= retried()[0] <= 200, retried()


# -- fail_fast ------------------------------------------------------------------------------


def test_join_re_raises_the_actors_own_exception_once_the_message_is_dead(e11, stub_broker, stub_worker):
    # Given a message that fails for good (no retries)
    e11.remind.send_with_options(args=("nobody",), max_retries=0)
    # when the test joins, then join raises the actor's own exception, with its traceback
    with pytest.raises(ValueError, match="not an e-mail address: 'nobody'") as raised:
        run_what_was_sent(stub_broker, stub_worker)
    assert raised.traceback[-1].path.name == "e11_testing.py"  # it points at the line in the actor
    # It raises once the queues are done, not at the failure: a receipt due 200 ms later ran first
    stub_broker.flush_all()
    e11.remind.send_with_options(args=("nobody",), max_retries=0)
    e11.send_receipt.send_with_options(args=("ada@example.com", {2: 1}), delay=200)
    with pytest.raises(ValueError, match="'nobody'"):
        run_what_was_sent(stub_broker, stub_worker)
    assert e11.OUTBOX == ["to ada@example.com: 1 item(s), 10.00 EUR"]
    # When the failure is the point of the test, fail_fast=False waits without raising
    stub_broker.flush_all()  # forget the first one (see the next test)
    failed = e11.remind.send_with_options(args=("nobody-else",), max_retries=0)
    stub_broker.join("e11", timeout=JOIN_MS, fail_fast=False)
    stub_worker.join()
    # and the test asserts on the dead letters instead
    assert [m.message_id for m in stub_broker.dead_letters] == [failed.message_id]


def test_a_dead_letter_makes_every_later_join_raise_until_flush_all(e11, stub_broker, stub_worker):
    # Given a message that failed for good, joined with fail_fast=False
    e11.remind.send_with_options(args=("nobody",), max_retries=0)
    stub_broker.join("e11", timeout=JOIN_MS, fail_fast=False)
    # when a later message succeeds, then join still raises the old failure: it is still in the dead letters
    e11.remind.send("ada@example.com")
    with pytest.raises(ValueError, match="'nobody'"):
        run_what_was_sent(stub_broker, stub_worker)
    assert e11.OUTBOX == ["reminder to ada@example.com"]
    # flush_all() forgets the dead letters (so does a fresh broker per test, as the fixture builds)
    stub_broker.flush_all()
    e11.remind.send("bob@example.com")
    run_what_was_sent(stub_broker, stub_worker)
    assert e11.OUTBOX == ["reminder to ada@example.com", "reminder to bob@example.com"]


# -- calling the actor directly ------------------------------------------------------------------


def test_a_direct_call_runs_the_function_here_without_broker_or_worker(e11, stub_broker, enqueues):
    # Given no worker at all, when the test calls the actor like a function
    assert e11.send_receipt("ada@example.com", {2: 1}) is None
    # then it ran in the test's own thread, and nothing was enqueued
    assert e11.OUTBOX == ["to ada@example.com: 1 item(s), 10.00 EUR"]
    assert enqueues.seen == [] and stub_broker.queues["e11"].qsize() == 0
    # and its error is raised right here, on the first try: retries and other options play no part
    with pytest.raises(ValueError, match="not an e-mail address"):
        e11.remind("nobody")
    assert threading.current_thread() is threading.main_thread()


def test_a_direct_call_passes_an_argument_that_send_cannot_serialize(e11, stub_broker, enqueues):
    # Given quantities that came from a form as Decimal
    quantities = {1: decimal.Decimal(2)}
    # then a direct call is happy with them
    e11.send_receipt("ada@example.com", quantities)
    assert e11.OUTBOX == ["to ada@example.com: 2 item(s), 5.00 EUR"]
    # but send() fails, before anything is enqueued: a message is JSON
    with pytest.raises(TypeError, match="Object of type Decimal is not JSON serializable"):
        e11.send_receipt.send("ada@example.com", quantities)
    assert enqueues.seen == []


def test_json_turns_int_keys_into_strings_which_a_direct_call_never_shows(e11, stub_broker, stub_worker):
    # Given send_receipt as it would be without int(): PRICES[product] with the key as it comes
    def buggy_receipt(email: str, quantities: dict) -> None:
        e11.OUTBOX.append(f"{sum(e11.PRICES[p] * n for p, n in quantities.items()) / 100:.2f}")

    buggy = dramatiq.actor(buggy_receipt, broker=stub_broker, queue_name="e11", max_retries=0)
    # then a direct call passes
    buggy("ada@example.com", {1: 2})
    assert e11.OUTBOX == ["5.00"]
    # but what a worker receives went through JSON, where keys are strings
    sent = buggy.send("ada@example.com", {1: 2})
    assert Message.decode(sent.encode()).args == ("ada@example.com", {"1": 2})
    assert Message.decode(buggy.message("ada@example.com", (1, 2)).encode()).args[1] == [1, 2]  # tuples: lists
    with pytest.raises(KeyError, match="'1'"):
        run_what_was_sent(stub_broker, stub_worker)
    # e11's own actor converts the key back, and passes the same trip
    stub_broker.flush_all()
    e11.send_receipt.send("ada@example.com", {1: 2})
    run_what_was_sent(stub_broker, stub_worker)
    assert e11.OUTBOX == ["5.00", "to ada@example.com: 2 item(s), 5.00 EUR"]


# -- why there is no eager mode -----------------------------------------------------------------


class EagerBroker(StubBroker):
    """The "run it at once" broker proposed in Dramatiq issue 195: enqueue() calls the actor.

    Dramatiq declined to ship one (issues 195 and 689). It is here to show what it would hide.
    """

    def enqueue(self, message, *, delay=None):
        self.get_actor(message.actor_name)(*message.args, **message.kwargs)
        return message


def test_an_eager_broker_would_hide_the_json_bug_and_run_a_delayed_message_at_once():
    # Given the buggy receipt and e11's reminder on an eager broker
    eager = EagerBroker()
    outbox = []

    @dramatiq.actor(broker=eager, queue_name="e11")
    def buggy_receipt(email: str, quantities: dict) -> None:
        outbox.append(sum({1: 250}[p] * n for p, n in quantities.items()))

    @dramatiq.actor(broker=eager, queue_name="e11")
    def remind(email: str) -> None:
        outbox.append(f"reminder to {email}")

    # when the code under test sends, then the JSON bug does not show: the int key was never encoded
    buggy_receipt.send("ada@example.com", {1: 2})
    # and a reminder due in a day ran now, in the caller's thread
    remind.send_with_options(args=("ada@example.com",), delay=24 * 3600 * 1000)
    assert outbox == [500, "reminder to ada@example.com"]


# -- time ---------------------------------------------------------------------------------------


def test_a_delay_is_tested_by_reading_the_eta_not_by_sleeping(e11, stub_broker):
    # Given code that sends a reminder due in a day
    before = current_millis()
    message = e11.remind_later("ada@example.com")
    after = current_millis()
    # then the message the broker returned is on the delay queue, due in a day: no need to wait a day
    assert message.queue_name == "e11.DQ"
    assert before + e11.DAY_MS <= message.options["eta"] <= after + e11.DAY_MS
    assert e11.OUTBOX == []
    # (to run its logic now, call the actor directly: see above)


# -- the same story on a real Redis: the lab's fixtures, parametrized over brokers ----------------


def test_the_same_story_runs_on_fakeredis_and_redis_server_through_a_parametrized_fixture(request, load, broker,
                                                                                          start_worker):
    # Given the lab's broker fixture: a RedisBroker on fakeredis, then on the session's real redis-server
    if request.node.callspec.params["broker_url"] == "fakeredis":
        assert isinstance(broker.client, fakeredis.FakeRedis)
    else:
        redis_server = urlsplit(request.getfixturevalue("redis_server"))
        assert broker.client.info("server")["tcp_port"] == redis_server.port  # fakeredis has no INFO at all
    e11 = load("e11")
    start_worker()
    # when the same message is sent and joined
    e11.send_receipt.send("ada@example.com", {1: 2, 3: 1})
    broker.join("e11", timeout=JOIN_MS)
    # then the actor ran, on each broker
    assert e11.OUTBOX == ["to ada@example.com: 3 item(s), 9.99 EUR"]


def test_a_redis_broker_join_returns_quietly_when_the_actor_failed(load, broker, start_worker):
    # Given a message that fails for good, on a RedisBroker (which has no fail_fast)
    e11 = load("e11")
    start_worker()
    message = e11.remind.send_with_options(args=("nobody",), max_retries=0)
    # when the test joins, then join returns without a word: a green join proves nothing here
    broker.join("e11", timeout=JOIN_MS)
    # the failure shows only in what the test asserts: nothing sent, one dead letter
    assert e11.OUTBOX == []
    assert [d.message.message_id for d in lab.dead_letters(broker, "e11")] == [message.message_id]


# -- the demo -----------------------------------------------------------------------------------


def test_demo_runs_the_example_tests_with_pytest_and_exits_0():
    result = subprocess.run([sys.executable, "e11_testing.py", "demo", "-k", "eta_not_by_sleeping"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and result.stdout.startswith("pytest tests/test_e11_testing.py")
