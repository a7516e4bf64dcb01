"""`python -m lab run e06`: where priority acts, what a queue of its own changes, threads against processes."""

import signal
import time

import lab
from lab.stats import most_at_once

import e06_priorities as e06

SLEEPS, MS = 20, 25  # the notes had 100 sleeps; 20 show the same, five times sooner


def scenario(run: lab.Run) -> None:
    # A real `dramatiq` process for the urgent queue and the CPU-bound one: 2 processes, 1 thread each.
    spawned = run.spawn_worker("e06_priorities", "--threads", "1", "--queues", e06.URGENT, e06.CPU, processes=2)
    run.start_worker(threads=1, queues={e06.QUEUE})  # the notes' worker: 1 thread, default prefetch (2)
    try:
        sleeps = [e06.sleepy.send(i, MS) for i in range(SLEEPS)]
        on_bulk, on_own = e06.greet.send("on e06"), e06.greet_urgent.send("on e06-urgent")
        waits = {"e06-urgent": on_own.get_result(block=True, timeout=10_000)}
        crunches = [e06.crunch.send(i, 1_000_000) for i in range(4)]  # after: they share the spawned processes
        waits["e06"] = on_bulk.get_result(block=True, timeout=10_000)
        cpu = [m.get_result(block=True, timeout=10_000) for m in crunches]
    finally:
        run.stop_worker()
        run.broker.flush(e06.QUEUE)  # the sleeps left after the greeting
        spawned.signal(signal.SIGTERM)  # it takes about 2 s to stop: let it, while the rest runs here
    ids = {m.message_id for m in [*sleeps, on_bulk]}
    order = [a.actor for a in run.attempts() if a.message_id in ids]
    position = order.index("greet") + 1 if "greet" in order else 0
    run.check("test_a_high_priority_message_waits_behind_the_backlog_it_was_not_prefetched_with",
              position >= SLEEPS - 2, f"the greeting ran {position} of {SLEEPS + 1} with prefetch 2")
    run.check("test_a_queue_of_its_own_with_a_worker_of_its_own_does_not_wait_behind_the_bulk",
              waits["e06-urgent"] < waits["e06"] / 2, f"the greeting waited {waits['e06']} ms on e06 and "
                                                       f"{waits['e06-urgent']} ms on e06-urgent")
    pids = {r["pid"] for r in cpu}
    across = most_at_once([(r["started"], r["ended"]) for r in cpu]) if len(pids) == 2 else 0
    run.check("test_cpu_bound_actors_run_side_by_side_in_two_processes", len(pids) == 2 and across == 2,
              f"{across} crunches at once in {len(pids)} processes")

    # A prefetch above the backlog: the worker holds everything, so priority and FIFO order can act.
    first = [e06.sleepy.send(i, 5) for i in range(5)]
    urged = e06.sleepy.send_with_options(args=(5, 5), priority=-50)  # a per-message priority: ignored
    rest = [e06.sleepy.send(i, 5) for i in range(6, SLEEPS)]
    greeting = e06.greet.send("prefetched")
    run.start_worker(threads=1, queues={e06.QUEUE}, prefetch=50)  # started after the sends, as in the notes' table
    run.settle(e06.QUEUE, timeout=10)
    run.stop_worker()
    ids = [m.message_id for m in [*first, urged, *rest]]
    ran = [a for a in run.attempts() if a.message_id in {*ids, greeting.message_id}]
    position = [a.message_id for a in ran].index(greeting.message_id) + 1 if len(ran) == SLEEPS + 1 else 0
    run.check("test_with_a_prefetch_above_the_backlog_the_greeting_runs_next", 1 <= position <= 2,
              f"{position} of {SLEEPS + 1} with prefetch 50 ({SLEEPS} sleeps sent first, 1 thread)")
    sleeps_order = [a.args[0] for a in ran if a.actor == "sleepy"]
    run.check("test_within_one_priority_the_worker_runs_messages_in_the_order_it_fetched_them",
              sleeps_order == list(range(SLEEPS)),
              f"the {len(sleeps_order)} sleeps ran in the order "
              f"{f'they were sent, 0 to {SLEEPS - 1}' if sleeps_order == list(range(SLEEPS)) else sleeps_order}")
    run.check("test_a_priority_option_on_one_message_is_kept_and_ignored",
              sleeps_order.index(5) == 5 and urged.options.get("priority") == -50,
              f"sleepy(5), sent 6th with priority=-50, ran {sleeps_order.index(5) + 1} of the {SLEEPS} sleeps")

    # Threads: 4 sleeps of 200 ms overlap on 4 threads; 4 crunches on 4 threads share one core (the GIL).
    run.start_worker(threads=4, queues={e06.QUEUE, e06.CPU})
    try:
        spawned.wait(timeout=5)  # stopped by now, so this process's threads run the crunches
        naps = [e06.sleepy.send(i, 200) for i in range(4)]
        run.settle(e06.QUEUE, timeout=10)
        wall, cpu_start = time.monotonic(), time.process_time()
        crunched = [e06.crunch.send(i, 1_000_000) for i in range(4)]
        run.settle(e06.CPU, timeout=20)
        cores = (time.process_time() - cpu_start) / (time.monotonic() - wall)
    finally:
        run.stop_worker()
    nap_ids = {m.message_id for m in naps}
    together = most_at_once([(a.started, a.ended or a.started) for a in run.attempts() if a.message_id in nap_ids])
    run.check("test_a_sleeping_actor_runs_side_by_side_on_threads", together == 4,
              f"4 sleeps of 200 ms on 4 threads: {together} at once")
    crunch_ids = {m.message_id for m in crunched}
    ran = len([a for a in run.attempts() if a.message_id in crunch_ids and a.outcome == "ok"])
    run.check("test_cpu_bound_actors_on_threads_of_one_process_use_one_core_at_most", ran == 4 and cores < 1.3,
              f"{cores:.2f} cores on 4 threads of one process ({ran} crunches)")
