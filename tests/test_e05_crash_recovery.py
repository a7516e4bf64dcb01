"""e05's lessons: what a crash leaves in Redis, what brings it back, what runs twice, and what is lost.

The tests in this process run on both brokers and simulate a dead worker the way Redis sees one:
a broker id that fetched messages and never called again. The tests with real processes and
signals share one run of the scenario's phases on a private redis-server (``crashes``).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import statistics
from types import ModuleType, SimpleNamespace

import lab
from lab import experiments
from lab.broker import make_client
from lab.keys import key, purge_queue

import dramatiq
import pytest
import redis
from click.testing import CliRunner
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE, MAINTENANCE_SCALE, RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.cli import make_argument_parser
from dramatiq.middleware import CurrentMessage, default_middleware

from conftest import RedisServer, need_redis_server


@pytest.fixture
def e05(load, recorder) -> ModuleType:
    """The experiment, bound to this test's broker, with a recorder on it (no worker yet)."""
    return load("e05")


@pytest.fixture
def scene(e05) -> ModuleType:
    """The scenario's helpers: ``dies_holding`` (a worker that fetched and died) and ``recover``."""
    return importlib.import_module("scenarios.e05_crash_recovery")


def ready_ids(broker) -> list[str]:
    return [i.decode() for i in broker.client.lrange(key(broker, "e05"), 0, -1)]


def tuned(broker, heartbeat_timeout: int = 50) -> None:
    """Recovery as fast as a test wants it: dead after 50 ms, maintenance on every dispatch call."""
    broker.heartbeat_timeout, broker.maintenance_chance = heartbeat_timeout, MAINTENANCE_SCALE


# -- in this process, on both brokers ---------------------------------------------------------------------------------


def test_recovery_needs_a_stale_heartbeat_and_maintenance_for_that_queue(broker, e05, scene):
    # Given a worker that fetched a deposit, and a delayed one (on e05.DQ), and died; and a deposit sent after
    lost = e05.deposit.send(1, 0)
    delayed = e05.deposit.send_with_options(args=(2, 0), delay=60_000)
    held, held_delayed = scene.dies_holding(broker, queues=("e05", "e05.DQ"))
    [dead] = scene.heartbeats(broker) - {broker.broker_id}
    later = e05.deposit.send(1, 0)
    tuned(broker, heartbeat_timeout=200)
    # when maintenance runs while its heartbeat is fresh, then with it stale but no maintenance drawn,
    # then for another queue, then on every call but the calls for e05 are an ack and a nack:
    # nothing comes back
    broker.do_qsize("e05")
    assert lab.wait_until(lambda: scene.others_stale(broker), timeout=5)
    broker.maintenance_chance = 0
    broker.do_qsize("e05")
    broker.maintenance_chance = MAINTENANCE_SCALE
    broker.do_qsize("e05-elsewhere")
    broker.do_ack("e05", held.options["redis_message_id"])  # not this broker's: it acks nothing
    broker.do_nack("e05", held.options["redis_message_id"])  # ack and nack never draw maintenance
    assert ready_ids(broker) == [later.options["redis_message_id"]]
    assert broker.client.exists(key(broker, f"__acks__.{dead}.e05"))
    # then a sender's enqueue for e05 draws it, and maintenance puts the lost one back first, at the tail,
    # with the same redis id; its acks set for e05 goes
    after = e05.deposit.send(1, 0)
    assert held.options["redis_message_id"] == lost.options["redis_message_id"]
    assert ready_ids(broker) == [m.options["redis_message_id"] for m in (later, lost, after)]
    assert not broker.client.exists(key(broker, f"__acks__.{dead}.e05"))
    # but not its heartbeat: it still holds the delayed one, in its acks set for e05.DQ
    assert scene.heartbeats(broker) == {broker.broker_id, dead}
    # and maintenance for e05.DQ brings that one back; with no __acks__.<its id>* key left, its heartbeat goes
    broker.do_qsize("e05.DQ")
    assert held_delayed.message_id == delayed.message_id
    assert [i.decode() for i in broker.client.lrange(key(broker, "e05.DQ"), 0, -1)] == [
        delayed.options["redis_message_id"]]
    assert list(broker.client.scan_iter(key(broker, f"__acks__.{dead}*"))) == []
    assert scene.heartbeats(broker) == {broker.broker_id}


