"""`python -m lab run e04`: pipelines, pipe_ignore both ways, a failed step, two groups, results, a deadlock."""

import lab

import dramatiq
from dramatiq.results import ResultError, ResultFailure

import e04_pipelines as e04

FAIL = dict(kwargs={"fail": True}, max_retries=0)


def error_of(get) -> str:
    """The name of the result error ``get()`` raises (with the actor's own error, if it failed), or ""."""
    try:
        get()
    except ResultFailure as exc:
        return f"ResultFailure({exc.orig_exc_type})"
    except ResultError as exc:
        return type(exc).__name__
    return ""


def scenario(run: lab.Run) -> None:
    run.start_worker(threads=4)
    pipe = (e04.add.message(3, 1) | e04.double.message() | e04.power.message(2)).run()
    ignoring = (e04.add.message(1, 2) | e04.add.message_with_options(args=(10, 20), pipe_ignore=True)).run()
    stamped = (e04.add.message(1, 2) | e04.stamp.message("got") | e04.add.message(10, 20)).run()
    (e04.add.message(1, 1) | e04.square.message_with_options(**FAIL) | e04.double.message()).run()
    fine = dramatiq.group(e04.square.message(i) for i in range(1, 6))
    fine.add_completion_callback(e04.group_done.message(5))
    spoiled = dramatiq.group([e04.square.message(1), e04.square.message_with_options(args=(2,), **FAIL)])
    spoiled.add_completion_callback(e04.group_done.message(2))
    fine.run()
    spoiled.run()
    forgotten = e04.add.send_with_options(args=(2, 2), store_results=False)  # per message, overrides the actor
    run.settle(e04.QUEUE, timeout=10)

    steps = list(pipe.get_results())
    powers = [a.args for a in run.attempts("power")]
    run.check("test_each_step_gets_the_previous_result_as_its_last_argument",
              steps == [4, 8, 256] and powers == [(2, 8)],
              f"power ran as {', '.join(f'power{args}' for args in powers)}; step results "
              f"{', '.join(map(str, steps))}")
    run.check("test_pipe_ignore_keeps_the_previous_result_out_of_the_arguments",
              ignoring.get_result() == 30 and len(run.attempts("add", 10, 20)) == 2,
              f"add(10, 20) with pipe_ignore=True on its message returned {ignoring.get_result()}")
    stamps = [a.args for a in run.attempts("stamp")]
    run.check("test_an_actors_pipe_ignore_is_read_from_the_actor_that_sent_the_result",
              stamps == [("got", 3)] and stamped.get_result() == 30,
              f"stamp (pipe_ignore=True) ran as {', '.join(f'stamp{args}' for args in stamps)}; "
              f"the add(10, 20) after it returned {stamped.get_result()}")
    run.check("test_a_step_that_fails_for_good_stops_the_pipeline",
              [a.args for a in run.attempts("double")] == [(4,)],
              f"double() ran {len(run.attempts('double'))} time(s), for the first pipeline only, "
              "never after the failed square")

    ids = {m.message_id for m in fine.children}
    last = max(a.started for a in run.attempts("square") if a.message_id in ids)
    done = [a.args for a in run.attempts("group_done")]
    sent = [e.at for e in run.enqueues("group_done") if e.args == (5,)]
    run.check("test_the_completion_callback_runs_once_after_every_member_succeeded",
              list(fine.get_results()) == [1, 4, 9, 16, 25] and done == [(5,)] and len(sent) == 1 and sent[0] > last,
              f"group_done(5): {done.count((5,))} run, sent {(sent[0] - last) * 1000 if sent else 0:.0f} ms "
              f"after the last member started; results {', '.join(map(str, fine.get_results()))}")
    # block: Results stores a dead letter's error in after_nack, after the nack emptied the queue that settle watched
    raised = error_of(lambda: list(spoiled.get_results(block=True, timeout=5000)))
    run.check("test_the_completion_callback_never_runs_when_a_member_fails_for_good",
              raised.startswith("ResultFailure") and (2,) not in done,
              f"group_done(2) ran {done.count((2,))} times; get_results raised {raised}")
    run.check("test_without_store_results_get_result_raises_result_missing",
              error_of(forgotten.get_result) == "ResultMissing",
              f"get_result() on a message sent with store_results=False raised {error_of(forgotten.get_result)}")
    ttl = run.broker.client.pttl(run.broker.get_results_backend().build_message_key(pipe.messages[-1]))
    run.check("test_a_stored_result_expires_after_ten_minutes_by_default",
              590_000 < ttl <= 600_000, f"the result key expires in {ttl:,} ms (its PTTL), of a default 600,000")

    run.start_worker(threads=1)  # the only thread waits, so the members it waits for cannot run
    waited = e04.wait_inside.send(2, 1500)  # the Redis backend waits whole seconds, rounded down: 1 s
    run.settle(e04.QUEUE, timeout=10)
    [stuck] = run.attempts("wait_inside") or [None]
    stuck_ms = ((stuck.ended or stuck.started) - stuck.started) * 1000 if stuck else 0
    after = [a for a in run.attempts("square") if stuck and a.started >= (stuck.ended or float("inf"))]
    run.check("test_waiting_on_a_group_inside_an_actor_deadlocks_the_only_thread",
              error_of(waited.get_result) == "ResultFailure(ResultTimeout)" and len(after) == 2,
              f"its {len(after)} members ran only after wait_inside gave up, {stuck_ms:.0f} ms in: "
              f"{error_of(waited.get_result)}")
