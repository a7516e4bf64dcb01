"""`python -m lab run e01`: two messages through an in-process worker, one direct call."""

import lab

import e01_hello_world as e01


def scenario(run: lab.Run) -> None:
    run.start_worker(threads=2)
    sent = [e01.count_to.send(3), e01.count_to.send(2)]
    settled = run.settle("e01", timeout=10)
    attempts = run.attempts("count_to")
    threads = sorted({a.thread for a in attempts})
    run.check(
        "test_send_enqueues_and_a_worker_thread_runs_it",
        settled and len(attempts) == len(sent) and all(a.outcome == "ok" for a in attempts)
        and "MainThread" not in threads,
        f"{len(sent)} sent, {len(attempts)} run, each on a worker thread: {', '.join(threads) or 'none'}",
    )

    enqueued, attempted = len(run.enqueues()), len(run.attempts())
    e01.count_to(3)  # a plain call: had it gone through the broker, the recorder would have seen it
    run.check(
        "test_an_actor_is_still_a_function",
        len(run.enqueues()) == enqueued and len(run.attempts()) == attempted,
        f"count_to(3) ran in the caller: {len(run.enqueues()) - enqueued} message(s) enqueued, "
        f"{len(run.attempts()) - attempted} worker attempt(s)",
    )