def test_a_recovered_message_comes_back_with_retries_still_0(broker, e05, scene, recorder, start_worker):
    # Given a deposit that three workers fetched and died with
    message = e05.deposit.send(1, 0)
    tuned(broker)
    retries_seen, redis_ids = [], set()
    for _ in range(3):
        [held] = scene.dies_holding(broker)
        retries_seen.append(held.options.get("retries", 0))
        redis_ids.add(held.options["redis_message_id"])
        scene.recover(broker)
    # when a live worker gets it
    start_worker(threads=1)
    broker.join("e05", timeout=5000)
    # then it was never counted as a retry: max_retries cannot stop what a crash brings back
    assert retries_seen == [0, 0, 0] and len(redis_ids) == 1
    assert [(a.message_id, a.number, a.outcome) for a in recorder.attempts] == [(message.message_id, 1, "ok")]


def test_delivery_limit_dead_letters_a_message_started_too_often_without_running_it(broker, e05, scene, recorder,
                                                                                     start_worker, caplog):
    # Given a deposit with max_deliveries=2 that two workers started and died with
    message = e05.deposit.send_with_options(args=(7, 0), max_deliveries=2)
    tuned(broker)
    limit = next(m for m in broker.middleware if type(m).__name__ == "DeliveryLimit")
    counter = e05.key(f"deliveries:{message.options['redis_message_id']}")
    for _ in range(2):
        [held] = scene.dies_holding(broker)
        limit.before_process_message(broker, held)
        scene.recover(broker)
    assert int(broker.client.get(counter)) == 2
    # when a live worker gets it a third time
    caplog.set_level(logging.WARNING)
    start_worker(threads=1)
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e05"), timeout=5)
    # then it is dead-lettered without running: no start, no deposit, a warning, and its count forgotten
    assert [(a.number, a.outcome) for a in recorder.attempts] == [(1, "skipped")]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e05")] == [message.message_id]
    assert broker.client.llen(e05.key("starts")) == 0 and broker.client.get(e05.key("counter")) is None
    warnings = [r.getMessage() for r in caplog.records if r.name.endswith("DeliveryLimit")]
    assert warnings == ["deposit(7, 0) started 2 times and never finished: dead-lettered"]
    assert not broker.client.exists(counter)


def test_delivery_limit_counts_a_crash_but_not_a_retry(broker, e05, recorder, start_worker):
    # Given a declined deposit (it raises, 2 retries) limited to a single delivery
    message = e05.deposit.send_with_options(args=(-5, 0), max_deliveries=1, min_backoff=10, max_backoff=20)
    # when a worker runs it
    start_worker(threads=1)
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e05"), timeout=5)
    # then every retry ran: a try's count is forgotten when it ends, and a retry is a new enqueue
    # with a new redis id, so each try is a first delivery
    assert [(a.message_id, a.number, a.outcome) for a in recorder.attempts] == [
        (message.message_id, 1, "retried"), (message.message_id, 2, "retried"), (message.message_id, 3, "failed")]
    assert list(broker.client.scan_iter(e05.key("deliveries:*"))) == []  # each count forgotten when its try ended


