"""`python -m lab run e12`: async actors on the run's broker (e12 added AsyncIO to it), a StubBroker
without AsyncIO, and taps in the middleware list that show which hooks run, in which order."""

import logging
from itertools import pairwise

import lab

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import AsyncIO, Middleware, MiddlewareError, default_middleware

import e12_async_and_middleware as e12

NAP_S = 0.2


class Kept(logging.Handler):
    """Keeps the records it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Tap(Middleware):
    """Writes down the hooks it sees, and whether the message had failed by then."""

    def __init__(self, name: str, trace: list) -> None:
        self.name, self.trace = name, trace

    def before_process_message(self, broker, message) -> None:
        self.trace.append((self.name, "before", message.message_id, message.failed))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.trace.append((self.name, "after", message.message_id, message.failed))

    def after_skip_message(self, broker, message) -> None:
        self.trace.append((self.name, "after_skip", message.message_id, message.failed))


def without_asyncio(run: lab.Run) -> None:
    """A StubBroker with Dramatiq's defaults, e12's coroutine as an actor, and a broken middleware."""
    stub = StubBroker()
    stub.emit_after("process_boot")

    class Refused(MiddlewareError):
        """A middleware's own error, not SkipMessage."""

    class Broken(Middleware):
        def before_process_message(self, broker, message) -> None:
            if message.queue_name == "plain":
                raise AttributeError("'Broken' object has no attribute 'logger'")
            if message.queue_name == "gated":
                raise Refused("the gate is closed")

    stub.add_middleware(Broken())
    stub.logger = logging.getLogger("lab.e12.stub")  # its CRITICAL line, kept here for the evidence
    stub.logger.propagate, critical = False, Kept()
    stub.logger.addHandler(critical)
    nap = dramatiq.actor(e12.async_nap.fn.__wrapped__, broker=stub, actor_name="async_nap", max_retries=0)
    ran = []
    plain = dramatiq.actor(lambda: ran.append(1), broker=stub, actor_name="plain", queue_name="plain")
    gated = dramatiq.actor(lambda: ran.append(2), broker=stub, actor_name="gated", queue_name="gated",
                           max_retries=1, min_backoff=10, max_backoff=20)
    worker = dramatiq.Worker(stub, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        nap.send(1, 0)
        plain.send()
        try:
            stub.join(nap.queue_name, timeout=2000)
            raised = None
        except (RuntimeError, QueueJoinTimeout) as exc:
            raised = exc
        stub.join("plain", timeout=2000)
        gated.send()
        try:
            stub.join("gated", timeout=2000)
            refused = None
        except (Refused, QueueJoinTimeout) as exc:
            refused = exc
    finally:
        worker.stop()
    run.check("test_any_middleware_error_in_a_before_hook_stops_the_actor_and_counts_as_its_failure",
              isinstance(refused, Refused) and 2 not in ran and len(stub.dead_letters_by_queue["gated"]) == 1,
              f"MiddlewareError: {ran.count(2)} actor runs, {len(stub.dead_letters_by_queue['gated'])} dead letter"
              + ("" if isinstance(refused, Refused) else f", join raised {refused!r}"))
    run.check("test_asyncio_is_not_a_default_middleware_and_an_async_actor_without_it_fails",
              AsyncIO not in default_middleware and isinstance(raised, RuntimeError),
              f"without AsyncIO, join raised {raised!r}")
    run.check("test_another_exception_in_a_before_hook_is_logged_and_the_actor_runs_anyway",
              ran == [1] and [r.levelname for r in critical.records] == ["CRITICAL"],
              f"AttributeError: {', '.join(r.levelname for r in critical.records) or 'nothing'} logged, "
              f"{len(ran)} actor run")
    try:
        StubBroker().add_middleware(AsyncIO)
        refused = None
    except TypeError as exc:
        refused = exc
    run.check("test_asyncio_must_be_added_as_an_instance_not_the_class", refused is not None,
              f"add_middleware(AsyncIO) raised TypeError: {refused}")
    try:
        dramatiq.actor(lambda: None, broker=StubBroker(), actor_name="guarded", kill_switch="reports")
        undeclared = None
    except ValueError as exc:
        undeclared = exc
    run.check("test_an_actor_option_must_be_declared_by_a_middleware",
              undeclared is not None and "kill_switch" in run.broker.actor_options, f"without KillSwitch: {undeclared}")


def wall(run: lab.Run, blocking: bool) -> tuple[float, float, float, list[tuple[float, float]]]:
    """4 naps of NAP_S at once: wall time of all 4, then the shortest and longest one as their worker
    threads saw them (from taking the message to its after hooks), in seconds; and (started, ended) of
    each nap as the event loop ran it, sorted."""
    e12.NAPS.clear()
    sent = {e12.async_nap.send(n, NAP_S, blocking).message_id for n in range(4)}
    mine = lambda: [a for a in run.attempts("async_nap") if a.message_id in sent and a.ended]  # noqa: E731
    run.wait_until(lambda: len(mine()) == 4, timeout=10)
    spans = [(a.started, a.ended) for a in mine()] or [(0, 0)]
    took = [e - s for s, e in spans]
    on_the_loop = sorted((started, ended) for _, started, ended in e12.NAPS)
    return max(e for _, e in spans) - min(s for s, _ in spans), min(took), max(took), on_the_loop


def overlap(naps: list[tuple[float, float]]) -> bool:
    """Every nap started before the first one ended."""
    return len(naps) == 4 and max(s for s, _ in naps) < min(e for _, e in naps)


def one_after_another(naps: list[tuple[float, float]]) -> bool:
    """Each nap started once the one before it had ended."""
    return len(naps) == 4 and all(later[0] >= earlier[1] for earlier, later in pairwise(naps))


def scenario(run: lab.Run) -> None:
    try:
        e12.async_nap(0, 0)
        direct = None
    except RuntimeError as exc:
        direct = exc
    run.check("test_calling_an_async_actor_directly_needs_the_event_loop_thread", direct is not None,
              f"called with no worker in this process: {direct}")
    without_asyncio(run)

    names = [type(m).__name__ for m in run.broker.middleware]
    run.check("test_e12_adds_each_middleware_once_and_leaves_other_experiments_actors_alone",
              [names.count(n) for n in ("AsyncIO", "KillSwitch", "Stopwatch")] == [1, 1, 1],
              "on the shared broker: "
              + ", ".join(f"{n} {names.count(n)}" for n in ("AsyncIO", "KillSwitch", "Stopwatch")))
    message = e12.switched_report.message(1)
    run.check("test_an_option_declared_on_the_actor_is_not_in_the_message_options",
              "kill_switch" not in message.options and e12.option(run.broker, message, "kill_switch") == "reports",
              f"message.options={message.options}, actor.options['kill_switch']="
              f"{e12.switched_report.options['kill_switch']!r}")

    trace, middleware = [], run.broker.middleware
    at = next(i for i, m in enumerate(middleware) if type(m).__name__ == "KillSwitch")
    taps = [Tap("before_killswitch", trace), Tap("after_killswitch", trace), Tap("last", trace)]
    middleware[at:at + 1] = [taps[0], middleware[at], taps[1]]
    middleware.append(taps[2])
    try:
        run.start_worker(threads=4)
        awaited, blocked = wall(run, blocking=False), wall(run, blocking=True)
        run.check("test_a_blocking_call_in_an_async_actor_stalls_the_loop_and_await_does_not",
                  overlap(awaited[3]) and one_after_another(blocked[3]),
                  f"4 naps of {NAP_S} s, 4 threads: awaited "
                  f"{'overlapped' if overlap(awaited[3]) else 'did not overlap'} ({awaited[0]:.2f} s); time.sleep "
                  f"{'ran in turn' if one_after_another(blocked[3]) else 'overlapped'} ({blocked[0]:.2f} s), "
                  f"each message {blocked[1]:.2f} to {blocked[2]:.2f} s")

        asked = [e12.async_whoami.send() for _ in range(3)]
        answers = [m.get_result(block=True, timeout=5000) for m in asked]
        loop = get_event_loop_thread()
        run.check("test_async_actors_run_on_one_event_loop_thread_not_the_worker_threads",
                  loop is not None and {a["thread"] for a in answers} == {loop.name},
                  f"3 coroutines ran on {sorted({a['thread'] for a in answers})}, the loop's; their worker threads: "
                  f"{sorted({a.thread for a in run.attempts('async_whoami')})}")
        run.check("test_current_message_gives_each_async_actor_its_own_message",
                  [a["message_id"] for a in answers] == [m.message_id for m in asked],
                  f"{sum(a['message_id'] == m.message_id for a, m in zip(answers, asked, strict=True))} of 3 "
                  "saw their own message")

        switch = lab.key(run.broker, e12.SWITCH.format("reports"))
        run.broker.client.set(switch, "off")
        skipped = e12.switched_report.send(1)
        run.settle(e12.QUEUE, timeout=5)
        run.broker.client.delete(switch)
        outcomes = [a.outcome for a in run.attempts("switched_report")]
        # (this message's: on RabbitMQ, e12.XQ may hold an earlier run's too, having no run namespace)
        dead = [d for d in lab.dead_letters(run.broker, e12.QUEUE) if d.message.message_id == skipped.message_id]
        run.check("test_skip_message_drops_the_message_acked_without_retry_or_dead_letter",
                  outcomes == ["skipped"] and dead == [], f"switch off: {outcomes}; dead letters: {len(dead)}")
        seen = [(name, hook) for name, hook, mid, _ in trace if mid == skipped.message_id]
        run.check("test_skip_message_stops_the_before_hooks_after_it_yet_every_after_skip_hook_runs",
                  seen == [("before_killswitch", "before"), ("last", "after_skip"), ("after_killswitch", "after_skip"),
                           ("before_killswitch", "after_skip")],
                  f"before: {', '.join(n for n, hook in seen if hook == 'before') or 'no tap'}; after_skip: "
                  f"{', '.join(n for n, hook in seen if hook == 'after_skip') or 'no tap'}")

        failing = e12.switched_report.send(0)
        run.settle(e12.QUEUE, timeout=5)
        last = [failed for name, hook, mid, failed in trace if mid == failing.message_id and hook == "after"]
        outcome = [a.outcome for a in run.attempts("switched_report") if a.message_id == failing.message_id]
        run.check("test_after_hooks_run_in_reverse_so_a_middleware_added_last_sees_the_outcome_before_retries",
                  last[:1] == [False] and outcome == ["failed"],
                  f"the tap added last saw failed={last[:1]}; the Recorder, first in the list, saw {outcome}")
    finally:
        run.stop_worker()
        middleware[:] = [m for m in middleware if m not in taps]
    run.skip("test_two_workers_in_one_process_share_one_event_loop_and_stopping_one_breaks_the_other",
             "a run keeps one worker at a time; the test starts two and stops the leaked loop itself")
