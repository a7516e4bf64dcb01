"""`python -m lab run e11`: the example tests' findings, observed again: on a StubBroker of its own
(e11's functions declared on it again, as a test's fixture would get them), then on the run's broker."""

import decimal

import lab

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import Retries

import e11_testing as e11

ADA = "ada@example.com"


def declare_on(broker: StubBroker, actor: dramatiq.Actor) -> dramatiq.Actor:
    """The same function as another broker's actor: same name, queue and options."""
    return dramatiq.actor(actor.fn, broker=broker, actor_name=actor.actor_name, queue_name=actor.queue_name,
                          **actor.options)


def join(broker: StubBroker, worker: dramatiq.Worker, **options) -> BaseException | None:
    """Join e11 (2 s at most) and the worker; the exception join raised, if any."""
    try:
        broker.join(e11.QUEUE, timeout=options.pop("timeout", 2000), **options)
        worker.join()
    except Exception as exc:  # the point: what join raises
        return exc
    return None


def on_a_stub_broker(run: lab.Run) -> None:
    stub = StubBroker()
    stub.emit_after("process_boot")
    seen = lab.Recorder.install(stub)
    receipt, remind = declare_on(stub, e11.send_receipt), declare_on(stub, e11.remind)
    worker = dramatiq.Worker(stub, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        e11.OUTBOX.clear()
        receipt.send(ADA, {1: 2, 3: 1})
        raised = join(stub, worker)
        run.check("test_send_then_join_and_the_actor_has_run", raised is None and len(e11.OUTBOX) == 1,
                  f"both joins: {len(e11.OUTBOX)} receipt" + (f", join raised {raised!r}" if raised else ""))

        e11.OUTBOX.clear()
        receipt.send_with_options(args=(ADA, {2: 1}), delay=100)
        dead = remind.send_with_options(args=("nobody",), max_retries=0)
        raised = join(stub, worker, fail_fast=False)
        run.check("test_join_waits_for_the_delay_queue_and_counts_a_dead_letter_as_done",
                  raised is None and len(e11.OUTBOX) == 1 and [m.message_id for m in stub.dead_letters] == [
                      dead.message_id],
                  f"fail_fast=False: join {'returned' if raised is None else f'raised {raised!r}'}, "
                  f"{len(e11.OUTBOX)} delayed receipt, {len(stub.dead_letters)} dead letter")
        stub.flush_all()

        remind.send_with_options(args=("nobody",), max_retries=0)
        raised = join(stub, worker)
        run.check("test_join_re_raises_the_actors_own_exception_once_the_message_is_dead",
                  isinstance(raised, ValueError), f"max_retries=0: join raised {raised!r}")
        run.check("test_max_retries_0_or_small_backoffs_make_join_return_at_once",
                  not isinstance(raised, QueueJoinTimeout), f"join returned within 2 s, raising {raised!r}")

        remind.send(ADA)
        again = join(stub, worker)
        stub.flush_all()
        remind.send(ADA)
        after_flush = join(stub, worker)
        run.check("test_a_dead_letter_makes_every_later_join_raise_until_flush_all",
                  again is not None and after_flush is None and e11.OUTBOX[-2:] == [f"reminder to {ADA}"] * 2,
                  f"a good message's join raised {type(again).__name__ if again else 'nothing'}; after flush_all: "
                  f"{type(after_flush).__name__ if after_flush else 'nothing'}")

        enqueued = len(seen.enqueues)
        e11.OUTBOX.clear()
        receipt(ADA, {2: 1})
        run.check("test_a_direct_call_runs_the_function_here_without_broker_or_worker",
                  e11.OUTBOX == [f"to {ADA}: 1 item(s), 10.00 EUR"] and len(seen.enqueues) == enqueued,
                  f"direct call: OUTBOX={e11.OUTBOX}, {len(seen.enqueues) - enqueued} message(s) enqueued")
        try:
            receipt.send(ADA, {1: decimal.Decimal(2)})
            refused = None
        except TypeError as exc:
            refused = exc
        run.check("test_a_direct_call_passes_an_argument_that_send_cannot_serialize",
                  refused is not None and len(seen.enqueues) == enqueued,
                  (f"send raised {type(refused).__name__}: {refused}" if refused else "send accepted a Decimal")
                  + f"; {len(seen.enqueues) - enqueued} enqueued")

        defaults = next(m for m in stub.middleware if isinstance(m, Retries))
        defaults.max_retries = 0  # for every actor that sets no max_retries of its own
        remind.send("nobody")
        raised = join(stub, worker)
        stub.flush_all()
        own = receipt.send(ADA, {9: 1})  # declared with max_retries=3; there is no product 9
        retried = run.wait_until(lambda: [e for e in seen.enqueues if e.message_id == own.message_id and e.delay_ms],
                                 timeout=2)
        run.check("test_a_test_brokers_retries_setting_reaches_only_actors_without_their_own",
                  isinstance(raised, ValueError) and retried,
                  f"Retries(max_retries=0): remind's join raised {type(raised).__name__}; send_receipt "
                  + ("was retried" if retried else "was not retried"))
        defaults.max_retries = 20

        hanging = remind.send("not-an-address")  # last: this message keeps the queue busy for 15 s or more
        timed_out = isinstance(join(stub, worker, timeout=300), QueueJoinTimeout)
        backoffs = [e.delay_ms for e in seen.enqueues if e.message_id == hanging.message_id and e.delay_ms]
        run.check("test_a_failing_actor_with_default_retries_makes_join_wait_15_s_or_more",
                  timed_out and len(backoffs) == 1 and backoffs[0] >= 15_000,
                  f"join(timeout=300) {'timed out' if timed_out else 'did not time out'}; "
                  f"the retry waits {backoffs} ms")
    finally:
        worker.stop()
        stub.close()


def scenario(run: lab.Run) -> None:
    on_a_stub_broker(run)

    before = current_millis()
    later = e11.remind_later(ADA)
    due_in = later.options["eta"] - before
    run.check("test_a_delay_is_tested_by_reading_the_eta_not_by_sleeping",
              later.queue_name == "e11.DQ" and 0 <= due_in - e11.DAY_MS < 1000,
              f"{later.queue_name}, due {due_in} ms after it was sent")
    run.broker.flush(e11.QUEUE)  # no worker will wait a day for it
    run.skip("test_an_eager_broker_would_hide_the_json_bug_and_run_a_delayed_message_at_once",
             "the eager broker is a sketch inside the test file, not a part of e11: pytest shows it")

    e11.OUTBOX.clear()
    run.start_worker()
    e11.send_receipt.send(ADA, {1: 2, 3: 1})
    failed = e11.remind.send_with_options(args=("nobody",), max_retries=0)
    settled = run.settle(e11.QUEUE, timeout=5)
    run.check("test_the_same_story_runs_on_fakeredis_and_redis_server_through_a_parametrized_fixture",
              settled and e11.OUTBOX == [f"to {ADA}: 3 item(s), 9.99 EUR"],
              f"the same story on this run's broker: {e11.OUTBOX}")
    received = [a.args for a in run.attempts("send_receipt")]
    run.check("test_json_turns_int_keys_into_strings_which_a_direct_call_never_shows",
              received == [(ADA, {"1": 2, "3": 1})],
              f"sent {{1: 2, 3: 1}}, the actor received {received[0][1] if received else None}")
    dead = [d.message.message_id for d in lab.dead_letters(run.broker, e11.QUEUE)]
    run.check("test_a_redis_broker_join_returns_quietly_when_the_actor_failed",
              settled and dead == [failed.message_id],
              f"join {'returned without raising' if settled else 'timed out'}; the failed reminder "
              + ("is in e11.XQ" if dead == [failed.message_id] else f"is not alone in e11.XQ: {len(dead)} there"))