def test_a_failing_deposit_retries_while_others_flow_then_is_dead_lettered(broker, e05, recorder, start_worker):
    # Given, on one thread, a declined deposit sent first and five good ones after it
    declined = e05.deposit.send_with_options(args=(-5, 0), min_backoff=20, max_backoff=40)
    others = [e05.deposit.send(1, 0) for _ in range(5)]
    # when the worker has run them all
    start_worker(threads=1)
    assert lab.wait_until(lambda: lab.dead_letters(broker, "e05"), timeout=5)
    # then the good ones ran during its first backoff, and it ended in the dead letters
    order = [(a.message_id, a.outcome) for a in recorder.attempts]
    assert order[:6] == [(declined.message_id, "retried")] + [(m.message_id, "ok") for m in others]
    assert order[6:] == [(declined.message_id, "retried"), (declined.message_id, "failed")]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e05")] == [declined.message_id]
    assert broker.client.get(e05.key("counter")) == b"5"


def test_the_e05_variables_tune_the_brokers_recovery_and_a_bad_one_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(lab.broker, "_broker", None)  # restored after the test

    def import_e05() -> ModuleType:
        """Import e05 as a new process would: on a broker of its own (never connected here)."""
        lab.use_broker(lab.make_broker(lab.MEMORY_URL))
        return experiments.load(experiments.find("e05"))

    # Unset, the broker keeps Dramatiq's defaults
    assert (import_e05().broker.heartbeat_timeout, lab.setup_broker().maintenance_chance) == (60_000, 1000)
    # Set, they change this process's broker, so every experiment it loads
    monkeypatch.setenv("e05_heartbeat_timeout", "2000")
    monkeypatch.setenv("e05_maintenance_chance", "1000000")
    e05 = import_e05()
    assert (e05.broker.heartbeat_timeout, e05.broker.maintenance_chance) == (2000, 1_000_000)
    # A bad one ends the process, a sender's or a worker's, with one line and exit 2
    monkeypatch.setenv("e05_heartbeat_timeout", "2s")
    with pytest.raises(SystemExit) as exit_:
        import_e05()
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(": e05_heartbeat_timeout='2s' must be a whole number from 100 to 86400000")


def noted(e05, *messages) -> list:
    """``messages``, noted as sent, as the sender's ``deposit`` notes them."""
    e05.broker.client.hset(e05.key("sent"), mapping={m.message_id: m.args[0] for m in messages})
    return list(messages)


def test_count_tells_apart_not_finished_yet_dead_letters_and_lost(broker, e05, scene, start_worker):
    # Given a deposit purged from e05 before any worker ran it, as `python -m lab purge e05` does
    noted(e05, e05.deposit.send(1, 0))
    purge_queue(broker, "e05")
    # and a worker that ran a deposit, dead-lettered a declined one at once, and put another in e05.DQ for a retry
    a_minute = {"min_backoff": 60_000, "max_backoff": 60_000}
    finished, dead, retrying = noted(e05, e05.deposit.send(2, 0),
                                     e05.deposit.send_with_options(args=(-3, 0), max_retries=0),
                                     e05.deposit.send_with_options(args=(-4, 0), **a_minute))
    worker = start_worker(threads=1)
    assert lab.wait_until(lambda: broker.client.hlen(key(broker, "e05.DQ.msgs")) == 1
                          and lab.dead_letters(broker, "e05"), timeout=5)
    lab.stop_worker(worker)
    # and then, with no worker: one deposit fetched by a worker that died, one queued, one delayed
    in_flight = noted(e05, e05.deposit.send(5, 0))[0]
    assert [m.message_id for m in scene.dies_holding(broker)] == [in_flight.message_id]
    noted(e05, e05.deposit.send(6, 0), e05.deposit.send_with_options(args=(7, 0), delay=60_000))
    # when I count
    counted = CliRunner().invoke(e05.main, ["count"])
    # then the purged one is the only one lost; the retry counts as not finished yet, found by its message id
    # under the new redis id its retry got; the declined one is in the dead letters
    delayed = [dramatiq.Message.decode(m) for m in broker.client.hvals(key(broker, "e05.DQ.msgs"))]
    [retry] = [m for m in delayed if m.message_id == retrying.message_id]
    assert retry.options["redis_message_id"] != retrying.options["redis_message_id"]
    assert e05.counts() == {"sent": 7, "finished": 1, "not finished yet": 4, "dead letters": 1, "lost": 1,
                            "ran twice": 0, "sum finished": 2, "counter": 2, "ledger": 2}
    assert counted.exit_code == 0 and counted.output.splitlines()[:5] == [
        "            sent  7", "        finished  1", "not finished yet  4", "    dead letters  1",
        "            lost  1"]
    assert [d.message.message_id for d in lab.dead_letters(broker, "e05")] == [dead.message_id]
    assert broker.client.hkeys(e05.key("finished")) == [finished.message_id.encode()]


