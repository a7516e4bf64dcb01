"""`python -m lab run e02`: every path through Retries, with backoffs 10x smaller than the actors'."""

import lab

import e02_error_handling as e02

UNLUCKY = e02.UNLUCKY


def scenario(run: lab.Run) -> None:
    run.start_worker(threads=1)  # one thread: what runs during a backoff ran on the thread that failed
    fast = dict(max_retries=3, min_backoff=100, max_backoff=1000)
    e02.handled.send(UNLUCKY)
    doomed = e02.unhandled.send_with_options(args=(UNLUCKY,), **fast)
    e02.aborted.send(UNLUCKY)
    e02.postponed.send(1, 300)
    run.settle(e02.QUEUE, timeout=15)
    # A retry's backoff, 400 ms, and work sent once the first try failed: does the one thread run it meanwhile?
    waiting = e02.unhandled.send_with_options(args=(UNLUCKY,), max_retries=1, min_backoff=400)
    run.wait_until(lambda: [a for a in run.attempts("unhandled") if a.message_id == waiting.message_id and a.ended],
                   timeout=5)
    during_backoff = [e02.handled.send(i) for i in range(2)]
    run.settle(e02.QUEUE, timeout=15)

    once = run.attempts("handled", UNLUCKY)
    run.check("test_handled_error_runs_exactly_once",
              [(a.number, a.outcome) for a in once] == [(1, "ok")],
              f"handled(17) ran {len(once)} time(s): {', '.join(a.outcome for a in once)}")

    tries = [a for a in run.attempts("unhandled", UNLUCKY) if a.message_id == doomed.message_id]
    backoffs_ms = [e.delay_ms for e in run.enqueues("unhandled") if e.delay_ms is not None
                   and e.message_id == doomed.message_id]
    run.check("test_retry_k_waits_min_backoff_times_2_to_the_k_up_to_twice_that",
              len(tries) == 4 and len(backoffs_ms) == 3
              and all(100 * 2**k <= d < 200 * 2**k for k, d in enumerate(backoffs_ms)),
              f"max_retries=3: {len(tries)} attempts, backoffs {', '.join(map(str, backoffs_ms))} ms, "
              "in 100-200, 200-400, 400-800")

    dead = [d.message.message_id for d in lab.dead_letters(run.broker, e02.QUEUE)]
    callback = [a for a in run.attempts("retries_exhausted") if a.args[0]["message_id"] == doomed.message_id]
    run.check("test_exhausted_message_goes_to_the_dead_letters_and_the_callback_runs",
              doomed.message_id in dead and len(callback) == 1,
              f"the message is {'' if doomed.message_id in dead else 'not '}in e02.XQ; "
              f"retries_exhausted ran {len(callback)} time(s)")

    thrown = run.attempts("aborted", UNLUCKY)
    run.check("test_throws_fails_at_once_without_retry",
              [(a.number, a.outcome) for a in thrown] == [(1, "failed")],
              f"aborted(17) ran {len(thrown)} time(s): {', '.join(a.outcome for a in thrown)}")

    later = run.attempts("postponed")
    [retry] = [e for e in run.enqueues("postponed") if e.delay_ms] or [None]
    early_ms = retry.eta_ms - later[1].started_ms if retry and len(later) == 2 else None
    after_due = "?" if early_ms is None else f"{-early_ms:.0f}"
    run.check("test_retry_exception_reschedules_after_at_least_its_delay",
              retry is not None and retry.delay_ms == 300 and early_ms is not None and early_ms <= 0,
              f"Retry(delay=300): re-enqueued with delay={retry and retry.delay_ms} ms; the retry started "
              f"{after_due} ms after its due time ({len(later)} attempts)")

    retried = [a for a in run.attempts("unhandled") if a.message_id == waiting.message_id]
    delays = [e for e in run.enqueues("unhandled") if e.message_id == waiting.message_id and e.delay_ms]
    delayed = [e.delay_ms for e in delays]
    # The others sent before the retry was due (under load the second send can come later): each is on e02 before
    # the retry comes back to it, so a thread that does not sleep through the backoff runs them first
    due = delays[0].at + delays[0].delay_ms / 1000 if delays else float("inf")
    sent_meanwhile = {m.message_id for m in during_backoff}
    ids = {e.message_id for e in run.enqueues("handled") if e.message_id in sent_meanwhile and e.at < due}
    first_retry = retried[1].started if len(retried) > 1 else float("inf")
    between = [a for a in run.attempts("handled") if a.message_id in ids and a.started < first_retry]
    run.check("test_a_retry_is_re_enqueued_so_the_thread_runs_other_work_meanwhile",
              len(between) == len(ids) >= 1 and len(delayed) == 1,
              f"{len(between)} of the {len(ids)} other messages sent during a {delayed[:1]} ms backoff ran on the one "
              "thread before its retry, re-enqueued with that delay")
