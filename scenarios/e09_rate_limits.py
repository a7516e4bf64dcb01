"""`python -m lab run e09`: limiters in one process (a busy mutex three ways, a semaphore, bursts), then across two
worker processes (the run's Redis served over TCP on memory://)."""

import lab

import e09_rate_limits as e09


def dead(run: lab.Run) -> int:
    """This run's dead letters (on RabbitMQ, e09.XQ may hold an earlier run's too: it has no run namespace)."""
    ours = {a.message_id for a in run.attempts()}
    return sum(letter.message.message_id in ours for letter in lab.dead_letters(run.broker, e09.QUEUE))


def outcomes(run: lab.Run, actor: str) -> list[str]:
    return sorted(a.outcome for a in run.attempts(actor))


def scenario(run: lab.Run) -> None:
    shared = e09.backend.client is run.broker.client
    run.check("test_e09_uses_the_brokers_own_redis_client", shared,
              "e09 gives its RedisBackend the broker's own client: it never falls back to localhost:6379"
              if shared else "e09's RedisBackend has a Redis client of its own, not the broker's")

    # One process, 4 threads: the mutex held by this run, three ways to meet it
    run.start_worker(threads=4)
    with e09.MUTEX.acquire():
        for n in range(3):
            e09.mutexed.send_with_options(args=(n, 50), max_retries=1, min_backoff=20, max_backoff=40)
            e09.skipping.send(n, 50)
            e09.patient.send(n, 50, 1)
        run.wait_until(lambda: dead(run) == 3 and outcomes(run, "skipping") == ["ok"] * 3
                       and outcomes(run, "patient").count("retried") >= 3, timeout=10)
    run.wait_until(lambda: e09.tally("patient1")["ran"] == 3, timeout=10)
    mutexed, skipping, patient = (e09.tally(kind)["ran"] for kind in ("mutexed", "skipping", "patient1"))
    run.check("test_by_default_a_busy_limiter_raises_and_the_retries_end_in_the_dead_letters",
              mutexed == 0 and dead(run) == 3 and outcomes(run, "mutexed") == ["failed"] * 3 + ["retried"] * 3,
              f"3 messages, max_retries=1: {len(run.attempts('mutexed'))} attempts, {mutexed} did the work, "
              f"{dead(run)} dead letters")
    run.check("test_raise_on_failure_false_makes_a_busy_limiter_skip_the_work_silently",
              skipping == 0 and outcomes(run, "skipping") == ["ok"] * 3,
              f"3 messages against the held mutex: outcomes {outcomes(run, 'skipping')}, {skipping} did the work")
    run.check("test_retrying_later_keeps_the_work_at_the_cost_of_extra_attempts",
              patient == 3 and e09.tally("patient1")["peak"] == 1,
              f"3 messages: {patient} did the work, in {len(run.attempts('patient'))} attempts")

    for n in range(4):
        e09.patient.send(n, 200, 2)
    run.wait_until(lambda: e09.tally("patient2")["ran"] == 4, timeout=10)
    semaphore = e09.tally("patient2")
    run.check("test_a_concurrent_limiter_of_2_lets_two_work_at_a_time", semaphore["peak"] == 2,
              f"limit=2, 4 threads: {semaphore['ran']} did the work, at most {semaphore['peak']} at once")

    # Two worker processes of 2 threads each, on this run's Redis: started after the burst, ready below
    run.stop_worker()
    burst = e09.burst()  # before the worker below boots: its start would take the CPU the burst's tries need
    worker = run.spawn_worker("e09_rate_limits", "--threads", "2", processes=2, ready=False)
    run.check("test_a_burst_across_a_second_boundary_gets_through",
              burst == {"bucket=1000": 10, "window=1": 10, "window=2": 5},
              "limit 5, tries from x.9 s to x+1.1 s let through: " + ", ".join(f"{k} {n}" for k, n in burst.items()))

    holder = e09.MUTEX.acquire()  # taken and never released, as by a worker killed while it held it
    holder.__enter__()
    ttl_ms = run.broker.client.pttl(e09.MUTEX.key)
    run.check("test_a_mutex_left_by_a_dead_holder_stays_taken_for_its_ttl_15_minutes_by_default",
              899_000 <= ttl_ms <= 900_000, f"the abandoned mutex's key expires in {ttl_ms / 60_000:.2f} min")

    for key in run.broker.client.scan_iter(f"{e09.KEY}:*"):  # counting from zero, the mutex free
        run.broker.client.delete(key)
    worker.ready(2)
    for kind, count, hold in (("free", 8, 200), ("patient1", 8, 100), ("locked", 8, 150)):
        actor = getattr(e09, kind.removesuffix("1"))
        for n in range(count):
            actor.send(n, hold, 1) if kind == "patient1" else actor.send(n, hold)
        run.wait_until(lambda kind=kind, count=count: e09.tally(kind)["ran"] == count, timeout=15)
    worker.kill()  # its work is done; a clean stop would take 2 s more
    free, mutex, lock = (e09.tally(kind) for kind in ("free", "patient1", "locked"))
    run.check("test_without_a_limiter_a_4_thread_worker_runs_4_at_once",
              free["peak"] >= 3 and free["processes"] == 2,
              f"no limit, 2 processes x 2 threads: at most {free['peak']} at once, in {free['processes']} processes")
    run.check("test_the_mutex_holds_across_two_worker_processes",
              mutex["ran"] == 8 and mutex["peak"] == 1 and mutex["tried_in"] == 2,
              f"the mutex, 2 processes x 2 threads: {mutex['ran']} did the work, at most {mutex['peak']} at once; "
              f"{mutex['tried_in']} processes tried, {mutex['processes']} did the work")
    run.check("test_a_threading_lock_holds_in_one_process_only",
              lock["peak"] == 2 and lock["overlaps"] >= 1 and lock["processes"] == 2,
              f"a threading.Lock in 2 processes: at most {lock['peak']} at once, {lock['overlaps']} overlaps")