def test_sender_counts_what_came_of_the_deposits_lists_the_pids_and_resets(broker, e05, start_worker):
    # Given 3 deposits sent by the sender, run by a worker (in this process)
    runner = CliRunner()
    sent = runner.invoke(e05.main, ["deposit", "3", "--ms", "0"])
    assert sent.exit_code == 0 and sent.output == "sent 3 x deposit(1, 0)  queue=e05\n"
    [ms] = [option for option in e05.deposit_command.params if option.name == "ms"]
    assert ms.default == 2000  # a kill's window: 100 deposits on 8 threads take 25 s
    start_worker()
    broker.join("e05", timeout=5000)
    # when I count, and reset, then every one finished, the worker's pid started 3, and all is forgotten
    counted = runner.invoke(e05.main, ["count", "--reset"])
    assert counted.exit_code == 0
    assert [line.split() for line in counted.output.splitlines()] == [
        ["sent", "3"], ["finished", "3"], ["not", "finished", "yet", "0"], ["dead", "letters", "0"], ["lost", "0"],
        ["ran", "twice", "0"], ["sum", "finished", "3"], ["counter", "3"], ["ledger", "3"],
        ["starts", "by", "pid", f"{os.getpid()}:", "3"]]
    assert e05.counts() == dict.fromkeys(["sent", "finished", "not finished yet", "dead letters", "lost", "ran twice",
                                          "sum finished", "counter", "ledger"], 0)


def test_sender_sends_poison_with_its_delivery_limit_and_no_worker_runs_it_here(broker, e05):
    # (No worker in this test: a worker in this process would be the one poison() kills.)
    result = CliRunner().invoke(e05.main, ["poison", "--max-deliveries", "0"])
    assert result.exit_code == 0 and result.output.startswith("sent poison()  id=")
    [queued] = broker.client.hvals(key(broker, "e05.msgs"))
    assert json.loads(queued)["options"]["max_deliveries"] == 0


