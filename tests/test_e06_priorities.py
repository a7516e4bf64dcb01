"""Experiment 06's lessons: where priority acts, prefetch, a queue of its own, processes and threads."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import lab
from lab import experiments
from lab.stats import most_at_once
from lab.urls import NAMESPACE_ENV

import dramatiq
import pytest
from click.testing import CliRunner
from dramatiq import Message
from dramatiq.cli import make_argument_parser
from dramatiq.worker import _WorkQueueItem

from conftest import WorkerProcess

SLEEPS = 20  # the notes had 100 low-priority sleeps; 20 show the same, five times sooner


@pytest.fixture
def e06(load) -> ModuleType:
    return load("e06")


def test_a_high_priority_message_waits_behind_the_backlog_it_was_not_prefetched_with(e06, broker, recorder):
    # Given 3 sleeps (priority 100) and then a greeting (priority 0): Redis holds them in one list, in send order
    sent = [e06.sleepy.send(i, 1) for i in range(3)] + [e06.greet.send("Ada")]
    in_redis = [i.decode() for i in broker.client.lrange(lab.key(broker, "e06"), 0, -1)]
    assert in_redis == [m.options["redis_message_id"] for m in sent]  # FIFO: no priority in Redis
    assert (e06.greet.priority, e06.sleepy.priority) == (0, 100)  # a lower number is a higher priority
    broker.flush("e06")
    # When the notes' experiment runs: 20 sleeps of 10 ms, a greeting, then 1 thread with the default prefetch (2)
    ran, _ = e06.notes_experiment(SLEEPS, 10, threads=1, prefetch=None)
    # then the greeting ran only once the worker had fetched it: after (almost) every sleep sent before it
    position = [a.actor for a in ran].index("greet") + 1
    assert position >= SLEEPS - 1, f"the greeting ran {position} of {SLEEPS + 1}"


def test_with_a_prefetch_above_the_backlog_the_greeting_runs_next(e06, recorder):
    # Given the same backlog, and a worker whose prefetch (50) holds all of it in memory
    ran, _ = e06.notes_experiment(SLEEPS, 10, threads=1, prefetch=50)
    # then priority acts: the greeting runs first, or second if the thread took a sleep before it arrived
    position = [a.actor for a in ran].index("greet") + 1
    assert position <= 2, f"the greeting ran {position} of {SLEEPS + 1}"


def test_the_queue_prefetch_is_twice_the_threads_unless_the_variable_set_it_at_import():
    code = ("import os, dramatiq\n"
            "from dramatiq.brokers.stub import StubBroker\n"
            "os.environ['dramatiq_queue_prefetch'] = '9'  # too late: read when dramatiq.worker was imported\n"
            "print([dramatiq.Worker(StubBroker(), worker_threads=n).queue_prefetch for n in (1, 8, 40_000)])\n"
            "import fakeredis\n"
            "from dramatiq.brokers.redis import RedisBroker\n"
            "broker = RedisBroker(client=fakeredis.FakeRedis())\n"
            "broker.declare_queue('q')  # and its delay queue, q.DQ\n"
            "worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=10)\n"
            "worker.start()\n"
            "print(sorted((queue, consumer.prefetch) for queue, consumer in worker.consumers.items()))\n"
            "worker.stop()")
    env = {k: v for k, v in os.environ.items() if k not in ("dramatiq_queue_prefetch", "dramatiq_delay_queue_prefetch")}
    runs = [subprocess.Popen([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE, text=True)
            for e in (env, {**env, "dramatiq_queue_prefetch": "7", "dramatiq_delay_queue_prefetch": "5"})]
    unset, set_ = (run.communicate(timeout=30)[0].splitlines() for run in runs)
    # 2 per thread, capped at 65,535, for each queue's consumer; a delay queue's consumer holds 1000
    # per thread instead
    assert unset == ["[2, 16, 65535]", "[('q', 6), ('q.DQ', 3000)]"]
    # set, the variable is a total for each consumer, whatever the threads; the delay queue's has its own
    assert set_ == ["[7, 7, 7]", "[('q', 7), ('q.DQ', 5)]"]


def test_a_consumer_fetches_its_prefetch_minus_what_it_holds(e06, broker):
    # Given 10 sleeps on e06 and a consumer with prefetch 3
    for i in range(10):
        e06.sleepy.send(i, 0)
    consumer = broker.consume("e06", prefetch=3, timeout=10)

    def waiting() -> int:
        return broker.client.llen(lab.key(broker, "e06"))

    # when it hands out the first message, it has fetched 3
    held = [next(consumer)]
    assert waiting() == 7
    held += [next(consumer), next(consumer)]
    # while it holds them (running or not), it fetches nothing more
    assert next(consumer) is None and waiting() == 7
    # once one is acked, it fetches 1
    consumer.ack(held.pop(0))
    held.append(next(consumer))
    assert waiting() == 6 and all(m is not None for m in held)
    consumer.close()


def test_within_one_priority_the_worker_runs_messages_in_the_order_it_fetched_them(e06, broker, recorder, start_worker):
    # Since 2.2.0 (pull request 857) the work queue orders by (priority, time put in), not by priority alone
    assert [f.name for f in dataclasses.fields(_WorkQueueItem) if f.compare] == ["priority", "_queued_time"]
    # Given 15 sleeps of one priority, all fetched at once by a 1-thread worker
    for i in range(15):
        e06.sleepy.send(i, 2)
    start_worker(threads=1, queues={"e06"}, prefetch=50)
    broker.join("e06", timeout=10_000)
    # then they ran in the order they were sent
    assert [a.args[0] for a in recorder.attempts] == list(range(15))


def test_a_priority_option_on_one_message_is_kept_and_ignored(e06, broker, recorder, start_worker):
    # Given two sleeps, the second sent with priority=-50 (higher than greet's 0), then a greeting
    e06.sleepy.send(0, 1)
    urged = e06.sleepy.send_with_options(args=(1, 1), priority=-50)
    e06.greet.send("Ada")
    stored = Message.decode(broker.client.hget(lab.key(broker, "e06.msgs"), urged.options["redis_message_id"]))
    assert stored.options["priority"] == -50  # kept in the message, as any unknown option is
    # When a 1-thread worker fetches all three at once
    start_worker(threads=1, queues={"e06"}, prefetch=10)
    broker.join("e06", timeout=10_000)
    # then the actor's priority decided: the greeting ran before the "urgent" sleep, which kept its place
    order = [(a.actor, a.args[0]) for a in recorder.attempts]
    assert order.index(("greet", "Ada")) < order.index(("sleepy", 1)), order
    assert order.index(("sleepy", 0)) < order.index(("sleepy", 1)), order


def test_on_a_queue_of_its_own_the_greeting_waits_for_a_thread_not_for_the_backlog(e06, broker, recorder, start_worker):
    # Given a 1-thread worker that serves both queues, busy with 20 sleeps of 50 ms on e06, all fetched
    for i in range(SLEEPS):
        e06.sleepy.send(i, 50)
    start_worker(threads=1, queues={"e06", "e06-urgent"}, prefetch=50)  # it holds all 20 sleeps
    assert lab.wait_until(lambda: recorder.attempts and broker.client.llen(lab.key(broker, "e06")) == 0, timeout=5)
    # When the greeting goes to e06-urgent: that queue's consumer fetches it at once, and its priority (0)
    # puts it ahead of the sleeps the worker holds (100)
    e06.greet_urgent.send("Ada")
    broker.join("e06-urgent", timeout=10_000)
    order = [a.actor for a in recorder.attempts]
    # then it ran once its consumer polled (every worker_timeout, 100 ms, at most) and the thread was free:
    # after a few sleeps, not after the 20 the worker held
    assert order.index("greet_urgent") <= 5, order


def test_a_big_prefetch_holds_messages_another_worker_could_run(e06, broker, recorder, start_worker):
    # Given a 1-thread worker with prefetch 50, which has fetched all 10 sleeps at once
    for i in range(10):
        e06.sleepy.send(i, 50)
    first = start_worker(threads=1, queues={"e06"}, prefetch=50)
    assert lab.wait_until(lambda: broker.client.llen(lab.key(broker, "e06")) == 0, timeout=5)
    held = broker.client.scard(lab.key(broker, f"__acks__.{broker.broker_id}.e06"))
    assert held >= 8, f"it held {held} when e06 went empty"  # all 10, but for one or two it has run since
    # When a second worker with 4 idle threads starts
    start_worker(threads=4, queues={"e06"})
    broker.join("e06", timeout=10_000)
    # then it got none of them: the first worker's one thread ran all 10, one after another
    threads = {a.thread for a in recorder.attempts}
    assert len(recorder.attempts) == 10 and threads <= {t.name for t in first.workers}, threads


OWN = "e06-own-worker"  # the namespace of the tests with a worker of its own: the other tests never meet it


@pytest.fixture(scope="module")
def own_worker(redis_server: str) -> Iterator[WorkerProcess]:
    """A real `dramatiq` for e06-urgent and e06-cpu only: 2 processes of 1 thread, shared by this module's tests."""
    worker = WorkerProcess(["--processes", "2", "--threads", "1", "e06_priorities", "--queues", "e06-urgent",
                            "e06-cpu"], url=redis_server, dramatiq_worker_timeout="100", **{NAMESPACE_ENV: OWN})
    try:
        yield worker.ready(2)
    finally:
        worker.kill()  # SIGKILL: a clean stop costs the CLI about 2 s (it polls once a second), and proves nothing here
        worker.close()


