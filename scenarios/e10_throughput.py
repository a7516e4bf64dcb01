"""`python -m lab run e10`: the benchmark's smallest plan (a few hundred messages), checked for consistency, not speed.

Real `dramatiq` worker processes and sender processes, on the run's Redis (memory:// is served to them
over TCP) and in the run's namespace. Its figures are too small to mean anything; its counts must add up.
"""

import lab

import e10_throughput as e10
from benchmarks import e10_bench

REDIS_ONLY = "it measures Redis's limits; RabbitMQ's drain is Experiment 13's lesson 10"


def scenario(run: lab.Run) -> None:
    # A namespace of its own, under the run's (which deletes it too): the benchmark checks and deletes
    # everything under its namespace, and `python -m lab run all` shares the run's with every experiment.
    report = e10_bench.measure(e10, run.shared_url(), e10_bench.PLANS["scenario"],
                               namespace=f"{run.broker.namespace}-e10")
    counts = report["consistency"]
    mismatched = [p for p in counts["problems"] if ", ran " in p or "never sent" in p]
    run.check("test_a_tiny_run_ran_every_message_it_sent_exactly_once",
              counts["sent"] == counts["processed"] and not mismatched,
              f"{counts['sent']} sent to workers in {counts['batches']} batches, {counts['processed']} ran; "
              + (f"{mismatched}" if mismatched else "each batch ran exactly what it sent"))

    run.check("test_a_tiny_run_leaves_nothing_in_any_queue_and_nothing_unacked", counts["left"] == {},
              f"left in Redis after the run: {counts['left'] or 'nothing'}")

    workers = counts["workers"]
    unclean = [w["label"] for w in workers if w["exit_code"] != 0 or w["still_alive"]]
    run.check("test_a_tiny_run_stops_every_worker_process_with_exit_code_0", workers and not unclean,
              f"{len(workers)} dramatiq workers, {sum(len(w['pids']) for w in workers)} processes; "
              f"exit codes {sorted({w['exit_code'] for w in workers})}; not stopped: {unclean or 'none'}")

    missing = e10_bench.missing_fields(report)
    run.check("test_the_report_has_every_field", not missing,
              f"{len(report['processing'])} drain rows, {len(report['latency'])} latency figures; "
              f"missing: {missing or 'nothing'}; server: {report['conditions']['server']}")