@pytest.mark.parametrize(("args", "says"), [
    (["deposit", "0"], "Invalid value for 'N': 0 is not in the range 1<=x<=10000."),
    (["deposit", "3", "--amount", "1001"], "1001 is not in the range -1000<=x<=1000."),
    (["deposit", "3", "--ms", "-1"], "-1 is not in the range 0<=x<=60000."),
    (["poison", "--max-deliveries", "101"], "101 is not in the range 0<=x<=100."),
    (["count", "--reset", "now"], "Got unexpected extra argument (now)"),
])
def test_sender_rejects_bad_input_with_a_one_line_usage_error(e05, args, says):
    result = CliRunner().invoke(e05.main, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output


def test_with_the_defaults_recovery_waits_60_s_then_about_1000_idle_fetches_0_5_to_1_s_apart(monkeypatch):
    # Dramatiq's defaults: a worker is dead after 60 s without a heartbeat, maintenance is drawn on 1000
    # in a million dispatch calls, and a worker waits at most worker_timeout, 1000 ms, between two fetches
    assert (DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE, MAINTENANCE_SCALE) == (60_000, 1000, 1_000_000)
    assert dramatiq.worker.WORKER_TIMEOUT == 1000
    # Given one idle worker with those defaults on an empty e05 (fakeredis; its backoffs noted, not slept)
    monkeypatch.setattr(lab.broker, "_broker", None)  # restored after the test
    broker = lab.use_broker(lab.make_broker(lab.MEMORY_URL))
    try:
        experiments.load(experiments.find("e05"))
        scene = importlib.import_module("scenarios.e05_crash_recovery")
        # when its e05 consumer has fetched 300 times
        gaps_ms = scene.idle_fetch_gaps_ms(broker, 300)
    finally:
        broker.close()
    # then between two fetches it waited 5 to 9 ms, then twice that, and so on; and from the 9th fetch on,
    # 500 to 999 ms (worker_timeout x uniform(0.5, 1)): 0.75 s on average, not once per worker_timeout
    warm_up, idle = gaps_ms[:scene.IDLE_AFTER], gaps_ms[scene.IDLE_AFTER:]
    assert [math.floor(math.log2(gap / 5)) for gap in warm_up[:7]] == list(range(7)), warm_up
    assert 500 <= min(idle) and max(idle) < 1000 and 700 < statistics.fmean(idle) < 800, idle
    # so a dead worker's messages come back 60 s, then 693 fetches (median), 1000 (mean), 2995 (p95) later:
    # about 580 s, 810 s and 2300 s with one idle worker process
    seconds = scene.default_recovery(statistics.fmean(idle))
    assert (seconds["heartbeat"], seconds["median fetches"], seconds["mean fetches"], seconds["p95 fetches"]) == (
        60, 693, 1000, 2995)
    assert 560 < seconds["median"] < 600 and 780 < seconds["mean"] < 840 and 2220 < seconds["p95"] < 2400, seconds
    # and Dramatiq's own draw for a fetch hits 1 time in 1000: 300,000 draws, about 300 hits
    draw = RedisBroker(url="redis://127.0.0.1:1/0")._should_do_maintenance  # never connects
    hits = sum(draw("fetch") for _ in range(300_000))
    assert 230 < hits < 370, hits


def test_the_message_id_is_known_to_an_actor_only_through_the_current_message_middleware():
    # CurrentMessage is not among Dramatiq's default middleware; the lab adds it (lab/broker.py)
    assert CurrentMessage not in default_middleware
    lab_broker = lab.make_broker(lab.MEMORY_URL)
    assert any(isinstance(m, CurrentMessage) for m in lab_broker.middleware)
    lab_broker.close()

    def what_an_actor_sees(broker: StubBroker) -> tuple[str | None, str]:
        """The message id an actor reads from CurrentMessage, and the id of the message it ran."""
        seen = []

        @dramatiq.actor(broker=broker)
        def note() -> None:
            current = CurrentMessage.get_current_message()
            seen.append(current.message_id if current else None)

        message = note.send()
        worker = dramatiq.Worker(broker, worker_timeout=100)
        worker.start()
        broker.join(note.queue_name)
        lab.stop_worker(worker)
        return seen[0], message.message_id

    # Given a broker with Dramatiq's defaults, an actor that reads its message finds none
    seen, _ = what_an_actor_sees(StubBroker())
    assert seen is None
    # with CurrentMessage added, it finds the message it runs, and its id
    with_it = StubBroker()
    with_it.add_middleware(CurrentMessage())
    seen, sent = what_an_actor_sees(with_it)
    assert seen == sent


def test_the_cli_gives_running_tasks_10_minutes_to_finish_when_it_stops():
    # `dramatiq`'s --worker-shutdown-timeout, in ms: what Worker.stop waits for the running tasks
    assert make_argument_parser().parse_args(["e05_crash_recovery"]).worker_shutdown_timeout == 10 * 60 * 1000
    chosen = make_argument_parser().parse_args(["e05_crash_recovery", "--worker-shutdown-timeout", "1500"])
    assert chosen.worker_shutdown_timeout == 1500


def test_a_restart_between_two_commands_leaves_no_trace_though_nothing_is_retried():
    need_redis_server()
    # A client built from a URL (the lab's, RedisBroker(url=...), redis.Redis.from_url) gets redis-py 8.1's
    # Retry(NoBackoff(), 0): no retry. The 10 retries with backoff are for redis.Redis(host=..., port=...).
    url = "redis://127.0.0.1:1/0"  # never connected
    from_url = [make_client(url), RedisBroker(url=url).client, redis.Redis.from_url(url)]
    policies = [c.connection_pool.make_connection().retry for c in [*from_url, redis.Redis(host="127.0.0.1", port=1)]]
    assert [(type(p._backoff).__name__, p.get_retries()) for p in policies] == [("NoBackoff", 0)] * 3 + [
        ("ExponentialWithJitterBackoff", 10)]
    with RedisServer() as server:
        # Given the lab's client, its one pooled connection open on a redis-server
        client = make_client(server.url)
        client.ping()
        [pooled] = client.connection_pool._available_connections
        connects, connect = [], pooled._connect
        pooled._connect = lambda: connects.append(1) or connect()
        # when the server restarts between two commands, then the next command works, on one connect:
        # the pool checked the connection as it handed it out, found it closed, and reconnected it
        server.restart()
        assert client.ping() and len(connects) == 1
        assert client.connection_pool._available_connections == [pooled]
        # and a command that meets the server down fails at its first try
        server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert len(connects) == 2
        client.close()
    # a Dramatiq consumer that meets such an error starts again after CONSUMER_RESTART_DELAY, 3 s
    assert dramatiq.worker.CONSUMER_RESTART_DELAY_SECS == 3


# -- real processes and signals, on a private redis-server ------------------------------------------------------------


@pytest.fixture
def crashes(e05_crashes) -> SimpleNamespace:
    """The scenario's phases with real processes, run once per test run on a private redis-server (conftest's
    ``e05_crashes``, which the scenario's run on redis-server in test_lab_run.py reads too). Each phase stops
    its processes and its redis-servers, even when it fails."""
    return e05_crashes


@pytest.mark.e2e
def test_a_killed_worker_leaves_its_running_and_prefetched_messages_in_its_acks_set(crashes):
    # Given `dramatiq --processes 2 --threads 2`, each child running 2 deposits of 1 s with 2 prefetched
    status, first = crashes.kills.status, crashes.kills.kills[0]
    assert status == {"ready": 92, "in_flight": 8, "held by the child killed": 4}
    # when one child is SIGKILLed, then its acks set still holds all 4: 2 running, 2 never started
    assert (first.how, first.held, first.running) == ("SIGKILL one child of --processes 2", 4, 2)


@pytest.mark.e2e
def test_tuned_recovery_brings_them_back_one_heartbeat_timeout_after_the_kill(crashes):
    # heartbeat_timeout 1000 ms, maintenance on every call, a new worker started at each kill: never
    # before the dead one's last heartbeat is 1 s old. Counted from that heartbeat: a busy worker beat at most
    # 100 ms before the kill, but a starved one on a loaded machine had beaten 0.6 s before (back 0.4 s after
    # the kill). The upper bound leaves room for a loaded machine, where the new worker boots slowly
    back = [k.back_after_s + k.beat_age_s for k in crashes.kills.kills]
    assert len(back) == 3 and all(0.85 <= s <= 4 for s in back), back


@pytest.mark.e2e
def test_100_deposits_through_3_kills_all_finish_and_each_one_running_at_a_kill_runs_again(crashes):
    kills, counts = crashes.kills.kills, crashes.kills.counts
    assert [k.how for k in kills][1:] == ["SIGKILL a whole worker"] * 2
    # Nothing lost
    assert (counts["sent"], counts["finished"], counts["not finished yet"], counts["dead letters"], counts["lost"]) == (
        100, 100, 0, 0, 0)
    # and one start more for each deposit a dead worker had started and not acked: the 2 running in the
    # child, then what the 4-thread workers were running, 4 at most each
    running = [k.running for k in kills]
    assert running[0] == 2 and all(1 <= n <= 4 for n in running[1:]), running
    assert crashes.kills.reruns == sum(running)
    # (a deposit brought back by one kill may be running at the next, and run three times)
    assert 0 < counts["ran twice"] <= crashes.kills.reruns


@pytest.mark.e2e
def test_a_rerun_adds_to_the_counter_again_but_rewrites_the_same_ledger_entry(crashes):
    counts, reruns = crashes.kills.counts, crashes.kills.reruns
    assert counts["ledger"] == counts["sum finished"] == 100
    assert reruns >= 3 and counts["counter"] == 100 + reruns


@pytest.mark.e2e
def test_a_poison_message_kills_a_worker_per_delivery_until_the_limit_dead_letters_it(crashes):
    poison = crashes.poison
    assert poison.exit_codes == [1, 1]  # each master exits 1 once its only child is SIGKILLed
    assert poison.retries == 0 and poison.dead_lettered and poison.last_worker_alive
    assert poison.guard_line == "[WARNING] poison() started 2 times and never finished: dead-lettered"


@pytest.mark.e2e
def test_when_one_child_of_processes_2_dies_the_master_stops_the_other_and_exits_1(crashes):
    kills = crashes.kills
    assert kills.master_exit == 1
    critical = [line for line in kills.master_log if line.startswith("[CRITICAL]")]
    assert len(critical) == 1 and critical[0].endswith("exited unexpectedly (code -9). Shutting down...")
    assert "[INFO] Stopping worker process..." in kills.master_log
    assert kills.master_log[-1] == "[INFO] Worker has been shut down."  # the other child, gracefully
    assert kills.other_child_finished == 2 and kills.other_child_held_at_exit == 0


@pytest.mark.e2e
def test_sigterm_requeues_the_prefetched_only_when_the_shutdown_timeout_is_over(crashes):
    term = crashes.sigterm
    assert term.held == 4 and term.requeued == 2
    # The worker process looks at its stop flag once a second from when it is ready (`while running:
    # time.sleep(1)`): it began to stop at the first whole second after the SIGTERM, not at the signal
    tick = round(term.stopping_after_ready_s)
    assert tick >= 1 and abs(term.stopping_after_ready_s - tick) < 0.15, term
    assert tick - 1 - 0.15 <= term.signalled_after_ready_s <= tick + 0.15 and term.stopping_after_s >= 0, term
    # and put the prefetched back only once --worker-shutdown-timeout (1500 ms) had run out
    assert term.requeued_after_s >= term.stopping_after_s + 1.5 - 0.05


@pytest.mark.e2e
def test_sigterm_abandons_a_task_past_the_shutdown_timeout_and_it_comes_back_later(crashes):
    term = crashes.sigterm
    assert term.short_finished and term.abandoned == 1 and term.exit_code == 0
    assert term.back_after_s >= term.requeued_after_s + 1.0 - 0.15 and term.long_started == 2


@pytest.mark.e2e
def test_a_worker_rides_out_a_redis_restart_and_runs_what_is_sent_after(crashes):
    assert [(r.appendonly, r.worker_alive, r.ran_after) for r in crashes.restarts] == [(False, True, 5),
                                                                                     (True, True, 5)]
    # a consumer whose command met Redis down logged it, and started again 3 s later
    assert [r.restarts_in_3_s for r in crashes.restarts] == [r.connection_errors for r in crashes.restarts]


@pytest.mark.e2e
def test_a_restart_without_persistence_loses_the_queue_and_appendonly_keeps_it(crashes):
    plain, aof = crashes.restarts
    # 1 running, 1 prefetched, 9 waiting in Redis when it restarted
    assert (plain.held, plain.queued, aof.held, aof.queued) == (2, 9, 2, 9)
    assert (plain.queued_after, plain.ran_before) == (0, 1)  # only the one the worker held in memory ran
    assert (aof.queued_after, aof.ran_before) == (9, 10)