@pytest.fixture
def e06_on_redis(real_redis_url: str, own_worker: WorkerProcess) -> Iterator[ModuleType]:
    broker = lab.use_broker(lab.make_broker(real_redis_url, namespace=OWN))
    lab.Recorder.install(broker)
    yield experiments.load(experiments.find("e06"))
    broker.close()


@pytest.mark.e2e
def test_a_queue_of_its_own_with_a_worker_of_its_own_does_not_wait_behind_the_bulk(e06_on_redis):
    e06 = e06_on_redis
    # Given a 1-thread worker on e06 (in this process) and a `dramatiq --queues e06-urgent e06-cpu` process
    bulk = dramatiq.Worker(e06.broker, queues={"e06"}, worker_threads=1, worker_timeout=100)
    bulk.start()
    try:
        # When 20 sleeps of 25 ms go to e06, then the same greeting to e06 and to e06-urgent
        for i in range(SLEEPS):
            e06.sleepy.send(i, 25)
        on_bulk, on_own = e06.greet.send("on e06"), e06.greet_urgent.send("on e06-urgent")
        waited = {"e06": on_bulk.get_result(block=True, timeout=10_000),
                  "e06-urgent": on_own.get_result(block=True, timeout=10_000)}
    finally:
        lab.stop_worker(bulk)
    # then the greeting on its own queue did not wait behind the sleeps; the one on e06 waited for most of them
    assert waited["e06-urgent"] < waited["e06"] / 2, waited
    assert waited["e06"] >= (SLEEPS - 2) * 25, waited


