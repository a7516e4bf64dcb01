"""e10's lessons: what limits Dramatiq's throughput and latency, and a benchmark whose counts add up.

No test here asserts a speed: the figures are in README.rst, from measured runs. These tests prove
the mechanisms behind the figures (prefetch, the consumer's sleeps, the GIL), and that a tiny run
of the benchmark, with real `dramatiq` processes on redis-server, loses nothing and leaves nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lab
from lab.keys import key
from lab.server import EmbeddedRedis

import dramatiq
import dramatiq.cli
import fakeredis
import pytest
import redis
from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker

from benchmarks import e10_bench, e10_ceilings, e10_common, e10_drains, e10_peers, e10_senders
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent

TINY_RUNS = e10_bench.PLANS["tiny"].runs  # 2: the fewest that still pair each drain with its own limit


@pytest.fixture
def tiny(e10_tiny: dict[str, Any]) -> dict[str, Any]:
    """The report of one run of the benchmark's tiny plan on redis-server (a few hundred messages, real
    processes), made once for the whole test run (conftest's ``e10_tiny``): each test below reads one finding."""
    return e10_tiny


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The consumer's sleeps, in whole ms, recorded instead of slept."""
    slept: list[int] = []
    monkeypatch.setattr(dramatiq.brokers.redis.time, "sleep", lambda seconds: slept.append(round(seconds * 1000)))
    return slept


# -- the benchmark, end to end: every count adds up ---------------------------------------------


@pytest.mark.e2e
def test_a_tiny_run_ran_every_message_it_sent_exactly_once(tiny):
    counts = tiny["consistency"]
    # Given every batch the run sent to a worker (drains, warm-ups, latency runs, idle probes)
    assert counts["batches"] >= 20 and counts["sent"] >= 300, counts
    # then the actors' own tallies add up to it, batch by batch: nothing lost, nothing run twice
    assert counts["processed"] == counts["sent"]
    assert [p for p in counts["problems"] if ", ran " in p or "never sent" in p] == []


@pytest.mark.e2e
def test_a_tiny_run_leaves_nothing_in_any_queue_and_nothing_unacked(tiny):
    # Given the run has ended: no message ready, stored, delayed, dead, or held unacked by a worker
    assert tiny["consistency"]["left"] == {}
    assert tiny["consistency"]["ok"], tiny["consistency"]["problems"]
    # and it deleted every key of its namespaces (<ns>, <ns>-send, <ns>-idle1000, <ns>-idle100)
    assert tiny["keys_after"] == []


@pytest.mark.e2e
def test_a_tiny_run_stops_every_worker_process_with_exit_code_0(tiny):
    workers = tiny["consistency"]["workers"]
    # Given the four dramatiq workers it started: two setups and two idle probes
    assert [w["label"] for w in workers] == ["1×1", "1×2, prefetch 8", "idle probe, worker_timeout 1000",
                                             "idle probe, worker_timeout 100"]
    # then each stopped on SIGTERM with exit code 0, master and worker process alike, and none is left
    assert [w["exit_code"] for w in workers] == [0, 0, 0, 0]
    assert all(len(w["pids"]) == 2 and w["still_alive"] == [] for w in workers), workers
    assert [pid for w in workers for pid in w["pids"] if e10_bench.alive(pid)] == []


@pytest.mark.e2e
def test_the_report_has_every_field(tiny):
    assert e10_bench.missing_fields(tiny) == []
    rates = [row["rate"] for row in tiny["processing"]]
    assert [(row["config"], row["kind"]) for row in tiny["processing"]] == [
        ("1×1", "noop"), ("1×2, prefetch 8", "noop"), ("1×2, prefetch 8", "io"), ("1×2, prefetch 8", "cpu")]
    # every figure is a median with its range over the runs
    assert all(len(r["runs"]) == TINY_RUNS and r["min"] <= r["median"] <= r["max"] for r in rates), rates
    for load in ("light", "saturated"):
        assert [tiny["latency"][load][f"p{p}"]["median"] > 0 for p in (50, 95, 99)] == [True] * 3
        assert tiny["latency"][load]["samples"] >= 3 * 5
    assert [tiny["latency"][f"idle_{t}"]["samples"] for t in (1000, 100)] == [3, 3]
    # redis-server adds what only it can tell: Lua calls and its own CPU per message
    assert all(row["dispatch_per_message"]["median"] >= 1 for row in tiny["processing"])
    assert tiny["conditions"]["real_redis"] is True and tiny["conditions"]["note"] == ""


@pytest.mark.e2e
def test_each_no_op_drain_is_a_fraction_of_the_dispatch_limit_measured_beside_it(tiny):
    limits = {m["config"]: m for m in tiny["limits"]}
    # Given each setup's limit, measured at its own processes, threads and prefetch, once before each drain
    assert [(m["processes"], m["threads"], m["prefetch"], m["clients"]) for m in limits.values()] == [
        (1, 1, 2, 2), (1, 2, 8, 3)]
    for row in (r for r in tiny["processing"] if r["kind"] == "noop"):
        limit = limits[row["config"]]
        # then the drain's fraction is run by run, each drain over the limit measured just before it
        ratios = [d / m for d, m in zip(row["rate"]["runs"], limit["rate"]["runs"], strict=True)]
        assert row["of_limit"]["runs"] == ratios and len(ratios) == TINY_RUNS
        # and redis-benchmark ran at the same clients, for the commands a message costs
        assert limit["redis_benchmark"]["clients"] == limit["clients"]
        assert {"LPUSH", "RPOP", "dispatch enqueue", "dispatch ack"} <= set(limit["redis_benchmark"])
        # and the CPU a message cost is known for the workers, the drivers, redis-server and the bench
        assert [f in row and f in limit for f in ("cpu_ms_per_message", "server_cpu_ms_per_message",
                                                  "bench_core_share")] == [True] * 3
    assert tiny["end_to_end"]["messages"] == 2 * 20 and len(tiny["end_to_end"]["rate"]["runs"]) == TINY_RUNS


def test_the_dispatch_limit_is_dramatiqs_own_fetch_and_ack_with_no_worker(load, broker, sleeps, monkeypatch):
    e10 = load("e10")
    dispatch, commands, held, lock = broker.scripts["dispatch"], [], [0], threading.Lock()

    def counting(keys=None, args=None, client=None):
        result = dispatch(keys=keys, args=args, client=client)
        with lock:  # how many fetched and not yet acked, after each call
            held[0] += len(result) if args[0] == "fetch" else -1
            commands.append((args[0], len(result) if args[0] == "fetch" else 1, held[0]))
        return result

    # Given 20 messages sent as the actor would send them
    for _ in range(20):
        e10.does_nothing.send("limit")
    monkeypatch.setitem(broker.scripts, "dispatch", counting)
    # when the limit's driver drains them with prefetch 4 and 2 acking threads, and no worker
    e10_ceilings.drive(broker, prefetch=4, threads=2)
    fetched = [n for command, n, _ in commands if command == "fetch"]
    # then it made Dramatiq's own dispatch calls: fetches of at most the prefetch, one ack per message
    assert [c for c, _, _ in commands].count("ack") == 20 and sum(fetched) == 20
    # and, as a consumer, it never held more than its prefetch unacked
    assert max(h for _, _, h in commands) == 4
    assert fetched[0] == 4 and max(fetched) <= 4  # the first took the whole prefetch, none took more
    assert fetched[-1] == 0  # and the last found the queue empty: the drive's end
    # and it never slept: where a consumer holding its prefetch sleeps 5-9 ms, the driver waits for an ack
    assert sleeps == []
    assert broker.client.hlen(key(broker, f"{e10.QUEUE}.msgs")) == 0


def test_latency_counts_from_when_the_message_was_due_in_microseconds(load, monkeypatch):
    e10 = load("e10")
    # Given a sender paced at 1,000 messages a second that stalls 20 ms on its first send
    due: list[int] = []

    def send(due_us: int) -> None:
        due.append(due_us)
        if len(due) == 1:
            time.sleep(0.02)

    e10_senders.pace(send, rate=1000, seconds=0.005)
    # then each message is due 1,000 µs after the one before, whenever it was actually sent
    assert [b - a for a, b in zip(due, due[1:], strict=False)] == [1000] * 4
    # and the actor counts its latency from that due time, to the microsecond: 12.345 ms, not 12
    monkeypatch.setattr(e10.time, "time", lambda: 1_000.012_345)
    e10.notes_its_latency.fn("due", 0, 1_000_000_000)
    assert e10.tally.latencies["due"] == [pytest.approx(12.345)]


def test_a_median_of_5_runs_comes_with_its_range_as_a_94_percent_interval():
    runs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert e10_common.figure(runs)["interval"] == {"low": 1.0, "high": 5.0, "confidence": 0.938}
    # from 8 runs, the second lowest to the second highest: still at least 90 %
    assert e10_common.median_interval([float(v) for v in range(8)]) == {"low": 1.0, "high": 6.0, "confidence": 0.93}
    assert e10_common.median_interval([1.0, 2.0, 3.0]) is None


def test_the_bench_never_imports_the_experiment_and_each_room_stays_small():
    imports = {}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        imports[path.name] = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert len(path.read_text().splitlines()) <= 300, path.name
    # one direction: e10_throughput imports the bench, never the other way round (the workers import it by name)
    assert [name for name, found in imports.items() if "e10_throughput" in found] == []
    # and the rooms import the common room, never the run that calls them
    assert [name for name, found in imports.items() if "benchmarks.e10_bench" in found] == []


class SteadyDrain:
    """A drain on a fake clock, for ``release()`` as its client and its ``time``: picked up 60 ms after the
    push, then 3,000 messages acked evenly over 1 s; redis-server's CPU is 10 µs a poll and 50 µs a message."""

    def __init__(self) -> None:
        self.now, self.pushed, self.polls = 1000.0, None, 0

    def time(self) -> float:
        return self.now

    monotonic = process_time = time

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def acked(self) -> int:
        return 0 if self.pushed is None else min(3000, int(max(0.0, self.now - self.pushed - 0.06) * 3000))

    def rpush(self, name: str, *ids: str) -> None:
        self.pushed = self.now

    def llen(self, name: str) -> int:
        self.polls += 1
        return 3000 if self.now - self.pushed < 0.06 else max(0, 3000 - 64 - self.acked())

    def hlen(self, name: str) -> int:
        self.polls += 1
        return 3000 - self.acked()

    def info(self, section: str) -> dict[str, Any]:
        if section == "cpu":
            return {"used_cpu_user": self.polls * 10e-6 + self.acked() * 50e-6, "used_cpu_sys": 0.0}
        return {"cmdstat_evalsha": {"calls": 0}}


def test_the_bench_polls_a_drain_sparsely_and_subtracts_what_its_polls_cost_redis(monkeypatch):
    drain = SteadyDrain()
    monkeypatch.setattr(e10_drains, "time", drain)
    monkeypatch.setattr(e10_drains, "cpu_seconds", lambda pids: 0.0)
    # Given 3,000 messages, picked up after 60 ms and acked evenly over 1 s, and a poll costing redis-server 10 µs
    found = e10_drains.release(drain, "e10", ["id"] * 3000, [], poll_s=0.02, real=True, ledger=e10_common.Ledger(),
                               batch="steady", server_us_per_poll=10)
    # then the bench polled about half as often as one poll every 20 ms would have (62)
    assert 15 <= found["polls"] <= 40, found["polls"]
    # and still knew each moment to within half its gap: the rate is 3,000/s to 1.5 %, the pick-up 60 ms
    assert found["timing_error"] < 0.015 and found["rate"] == pytest.approx(3000, rel=found["timing_error"])
    assert found["pickup_ms"] == pytest.approx(60, abs=3)
    # and redis-server's CPU per message is given net of the polls it served, and with them
    assert found["server_cpu_ms_per_message"] == pytest.approx(0.050)
    assert found["server_cpu_ms_per_message_with_polls"] == pytest.approx(0.050 + found["polls"] * 0.010 / 3000)


class SlowStartDrain(SteadyDrain):
    """The same, but its first 0.2 s ack 30 messages only (the first fetches, threads warming up)."""

    def acked(self) -> int:
        if self.pushed is None:
            return 0
        t = max(0.0, self.now - self.pushed - 0.06)
        return int(t * 150) if t < 0.2 else min(3000, 30 + int((t - 0.2) * 3000))


def test_a_slow_start_does_not_make_the_bench_sleep_past_the_end(monkeypatch):
    drain = SlowStartDrain()
    monkeypatch.setattr(e10_drains, "time", drain)
    monkeypatch.setattr(e10_drains, "cpu_seconds", lambda pids: 0.0)
    # Given a drain whose first 0.2 s run at a twentieth of its rate
    found = e10_drains.release(drain, "e10", ["id"] * 3000, [], poll_s=0.02, real=True, ledger=e10_common.Ledger(),
                               batch="slow start", server_us_per_poll=10)
    # then the bench waits for a tenth of the batch before it trusts the rate, and knows the end to 2 %
    assert found["timing_error"] < 0.02, found
    assert found["rate"] == pytest.approx(3000 / (0.2 + 2970 / 3000), rel=0.02)


def test_at_its_defaults_each_library_gets_no_option_of_processes_or_threads():
    concurrency = {"--processes", "-p", "--threads", "-t", "-w", "--workers", "-k", "--worker-type", "-c",
                   "--concurrency", "--pool", "-P"}
    for library in e10_peers.LIBRARIES:
        defaults = e10_peers.workers(library, "q", "redis://unused", "defaults")
        matched = e10_peers.workers(library, "q", "redis://unused", "matched")
        # at its defaults: one worker command, with no option of processes or threads, so the library decides
        assert len(defaults) == 1 and concurrency.isdisjoint(defaults[0]), (library, defaults)
        # matched: 2 processes of 8 threads (one dramatiq command of 2; two of the others; RQ has no threads)
        options = [a for cmd in matched for a in cmd if a in concurrency or a in ("2", "8", "threads", "thread")]
        assert options == {"dramatiq": ["--processes", "2", "--threads", "8"], "rq": [],
                           "huey": ["-w", "8", "-k", "thread"] * 2,
                           "celery": ["--pool", "threads", "-c", "8"] * 2}[library], (library, matched)
        assert len(matched) == (1 if library == "dramatiq" else 2)


def test_without_the_peers_the_report_says_what_to_install(monkeypatch):
    # Given a machine where Huey is not installed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "huey" else real(name))
    # then the comparison is skipped, and the report names the one command that installs the peers
    peers = e10_peers.compare("redis://unused", "e10", 1, {"noop": 1}, 1, None, e10_common.Ledger())
    assert peers["available"] is False and "huey" in peers["missing"]
    assert "pip install -r benchmarks/requirements-peers.txt" in peers["note"]


# -- prefetch, and the consumer's sleeps: the 1-thread trap ----------------------------------------


def test_prefetch_is_twice_the_threads_unless_dramatiq_queue_prefetch_sets_it_at_import():
    assert [dramatiq.Worker(StubBroker(), worker_threads=n).queue_prefetch for n in (1, 8)] == [2, 16]
    code = ("import os, dramatiq\n"
            "from dramatiq.brokers.stub import StubBroker\n"
            "os.environ['dramatiq_queue_prefetch'] = '9'  # too late: read when dramatiq.worker was imported\n"
            "workers = [dramatiq.Worker(StubBroker(), worker_threads=n) for n in (1, 8)]\n"
            "print([w.queue_prefetch for w in workers], [w.delay_prefetch for w in workers])")
    env = {name: value for name, value in os.environ.items() if not name.startswith("dramatiq_")}
    env["dramatiq_queue_prefetch"] = "64"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    # 64 whatever the threads; the delay queues' prefetch (1000 x threads) is another variable's
    assert result.stdout.split("\n")[0] == "[64, 64] [1000, 8000]", result.stderr


def test_prefetch_counts_per_consumer_one_per_queue_and_a_delay_queue_takes_the_delay_prefetch(broker, start_worker):
    # Given a worker of 2 threads on two queues, each with its delay queue
    for queue in ("e10", "e10-other"):
        broker.declare_queue(queue)
    worker = start_worker(threads=2, queues={"e10", "e10-other"})
    prefetch = {name: consumer.prefetch for name, consumer in worker.consumers.items()}
    # then every queue has a consumer of its own, holding up to 2 x threads each; the consumers of the
    # delay queues (.DQ) hold up to dramatiq_delay_queue_prefetch, 1000 x threads by default
    assert prefetch == {"e10": 4, "e10.DQ": 2000, "e10-other": 4, "e10-other.DQ": 2000}


def test_a_consumer_holding_its_prefetch_sleeps_instead_of_fetching(load, broker, sleeps):
    e10 = load("e10")
    # Given three messages waiting, and the consumer of a 1-thread worker: prefetch 2
    for _ in range(3):
        e10.does_nothing.send("trap")
    consumer = broker.consume(e10.QUEUE, prefetch=2, timeout=1000)
    # when it has handed out two messages (one fetch) and neither is acked yet
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None and sleeps == []
    # then it does not fetch the third, which waits in Redis: it sleeps, 5-9 ms, then 10-19, then 20-39,
    # backing off as if the queue were empty, until an ack frees a slot
    assert [next(consumer) for _ in range(3)] == [None, None, None]
    assert broker.client.llen(key(broker, e10.QUEUE)) == 1
    assert [5 <= sleeps[0] <= 9, 10 <= sleeps[1] <= 19, 20 <= sleeps[2] <= 39] == [True] * 3, sleeps
    consumer.ack(first)
    third = next(consumer)
    assert third is not None and broker.client.llen(key(broker, e10.QUEUE)) == 0
    consumer.close()


def test_a_message_costs_one_enqueue_one_ack_and_a_prefetchth_of_a_fetch(load, broker, sleeps, monkeypatch):
    e10 = load("e10")
    dispatch, calls = broker.scripts["dispatch"], []

    heartbeats, beat_with_the_call = key(broker, "__heartbeats__"), []

    def counting(keys=None, args=None, client=None):
        result = dispatch(keys=keys, args=args, client=client)
        calls.append((args[0], len(result) if args[0] == "fetch" else 1))
        # args: command, timestamp (ms), queue, the caller's broker id, ...
        beat_with_the_call.append(broker.client.zscore(heartbeats, args[3]) == args[1])
        return result

    monkeypatch.setitem(broker.scripts, "dispatch", counting)
    fetched = {}
    for prefetch in (2, 10):
        # Given ten messages sent, one Lua dispatch call each
        for _ in range(10):
            e10.does_nothing.send("costs")
        assert calls == [("enqueue", 1)] * 10, calls
        # and a consumer that acks each one as it gets it
        consumer = broker.consume(e10.QUEUE, prefetch=prefetch, timeout=100)
        got = 0
        while got < 10:
            if (message := next(consumer)) is not None:
                consumer.ack(message)
                got += 1
        consumer.close()
        fetched[prefetch] = [n for command, n in calls if command == "fetch"]
        # then each message took one Lua dispatch call to enqueue and one to ack
        assert [c for c, _ in calls].count("enqueue") == 10 and [c for c, _ in calls].count("ack") == 10
        calls.clear()
    # and the fetches brought them in batches of at most prefetch: five calls with 2, one call with 10
    assert fetched == {2: [2, 2, 2, 2, 2], 10: [10]}
    # and every call, enqueue, fetch or ack, wrote its caller's heartbeat with the call's own timestamp
    assert len(beat_with_the_call) >= 46 and all(beat_with_the_call), beat_with_the_call


def test_an_idle_consumer_ends_up_sleeping_half_to_all_of_worker_timeout(broker, sleeps):
    # Given a consumer on an empty queue with the default worker_timeout, 1000 ms
    consumer = broker.consume("e10-idle0", prefetch=2, timeout=1000)
    # when it finds nothing 12 times in a row
    assert [next(consumer) for _ in range(12)] == [None] * 12
    # then it sleeps 5-9 ms, then twice that each time (jittered up to x2) ...
    assert [5 * 2**k <= ms < 10 * 2**k for k, ms in enumerate(sleeps[:7])] == [True] * 7, sleeps
    # ... and after 0.6-1.3 s of nothing, every sleep is 500-1000 ms: a message sent now waits for the end of one
    assert 635 <= sum(sleeps[:7]) < 1270 and all(500 <= ms <= 1000 for ms in sleeps[7:]), sleeps
    consumer.close()


def test_a_big_prefetch_is_a_queue_inside_the_worker(broker, start_worker):
    # Given 8 messages of an actor that holds its thread until the test lets go
    gate, started = threading.Event(), []

    def holds(n: int) -> None:
        started.append((n, threading.current_thread()))
        gate.wait(10)

    holder = dramatiq.actor(holds, queue_name="e10-held", broker=broker)
    for n in range(8):
        holder.send(n)
    try:
        # when a worker of 1 thread with prefetch 8 takes them: it runs one and holds the other 7
        busy = start_worker(threads=1, prefetch=8, queues={"e10-held"})
        assert lab.wait_until(lambda: len(started) == 1 and broker.client.llen(key(broker, "e10-held")) == 0,
                              timeout=5), (started, broker.client.llen(key(broker, "e10-held")))
        waiting_inside = 8 - len(started) - broker.client.llen(key(broker, "e10-held"))
        assert waiting_inside == 8 - 1  # prefetch - threads: a queue of its own, out of Redis
        # and a second worker, of the same thread and prefetch, starts idle beside it
        start_worker(threads=1, prefetch=8, queues={"e10-held"})
    finally:
        gate.set()
    assert lab.wait_until(lambda: len(started) == 8, timeout=5), started
    # then the 7 waited for the busy worker's one thread, in the order sent, while the idle one found nothing
    assert [n for n, _ in started] == list(range(8))
    assert [thread for _, thread in started] == [busy.workers[0]] * 8


def test_message_timestamp_is_the_senders_clock_in_whole_milliseconds():
    before = time.time() * 1000
    message = dramatiq.Message(queue_name="e10", actor_name="notes_its_latency", args=("t",), kwargs={}, options={})
    after = time.time() * 1000
    # set when the message is built, by the sender: latency = actor start - this, on one machine's clock
    assert isinstance(message.message_timestamp, int) and before - 1 <= message.message_timestamp <= after


def test_the_dramatiq_cli_runs_a_process_per_core_and_8_threads_by_default():
    args = dramatiq.cli.make_argument_parser().parse_args(["e10_throughput"])
    assert (args.processes, args.threads) == (os.cpu_count(), 8)


# -- threads and processes ------------------------------------------------------------------------


def run_in_threads(target, count: int) -> tuple[float, list[float]]:
    """(wall seconds, each thread's CPU seconds) for ``count`` threads running ``target`` at once."""
    cpu: list[float] = []

    def timed() -> None:
        started = time.thread_time()
        target()
        cpu.append(time.thread_time() - started)

    threads = [threading.Thread(target=timed) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, cpu


def test_threads_overlap_waits_on_io_but_not_burns_cpu(load):
    e10 = load("e10")
    # Given 8 threads that each wait 50 ms, as on a slow API: they wait together, not in turn
    wall, _ = run_in_threads(lambda: e10.waits_on_io.fn("threads", 50), 8)
    assert wall < 0.2, wall  # 8 x 50 ms in turn would be 0.4 s
    # Given 2 threads of pure-Python arithmetic: they hold the GIL, so their CPU time never overlaps
    wall, cpu = run_in_threads(lambda: e10.burns_cpu.fn("threads", 300_000), 2)
    assert wall >= 0.9 * sum(cpu), (wall, cpu)  # on a free-threaded Python this would fail


# -- the embedded server, and the command line ----------------------------------------------------


def test_on_the_embedded_server_the_report_says_these_are_not_redis_figures():
    with EmbeddedRedis(port=0) as server:
        found = e10_bench.conditions(server.url)
    assert found["server"] == f"fakeredis {fakeredis.__version__}" and found["real_redis"] is False
    assert found["note"].startswith("NOT Redis figures: this is fakeredis")
    # memory:// cannot be shared with worker processes: the run serves it over TCP instead
    with e10_bench.reachable(lab.MEMORY_URL) as (url, embedded):
        assert embedded and url.startswith("redis://127.0.0.1:") and redis.Redis.from_url(url).ping()


def test_fakeredis_hello_without_a_version_breaks_the_next_nil_reply_on_its_connection():
    with EmbeddedRedis(port=0) as server:
        # Given a redis-py 8 connection (RESP3) that asked a bare HELLO: fakeredis says proto 2 ...
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        hello = client.execute_command("HELLO")
        assert hello[:2] == [b"server", b"fakeredis"] and hello[hello.index(b"proto") + 1] == 2
        # ... and from then on answers nil the RESP2 way, which the RESP3 parser waits on until its timeout
        with pytest.raises(redis.TimeoutError):
            client.get("no-such-key")
        # while a connection of its own is unaffected: conditions() asks HELLO on a throwaway one
        assert redis.Redis.from_url(server.url).get("no-such-key") is None
        client.close()


@pytest.mark.parametrize(("args", "says"), [
    (["--runs", "4"], "Invalid value for '--runs': 4 is not in the range 5<=x<=20."),
    (["--runs", "many"], "Invalid value for '--runs': 'many' is not a valid integer range."),
    (["--json", "--rst"], "--json and --rst each print the whole report: choose one."),
    (["--bogus"], "No such option '--bogus'."),
], ids=["runs-4", "runs-not-a-number", "json-and-rst", "unknown-option"])
def test_bad_options_are_one_line_usage_errors(load, args, says):
    e10 = load("e10")
    result = CliRunner().invoke(e10.main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output


def test_an_unreachable_redis_is_one_line_and_exit_3_before_any_process_starts(sender):
    result = sender("e10_throughput.py", "--quick", url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot reach Redis at" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""