@pytest.mark.e2e
def test_cpu_bound_actors_run_side_by_side_in_two_processes(e06_on_redis):
    e06 = e06_on_redis
    # Given the `dramatiq --processes 2 --threads 1` worker, when 4 CPU-bound crunches are sent
    results = [m.get_result(block=True, timeout=10_000) for m in [e06.crunch.send(i, 1_000_000) for i in range(4)]]
    # then both processes ran some, at the same time: two cores, one GIL each
    assert len({r["pid"] for r in results}) == 2, results
    assert most_at_once([(r["started"], r["ended"]) for r in results]) == 2, results


def test_the_cli_defaults_to_one_process_per_cpu_and_8_threads():
    defaults = make_argument_parser().parse_args(["e06_priorities"])
    assert (defaults.processes, defaults.threads, defaults.queues) == (multiprocessing.cpu_count(), 8, None)
    chosen = make_argument_parser().parse_args(["e06_priorities", "-p", "2", "-t", "4", "-Q", "e06-urgent"])
    assert (chosen.processes, chosen.threads, chosen.queues) == (2, 4, ["e06-urgent"])


def test_queues_before_the_module_swallows_the_module(capsys):
    # --queues takes every word after it, so `dramatiq --queues e06-urgent e06_priorities` names no module
    with pytest.raises(SystemExit) as exit_:
        make_argument_parser().parse_args(["--queues", "e06-urgent", "e06_priorities"])
    assert exit_.value.code == 2
    assert "the following arguments are required: broker" in capsys.readouterr().err
    after = make_argument_parser().parse_args(["e06_priorities", "--queues", "e06-urgent"])
    assert (after.broker, after.queues) == ("e06_priorities", ["e06-urgent"])


def test_a_sleeping_actor_runs_side_by_side_on_threads(e06, broker, recorder, start_worker):
    # Given 4 sleeps of 200 ms and a worker with 4 threads
    for i in range(4):
        e06.sleepy.send(i, 200)
    start_worker(threads=4)
    broker.join("e06", timeout=10_000)
    # then all 4 slept at the same time, each on its own thread: sleeping frees the GIL
    assert most_at_once([(a.started, a.ended) for a in recorder.attempts]) == 4
    assert len({a.thread for a in recorder.attempts}) == 4


def test_cpu_bound_actors_on_threads_of_one_process_use_one_core_at_most(e06, broker, recorder, start_worker):
    # Given a worker with 4 threads, when 4 CPU-bound crunches run on it
    start_worker(threads=4)
    wall, cpu = time.monotonic(), time.process_time()
    for i in range(4):
        e06.crunch.send(i, 1_000_000)
    broker.join("e06-cpu", timeout=20_000)
    cores = (time.process_time() - cpu) / (time.monotonic() - wall)
    # then they ran at the same time, and yet the process used one core at most: the threads took turns
    assert most_at_once([(a.started, a.ended) for a in recorder.attempts]) >= 2
    assert cores < 1.3, f"{cores:.2f} cores"


def test_flood_and_greet_send_to_their_queues_and_say_so(e06, broker, recorder, start_worker):
    runner = CliRunner()
    flood = runner.invoke(e06.main, ["flood", "3", "--ms", "5"])
    assert flood.exit_code == 0 and flood.output == "sent 3 x sleepy  queue=e06  priority=100\n"
    crunch = runner.invoke(e06.main, ["crunch", "2"])
    assert crunch.exit_code == 0 and crunch.output == "sent 2 x crunch  queue=e06-cpu  priority=0\n"
    greet = runner.invoke(e06.main, ["greet", "Ada", "--urgent"])
    assert greet.exit_code == 0 and greet.output.startswith("sent greet_urgent('Ada')  id=")
    assert greet.output.endswith("  queue=e06-urgent\n")
    assert [broker.client.llen(lab.key(broker, q)) for q in ("e06", "e06-cpu", "e06-urgent")] == [3, 2, 1]
    # --wait waits for a worker to run them all, and says how long it took
    broker.flush("e06-cpu")
    start_worker(threads=2)
    flood = runner.invoke(e06.main, ["flood", "2", "--ms", "1", "--wait"])
    assert flood.exit_code == 0 and flood.output.splitlines()[-1].startswith("all 2 done ")
    assert len(recorder.attempts_of("sleepy")) == 5


@pytest.mark.parametrize(("args", "says"), [
    (["flood", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=10000."),
    (["flood", "abc"], "'abc' is not a valid integer range."),
    (["flood", "3", "--ms", "-1"], "-1 is not in the range 0<=x<=60000."),
    (["crunch", "10001"], "10001 is not in the range 1<=x<=10000."),
    (["greet"], "Missing argument 'NAME'."),
    (["greet", "x" * 101], "Invalid value for 'NAME': 101 characters; a name has 1 to 100"),
    (["measure", "--sleeps", "0"], "0 is not in the range 1<=x<=1000."),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(args, says, monkeypatch, capsys):
    monkeypatch.setenv(lab.URL_ENV, lab.MEMORY_URL)
    monkeypatch.setattr(lab.broker, "_broker", None)  # as in a new process
    e06 = experiments.load(experiments.find("e06"))
    with pytest.raises(SystemExit) as exit_:
        e06.main(args, prog_name="e06_priorities.py")  # standalone, as `python e06_priorities.py ARGS`
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and says in err, err


def test_measure_shows_the_greeting_running_at_backlog_plus_3_minus_the_prefetch(monkeypatch):
    # Given the notes' experiment with 60 sleeps of 5 ms and then the greeting, for each row of the table
    monkeypatch.setattr(lab.broker, "_broker", None)
    broker = lab.use_broker(lab.make_broker(lab.MEMORY_URL))
    try:
        e06 = experiments.load(experiments.find("e06"))
        result = CliRunner().invoke(e06.main, ["measure", "--sleeps", "60", "--ms", "5"])
    finally:
        broker.close()
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.split()[:1] in (["1"], ["8"])]
    ran = {(int(row[0]), int(row[1])): int(row[row.index("of") - 1]) for row in rows}
    assert list(ran) == [(1, 2), (1, 10), (1, 50), (1, 200), (8, 16), (8, 200)], result.output
    assert all(row[row.index("of") + 1] == "61" for row in rows), result.output
    # then on one thread, the greeting ran at 63 minus the prefetch, or one place off: once fetched, it
    # went before the prefetch - 2 sleeps the worker held and had not started (prefetch - 1 if none ran)
    for (threads, prefetch), position in ran.items():
        if prefetch <= 61:
            assert 62 - prefetch <= position <= (65 - prefetch if threads == 1 else 61), (threads, prefetch, ran)
    # and with a prefetch above the backlog, before (almost) every sleep: they were all in the work queue
    assert ran[(1, 200)] <= 3 and ran[(8, 200)] <= 2 * 8 + 1, ran
