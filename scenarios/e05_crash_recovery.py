"""`python -m lab run e05`: crashes on purpose, and what comes back.

In this process, on any broker: what a dead worker leaves in Redis and what brings it back, a
redelivery that is not a retry, the delivery limit, and a failing message beside the others.

On a real Redis only (the embedded broker skips them, to keep `python -m lab run all` short):
real ``dramatiq`` processes, side by side, each phase in a namespace of its own, with recovery
tuned (heartbeat_timeout 1000 ms, maintenance on every dispatch call): 100 deposits through three
SIGKILLs, the first one to a child of ``--processes 2``; a SIGTERM with ``--worker-shutdown-timeout``;
a poison message; and a private redis-server, restarted with persistence off and with appendonly.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import lab
from lab.keys import HEARTBEATS, count_queues, key_names
from lab.processes import RedisServer, WorkerProcess

import dramatiq
import dramatiq.brokers.redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE, MAINTENANCE_SCALE, RedisBroker
from dramatiq.common import dq_name

import e05_crash_recovery as e05

# It reads Redis's acks sets and heartbeats, and kills workers to see what Redis gives back.
REDIS_ONLY = "on RabbitMQ a killed worker's messages come back at once (Experiment 13, lesson 1)"

HEARTBEAT_MS = 1000  # 10 x the spawned workers' worker_timeout (100 ms): no live worker looks dead
TUNED = {"e05_heartbeat_timeout": str(HEARTBEAT_MS), "e05_maintenance_chance": str(MAINTENANCE_SCALE)}
WORKER = "e05_crash_recovery"
SKIP_ON_MEMORY = "needs real dramatiq processes on a real Redis (about 8 s more): python -m lab run e05 --redis URL"
SKIP_RESTART = ("needs redis-server: a private one is started in a temporary directory and restarted "
                "(never yours). Run: python -m lab run e05 --redis URL")


def scenario(run: lab.Run) -> None:
    in_this_process(run)
    if run.broker.lab_url == lab.MEMORY_URL:
        for test in PROCESS_LESSONS:
            run.skip(test, SKIP_RESTART if "restart" in test else SKIP_ON_MEMORY)
    else:
        check_crashes(run, play_crashes(run.shared_url(), run.broker.namespace))


def must(held: bool, what: str) -> None:
    """Stop the scenario with TimeoutError, saying what did not happen in time."""
    if not held:
        raise TimeoutError(f"e05: {what}")


# -- in this process, on any broker ---------------------------------------------------------------------------------


def dies_holding(broker: RedisBroker, count: int = 1, *, queues: tuple[str, ...] = (e05.QUEUE,)) -> list[MessageProxy]:
    """What a worker killed right after its fetch leaves: ``count`` messages of each of ``queues`` in the
    acks sets of one broker id that never calls Redis again, so that its heartbeat only gets older."""
    dead = RedisBroker(client=broker.client, namespace=broker.namespace)
    fetched: list[MessageProxy] = []
    for queue in queues:
        consumer, got = dead.consume(queue, count, timeout=10), 0
        deadline = time.monotonic() + 5
        while got < count and time.monotonic() < deadline:
            if (message := next(consumer)) is not None:
                fetched.append(message)
                got += 1
    return fetched


def heartbeats(broker: RedisBroker) -> set[str]:
    """The broker ids in ``__heartbeats__``: every worker or sender not yet known dead."""
    return {who.decode() for who in broker.client.zrange(lab.key(broker, "__heartbeats__"), 0, -1)}


def others_stale(broker: RedisBroker) -> bool:
    """Whether every other broker id's heartbeat is older than this broker's heartbeat_timeout."""
    now_ms = time.time() * 1000
    beats = broker.client.zrange(lab.key(broker, "__heartbeats__"), 0, -1, withscores=True)
    return all(now_ms - ms > broker.heartbeat_timeout for who, ms in beats if who.decode() != broker.broker_id)


def recover(broker: RedisBroker) -> None:
    """Wait until the dead workers' heartbeats are stale, then one dispatch call for e05, with
    maintenance if the broker draws it: what a live consumer's next fetch does."""
    must(lab.wait_until(lambda: others_stale(broker), timeout=5), "a heartbeat did not go stale")
    broker.do_qsize(e05.QUEUE)


IDLE_AFTER = 8  # an idle consumer's first backoffs double from 5 ms; from its 9th on, all are capped


def idle_fetch_gaps_ms(broker: RedisBroker, fetches: int = 300) -> list[float]:
    """The backoffs between one idle worker's fetches on an empty e05, in ms, ``fetches`` of them.

    A real ``dramatiq.Worker`` with Dramatiq's default ``worker_timeout``, on e05 only. Its e05 consumer
    sleeps ``backoff_ms / 1000`` after each fetch that finds nothing (``_RedisConsumer.__next__``); here
    that sleep is noted and not slept, so 300 of them take a second or less (on fakeredis), not four minutes.
    Its other threads nap at most 10 ms, so the worker stops at once.
    """
    worker = dramatiq.Worker(broker, queues={e05.QUEUE}, worker_threads=1)
    gaps: list[float] = []
    real = dramatiq.brokers.redis.time

    def sleep(seconds: float) -> None:
        if threading.current_thread() is worker.consumers.get(e05.QUEUE) and len(gaps) < fetches:
            gaps.append(seconds * 1000)
            real.sleep(0)
        else:
            real.sleep(min(seconds, 0.01))

    dramatiq.brokers.redis.time = SimpleNamespace(sleep=sleep, monotonic=real.monotonic, time=real.time)
    try:
        worker.start()
        must(lab.wait_until(lambda: len(gaps) >= fetches, timeout=30), f"fewer than {fetches} idle fetches in 30 s")
    finally:
        dramatiq.brokers.redis.time = real
        lab.stop_worker(worker, 100)  # its worker thread waits worker_timeout (1 s) for work, and then ends
    return gaps[:fetches]


def default_recovery(gap_ms: float) -> dict[str, float]:
    """With Dramatiq's defaults and one idle worker process: seconds until a dead worker's messages come
    back. heartbeat_timeout, then as many e05 fetches as it takes to draw maintenance (1000 in a million
    each), ``gap_ms`` apart on average (an idle consumer's backoff, :func:`idle_fetch_gaps_ms`)."""
    chance = DEFAULT_MAINTENANCE_CHANCE / MAINTENANCE_SCALE
    fetches = {"median": math.ceil(math.log(0.5) / math.log(1 - chance)), "mean": 1 / chance,
               "p95": math.ceil(math.log(0.05) / math.log(1 - chance))}
    return {"heartbeat": DEFAULT_HEARTBEAT_TIMEOUT / 1000, "gap_ms": gap_ms,
            **{f"{k} fetches": n for k, n in fetches.items()},
            **{k: DEFAULT_HEARTBEAT_TIMEOUT / 1000 + n * gap_ms / 1000 for k, n in fetches.items()}}


def in_this_process(run: lab.Run) -> None:
    broker = run.broker
    saved = broker.heartbeat_timeout, broker.maintenance_chance
    try:
        # What brings a dead worker's messages back: a stale heartbeat AND maintenance for its queue.
        e05.deposit.send(1, 0)
        e05.deposit.send_with_options(args=(1, 0), delay=3_600_000)  # on e05.DQ
        held, _ = dies_holding(broker, queues=(e05.QUEUE, dq_name(e05.QUEUE)))
        [dead] = heartbeats(broker) - {broker.broker_id}
        broker.heartbeat_timeout, broker.maintenance_chance = 200, MAINTENANCE_SCALE
        broker.do_qsize(e05.QUEUE)  # maintenance, heartbeat fresh
        fresh = broker.client.llen(lab.key(broker, e05.QUEUE))
        must(lab.wait_until(lambda: others_stale(broker), timeout=5), "a heartbeat did not go stale")
        broker.maintenance_chance = 0
        broker.do_qsize(e05.QUEUE)  # heartbeat stale, no maintenance
        unlucky = broker.client.llen(lab.key(broker, e05.QUEUE))
        broker.maintenance_chance = MAINTENANCE_SCALE
        broker.do_qsize("e05-elsewhere")  # maintenance, for another queue
        elsewhere = broker.client.llen(lab.key(broker, e05.QUEUE))
        broker.do_ack(e05.QUEUE, held.options["redis_message_id"])  # ack and nack never draw maintenance
        broker.do_nack(e05.QUEUE, held.options["redis_message_id"])
        acked = broker.client.llen(lab.key(broker, e05.QUEUE))
        broker.do_qsize(e05.QUEUE)
        back = [i.decode() for i in broker.client.lrange(lab.key(broker, e05.QUEUE), 0, -1)]
        beat_after_e05 = dead in heartbeats(broker)  # it still holds the delayed one
        broker.do_qsize(dq_name(e05.QUEUE))
        beat_after_dq = dead in heartbeats(broker)
        run.check("test_recovery_needs_a_stale_heartbeat_and_maintenance_for_that_queue",
                  (fresh, unlucky, elsewhere, acked, back, beat_after_e05, beat_after_dq)
                  == (0, 0, 0, 0, [held.options["redis_message_id"]], True, False),
                  f"back on e05: {len(back)} with a stale heartbeat and maintenance for e05; {fresh} with a fresh "
                  f"one, {unlucky} without maintenance, {elsewhere} with it for another queue, {acked} after an ack "
                  f"and a nack; the dead worker's heartbeat kept until e05.DQ's maintenance: "
                  f"{beat_after_e05 and not beat_after_dq}")
        broker.client.delete(*(lab.key(broker, f"{queue}{suffix}") for queue in (e05.QUEUE, dq_name(e05.QUEUE))
                               for suffix in ("", ".msgs")))

        idle = idle_fetch_gaps_ms(broker)[IDLE_AFTER:]
        defaults = default_recovery(statistics.fmean(idle))
        run.check("test_with_the_defaults_recovery_waits_60_s_then_about_1000_idle_fetches_0_5_to_1_s_apart",
                  defaults["heartbeat"] == 60 and 500 <= min(idle) and max(idle) < 1000
                  and 560 < defaults["median"] < 600 and 780 < defaults["mean"] < 840,
                  f"back after {defaults['median']:.0f} s (median), {defaults['mean']:.0f} s (mean), "
                  f"{defaults['p95']:.0f} s (p95) with one idle worker process: {defaults['heartbeat']:.0f} s, then "
                  f"fetches {min(idle):.0f} to {max(idle):.0f} ms apart ({defaults['gap_ms']:.0f} on average) "
                  f"until one draws maintenance")

        # A redelivery is not a retry, and DeliveryLimit counts it. (In this process, never poison().)
        broker.heartbeat_timeout = 100
        crashing = e05.deposit.send(1, 0)
        guarded = e05.deposit.send_with_options(args=(2, 0), max_deliveries=2)
        limit = next(m for m in broker.middleware if type(m).__name__ == "DeliveryLimit")
        retries_seen = []
        for _ in range(2):  # a worker fetches both, starts the guarded one, and dies
            held = {m.message_id: m for m in dies_holding(broker, 2)}
            retries_seen.append(held[crashing.message_id].options.get("retries", 0))
            limit.before_process_message(broker, held[guarded.message_id])
            recover(broker)
        declined = e05.deposit.send(-5, 0)
        others = [e05.deposit.send(1, 0) for _ in range(5)]
        run.start_worker(threads=1)
        run.settle(e05.QUEUE, timeout=10)
    finally:
        broker.heartbeat_timeout, broker.maintenance_chance = saved

    after_crashes = run.attempts("deposit", 1, 0)
    crashed = [a for a in after_crashes if a.message_id == crashing.message_id]
    run.check("test_a_recovered_message_comes_back_with_retries_still_0",
              retries_seen == [0, 0] and [(a.number, a.outcome) for a in crashed] == [(1, "ok")],
              f"retries still {retries_seen} after each of 2 crashes; then it ran as attempt "
              f"{', '.join(str(a.number) for a in crashed)}")

    letters = [d.message.message_id for d in lab.dead_letters(broker, e05.QUEUE)]
    skipped = [a.outcome for a in run.attempts("deposit", 2, 0)]
    run.check("test_delivery_limit_dead_letters_a_message_started_too_often_without_running_it",
              skipped == ["skipped"] and guarded.message_id in letters,
              f"at delivery 3: {', '.join(skipped) or 'nothing'}, in e05.XQ: {guarded.message_id in letters} "
              f"(max_deliveries=2, started twice by workers that died)")

    tries = run.attempts("deposit", -5, 0)
    first_retry = tries[1].started if len(tries) > 1 else 0
    flowed = [a for a in run.attempts("deposit", 1, 0) if a.message_id in {m.message_id for m in others}]
    run.check("test_a_failing_deposit_retries_while_others_flow_then_is_dead_lettered",
              [a.outcome for a in tries] == ["retried", "retried", "failed"] and declined.message_id in letters
              and len(flowed) == 5 and all(a.outcome == "ok" for a in flowed)
              and any(a.started < first_retry for a in flowed),
              f"{sum(a.started < first_retry for a in flowed)} of 5 others ran before its first retry, on one "
              f"thread; deposit(-5): {', '.join(a.outcome for a in tries)}, then in e05.XQ: "
              f"{declined.message_id in letters}")


# -- with real processes ----------------------------------------------------------------------------------------------


class Bench(lab.Run):
    """A run of its own on ``url`` and ``namespace``; at the end its workers are SIGKILLed (no 2 s stop)."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(WORKER, lab.make_broker(url, namespace=namespace), lab.Recorder())

    def close(self) -> None:
        for worker in self.processes:
            worker.kill()
        super().close()
        self.broker.close()

    def starts(self) -> list[tuple[str, int, str]]:
        """Every start of a deposit, in order: (message id, pid, broker id)."""
        entries = (e.decode().split() for e in self.broker.client.lrange(e05.key("starts", self.broker), 0, -1))
        return [(message_id, int(pid), broker_id) for message_id, pid, broker_id, _ in entries]

    def broker_id_of(self, pid: int) -> str | None:
        return next((broker_id for _, p, broker_id in self.starts() if p == pid), None)

    def acks(self, broker_id: str) -> str:
        return lab.key(self.broker, f"__acks__.{broker_id}.{e05.QUEUE}")

    def held(self, broker_id: str) -> int:
        return self.broker.client.scard(self.acks(broker_id))

    def held_ids(self, broker_id: str) -> set[str]:
        """The message ids (not the redis ids) in the acks set of ``broker_id``."""
        redis_ids = self.broker.client.smembers(self.acks(broker_id))
        stored = self.broker.client.hmget(lab.key(self.broker, f"{e05.QUEUE}.msgs"), *redis_ids) if redis_ids else []
        return {Message.decode(data).message_id for data in stored if data}

    def running(self, pid: int) -> int:
        """How many deposits the worker process ``pid`` has started and not acked (after a kill too)."""
        broker_id = self.broker_id_of(pid)
        started = {mid for mid, p, _ in self.starts() if p == pid}
        return len(started & self.held_ids(broker_id)) if broker_id else 0

    def ready(self) -> int:
        return self.broker.client.llen(lab.key(self.broker, e05.QUEUE))

    def finished(self) -> set[str]:
        return {k.decode() for k in self.broker.client.hkeys(e05.key("finished", self.broker))}

    def send(self, *ms: int) -> list[str]:
        """A deposit of 1 for each value of ``ms``, noted as sent; their message ids."""
        sent = [self.broker.enqueue(e05.deposit.message(1, each)) for each in ms]
        self.broker.client.hset(e05.key("sent", self.broker), mapping={m.message_id: 1 for m in sent})
        return [m.message_id for m in sent]

    def spawn(self, *args: str, processes: int = 1, **env: str) -> WorkerProcess:
        return self.spawn_worker(WORKER, *args, processes=processes, **{**TUNED, **env})


def beat_age(bench: Bench, broker_id: str, at_ms: int) -> float:
    """Seconds from ``broker_id``'s last heartbeat (its last Redis command) to ``at_ms``: about 0 for a busy worker,
    more for one the machine starved of CPU (0.6 s once, under a full test run)."""
    beat = bench.broker.client.zscore(lab.key(bench.broker, HEARTBEATS), broker_id)
    return max(0.0, (at_ms - beat) / 1000) if beat is not None else 0.0


def back_after(bench: Bench, broker_id: str, since: float) -> float:
    """Seconds from ``since`` until the dead worker's acks set is gone: maintenance put it back on e05."""
    must(lab.wait_until(lambda: not bench.broker.client.exists(bench.acks(broker_id)), timeout=10, interval=0.01),
         f"{bench.acks(broker_id)} still held after 10 s")
    return time.monotonic() - since


@dataclass
class Kill:
    how: str
    held: int  # in the dead worker's acks set right after the kill
    running: int  # of those, the ones it had started: never acked, each runs again
    back_after_s: float  # from the kill until they were back on e05
    beat_age_s: float = 0.0  # how old the dead worker's last heartbeat was at the kill


@dataclass
class Kills:
    status: dict = field(default_factory=dict)  # what `python -m lab status` reads, right before the first kill
    kills: list[Kill] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # e05.counts() at the end
    master_exit: int | None = None  # `dramatiq --processes 2`, once one child was SIGKILLed
    master_exit_s: float = 0.0
    master_log: list[str] = field(default_factory=list)
    other_child_finished: int = 0  # of the 2 deposits it was running
    other_child_held_at_exit: int = -1
    reruns: int = 0  # starts beyond the first, over every deposit


def kills(url: str, namespace: str) -> Kills:
    """100 deposits through three SIGKILLs: one child of ``--processes 2``, then two whole workers.

    The first 8 deposits take 1000 ms, so each child of the first worker (2 threads) holds exactly
    2 running and 2 prefetched when one of them is killed; the other 92 take 50 ms.
    """
    bench, seen, watcher = Bench(url, namespace), Kills(), ThreadPoolExecutor(1)
    try:
        pool = bench.spawn("--threads", "2", processes=2)
        sent = bench.send(*[1000] * 8, *[50] * 92)
        must(lab.wait_until(lambda: len(bench.starts()) == 4 and bench.ready() == 92, timeout=10),
             "the two children did not each start 2 deposits and prefetch 2")
        child, other = pool.worker_pids()
        queues, holding, _ = count_queues(bench.broker, key_names(bench.broker))
        seen.status = {"ready": queues[e05.QUEUE].ready, "in_flight": queues[e05.QUEUE].in_flight,
                       "held by the child killed": holding[bench.broker_id_of(child)]}
        other_running = {mid for mid, pid, _ in bench.starts() if pid == other}
        victim, how, kill = child, "SIGKILL one child of --processes 2", lambda: pool.signal(signal.SIGKILL, child)
        for number in range(3):
            broker_id, killed_at, killed_ms = bench.broker_id_of(victim), time.monotonic(), int(time.time() * 1000)
            kill()
            age = beat_age(bench, broker_id, killed_ms)
            running = bench.running(victim)
            held = bench.held(broker_id)
            if number == 0:  # watched meanwhile: the master's exit, and what its other child held then
                master = watcher.submit(lambda since=killed_at: (pool.wait(15), time.monotonic() - since,
                                                                 bench.held(bench.broker_id_of(other))))
            worker = bench.spawn("--threads", "4")  # a process manager would start one
            seen.kills.append(Kill(how, held, running, back_after(bench, broker_id, killed_at), age))
            victim, how, kill = worker.worker_pids()[0], "SIGKILL a whole worker", worker.kill
            # killed once it has started 4 deposits and runs one now (a starved worker had once finished its 4
            # and run none at the kill)
            must(lab.wait_until(lambda: sum(pid == victim for _, pid, _ in bench.starts()) >= 4  # noqa: B023
                                and bench.running(victim) >= 1, timeout=10),  # noqa: B023
                 "the new worker did not start 4 deposits and run one")
        must(lab.wait_until(lambda: set(sent) <= bench.finished(), timeout=20), "some deposits never finished")
        seen.counts = e05.counts(bench.broker)
        seen.reruns = len(bench.starts()) - len({mid for mid, *_ in bench.starts()})
        seen.master_exit, seen.master_exit_s, seen.other_child_held_at_exit = master.result()
        seen.master_log = [line.split("] ", 4)[-1] for line in pool.output.splitlines()
                           if "] [dramatiq." in line and "deposit" not in line]
        seen.other_child_finished = len(other_running & bench.finished())
        return seen
    finally:
        watcher.shutdown(wait=False)
        bench.close()


@dataclass
class Sigterm:
    held: int = 0  # before the SIGTERM: 2 running, 2 prefetched
    stopping_after_s: float = 0.0  # from the SIGTERM to the worker's "Shutting down..." line
    signalled_after_ready_s: float = 0.0  # from its "ready for action" line to the SIGTERM
    stopping_after_ready_s: float = 0.0  # from its "ready for action" line to "Shutting down..."
    requeued: int = 0
    requeued_after_s: float = 0.0
    short_finished: bool = False
    abandoned: int = 0  # still in its acks set once the prefetched were requeued
    back_after_s: float = 0.0  # from the SIGTERM until the abandoned one was back on e05
    long_started: int = 0  # how many times the abandoned deposit started, in all
    exit_code: int | None = None


def sigterm(url: str, namespace: str, shutdown_timeout_ms: int = 1500) -> Sigterm:
    """SIGTERM a 2-thread worker running a 4000 ms and a 1200 ms deposit, with two more prefetched.

    A worker process looks at its stop flag once a second, so the short one outlasts that second
    and ends within the shutdown timeout; the long one outlasts both.
    """
    bench, seen = Bench(url, namespace), Sigterm()
    try:
        worker = bench.spawn("--threads", "2", "--worker-shutdown-timeout", str(shutdown_timeout_ms))
        long, short, *_ = bench.send(4000, 1200, 4000, 4000)
        must(lab.wait_until(lambda: len(bench.starts()) == 2 and bench.ready() == 0, timeout=10),
             "the worker did not start two deposits and prefetch two")
        broker_id = bench.broker_id_of(worker.worker_pids()[0])
        seen.held = bench.held(broker_id)
        signalled_at, signalled_wall = time.monotonic(), time.time()
        worker.signal(signal.SIGTERM)
        must(lab.wait_until(lambda: bench.ready() == 2, timeout=10), "the prefetched deposits did not come back")
        seen.requeued, seen.requeued_after_s = bench.ready(), time.monotonic() - signalled_at
        seen.abandoned, seen.short_finished = bench.held(broker_id), short in bench.finished()
        ready_at, stopping_at = (logged_at(worker.output, text) for text in ("ready for action", "Shutting down..."))
        seen.stopping_after_s = stopping_at - signalled_wall
        seen.signalled_after_ready_s, seen.stopping_after_ready_s = signalled_wall - ready_at, stopping_at - ready_at
        bench.spawn("--threads", "4")  # a process manager would start one
        seen.back_after_s = back_after(bench, broker_id, signalled_at)
        seen.exit_code = worker.wait(10)
        must(lab.wait_until(lambda: [mid for mid, *_ in bench.starts()].count(long) == 2, timeout=10),
             "the abandoned deposit did not start again")
        seen.long_started = [mid for mid, *_ in bench.starts()].count(long)
        return seen
    finally:
        bench.close()


def logged_at(output: str, text: str) -> float:
    """When the first line of a worker's log with ``text`` was written (epoch seconds)."""
    from datetime import datetime

    line = next(line for line in output.splitlines() if text in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Poison:
    exit_codes: list = field(default_factory=list)  # of the workers it killed
    dead_lettered: bool = False
    retries: int | None = None  # the dead letter's options["retries"] (absent: 0)
    guard_line: str = ""
    last_worker_alive: bool = False


def poison(url: str, namespace: str, max_deliveries: int = 2) -> Poison:
    """A message that SIGKILLs each worker that runs it, until DeliveryLimit dead-letters it.

    These workers run no maintenance: this process brings the message back, once each new worker is
    ready. A worker process killed while it boots can hang its master for good: until it says it is
    ready it may hold a lock the master waits on (1 start in 12 did, in the lab's trials).
    """
    bench, seen = Bench(url, namespace), Poison()
    bench.broker.heartbeat_timeout, bench.broker.maintenance_chance = HEARTBEAT_MS, MAINTENANCE_SCALE
    no_maintenance = {"e05_maintenance_chance": "0"}
    try:
        worker = bench.spawn("--threads", "1", **no_maintenance)
        message = bench.broker.enqueue(e05.poison.message_with_options(max_deliveries=max_deliveries))
        for _ in range(max_deliveries):
            seen.exit_codes.append(worker.wait(10))  # it ran the poison: its master exits
            worker = bench.spawn("--threads", "1", **no_maintenance)
            must(lab.wait_until(lambda: (bench.broker.do_qsize(e05.QUEUE), worker.process.poll() is not None  # noqa: B023
                                         or lab.dead_letters(bench.broker, e05.QUEUE))[1], timeout=10, interval=0.05),
                 "the poison message did not come back")
        seen.dead_lettered = lab.wait_until(lambda: lab.dead_letters(bench.broker, e05.QUEUE), timeout=5)
        letters = [d.message for d in lab.dead_letters(bench.broker, e05.QUEUE)]
        if [m.message_id for m in letters] == [message.message_id]:
            seen.retries = letters[0].options.get("retries", 0)
        # its warning travels through the dramatiq master's log pipe: it may reach the log a moment after the
        # dead letter reached Redis (an empty line once, under load)
        lab.wait_until(lambda: "DeliveryLimit" in worker.output, timeout=5)  # noqa: B023
        seen.guard_line = next((line.split("] ", 4)[-1] for line in worker.output.splitlines()
                                if "DeliveryLimit" in line), "")
        seen.last_worker_alive = worker.process.poll() is None
        return seen
    finally:
        bench.close()


@dataclass
class Restart:
    appendonly: bool
    queued: int = 0  # in Redis, waiting, when it restarted
    held: int = 0  # by the worker (running or prefetched) when it restarted
    queued_after: int = 0
    ran_before: int = 0  # of the 10 sent before the restart, how many ran
    ran_after: int = 0  # of the 5 sent after it
    worker_alive: bool = False
    connection_errors: int = 0  # lines of the worker's log that say so
    restarts_in_3_s: int = 0  # and lines that say "Restarting consumer in 3.00 seconds."


def restart(appendonly: bool) -> Restart:
    """A 1-thread worker busy with a 1500 ms deposit, 10 more sent, then its redis-server restarted."""
    seen = Restart(appendonly)
    with RedisServer(appendonly=appendonly) as server:
        bench = Bench(server.url, "dramatiq")
        try:
            worker = bench.spawn("--threads", "1")
            [blocker] = bench.send(1500)
            must(lab.wait_until(bench.starts, timeout=10), "the first deposit did not start")
            broker_id = bench.starts()[0][2]
            before = bench.send(*[0] * 10)
            must(lab.wait_until(lambda: bench.held(broker_id) == 2, timeout=10), "the worker did not prefetch one")
            seen.queued, seen.held = bench.ready(), bench.held(broker_id)
            server.restart()  # SIGTERM: a clean shutdown, then the same port and directory
            seen.queued_after = bench.ready()
            after = bench.send(*[0] * 5)
            must(lab.wait_until(lambda: {blocker, *after} <= bench.finished(), timeout=15),
                 "the worker did not run what was sent after the restart")
            lab.wait_until(lambda: bench.ready() == 0, timeout=5)
            seen.ran_before, seen.ran_after = len(set(before) & bench.finished()), len(set(after) & bench.finished())
            seen.worker_alive = worker.process.poll() is None
            seen.connection_errors = worker.output.count("Consumer encountered a connection error")
            seen.restarts_in_3_s = worker.output.count("Restarting consumer in 3.00 seconds.")
            return seen
        finally:
            bench.close()


@dataclass
class Crashes:
    kills: Kills
    sigterm: Sigterm
    poison: Poison
    restarts: list[Restart] | None  # None: no redis-server here to start a private one


def play_crashes(url: str, namespace: str) -> Crashes:
    """Every phase with real processes, side by side: on ``url`` in namespaces under ``namespace``,
    and the restarts on private redis-servers (never on ``url``)."""
    try:
        RedisServer.executable_path()
        restarts = [False, True]
    except FileNotFoundError:
        restarts = []
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(kills, url, f"{namespace}-kills"), pool.submit(sigterm, url, f"{namespace}-term"),
                   pool.submit(poison, url, f"{namespace}-poison"), *(pool.submit(restart, a) for a in restarts)]
        done = [future.result() for future in futures]
    return Crashes(*done[:3], done[3:] or None)


PROCESS_LESSONS = [
    "test_a_killed_worker_leaves_its_running_and_prefetched_messages_in_its_acks_set",
    "test_tuned_recovery_brings_them_back_one_heartbeat_timeout_after_the_kill",
    "test_100_deposits_through_3_kills_all_finish_and_each_one_running_at_a_kill_runs_again",
    "test_a_rerun_adds_to_the_counter_again_but_rewrites_the_same_ledger_entry",
    "test_a_poison_message_kills_a_worker_per_delivery_until_the_limit_dead_letters_it",
    "test_when_one_child_of_processes_2_dies_the_master_stops_the_other_and_exits_1",
    "test_sigterm_requeues_the_prefetched_only_when_the_shutdown_timeout_is_over",
    "test_sigterm_abandons_a_task_past_the_shutdown_timeout_and_it_comes_back_later",
    "test_a_worker_rides_out_a_redis_restart_and_runs_what_is_sent_after",
    "test_a_restart_without_persistence_loses_the_queue_and_appendonly_keeps_it",
]


def check_crashes(run: lab.Run, seen: Crashes) -> None:
    kills, first = seen.kills, seen.kills.kills[0]
    run.check(PROCESS_LESSONS[0], (first.held, first.running, kills.status["held by the child killed"]) == (4, 2, 4),
              f"{first.held} in its acks set, {first.running} of them running (a 2-thread child SIGKILLed); just "
              f"before, `lab status`: {kills.status['ready']} ready, {kills.status['in_flight']} in flight, "
              f"{kills.status['held by the child killed']} of them the child's")

    back = [k.back_after_s for k in kills.kills]
    since_beat = [k.back_after_s + k.beat_age_s for k in kills.kills]
    run.check(PROCESS_LESSONS[1], all(HEARTBEAT_MS / 1000 - 0.15 <= s <= HEARTBEAT_MS / 1000 + 3 for s in since_beat),
              f"back on e05 {', '.join(f'{s:.2f}' for s in back)} s after each kill, "
              f"{', '.join(f'{s:.2f}' for s in since_beat)} s after the last heartbeat (heartbeat_timeout "
              f"{HEARTBEAT_MS} ms, maintenance on every call)")

    counts, running = kills.counts, [k.running for k in kills.kills]
    run.check(PROCESS_LESSONS[2], (counts["sent"], counts["finished"], counts["lost"]) == (100, 100, 0)
              and running[0] == 2 and all(1 <= n <= 4 for n in running[1:]) and kills.reruns == sum(running)
              and 0 < counts["ran twice"] <= kills.reruns,
              f"lost {counts['lost']}: {counts['finished']} of {counts['sent']} finished; reruns {kills.reruns}, "
              f"one per deposit running at the kills ({' + '.join(map(str, running))}); "
              f"{counts['ran twice']} deposits ran more than once")

    run.check(PROCESS_LESSONS[3], counts["ledger"] == counts["sum finished"] < counts["counter"]
              and counts["counter"] - counts["ledger"] == kills.reruns,
              f"the ledger says {counts['ledger']}, the counter {counts['counter']} after {kills.reruns} reruns; "
              f"the {counts['finished']} that finished sum to {counts['sum finished']}")

    poisoned = seen.poison
    run.check(PROCESS_LESSONS[4], poisoned.exit_codes == [1, 1] and poisoned.dead_lettered
              and poisoned.retries == 0 and poisoned.last_worker_alive and "started 2 times" in poisoned.guard_line,
              f"max_deliveries=2: {len(poisoned.exit_codes)} workers killed (exit codes {poisoned.exit_codes}), "
              f"retries still {poisoned.retries}; the third worker: {poisoned.guard_line!r}")

    log = " | ".join(kills.master_log)
    run.check(PROCESS_LESSONS[5], kills.master_exit == 1 and "exited unexpectedly (code -9). Shutting down" in log
              and kills.other_child_finished == 2 and kills.other_child_held_at_exit == 0,
              f"exit {kills.master_exit} after {kills.master_exit_s:.1f} s; the other child finished its "
              f"{kills.other_child_finished} running, held {kills.other_child_held_at_exit} at the exit; "
              f"the killed child's {first.held} came back after {first.back_after_s:.2f} s")

    term = seen.sigterm
    tick = round(term.stopping_after_ready_s)  # the worker process checks its stop flag once a second
    on_tick = tick >= 1 and abs(term.stopping_after_ready_s - tick) < 0.15 and 0 <= term.stopping_after_s <= 1.15
    run.check(PROCESS_LESSONS[6], term.held == 4 and term.requeued == 2 and on_tick
              and term.requeued_after_s >= term.stopping_after_s + 1.4,
              f"the {term.requeued} prefetched back on e05 {term.requeued_after_s:.2f} s after the SIGTERM "
              f"(--worker-shutdown-timeout 1500, 2 running); `Shutting down...` after "
              f"{term.stopping_after_s:.2f} s, {term.stopping_after_ready_s:.2f} s after the worker was ready")

    run.check(PROCESS_LESSONS[7], term.short_finished and term.abandoned == 1 and term.exit_code == 0
              and term.long_started == 2 and term.back_after_s >= term.requeued_after_s + HEARTBEAT_MS / 1000 - 0.15,
              f"the 4000 ms one abandoned, exit code {term.exit_code}; back on e05 {term.back_after_s:.2f} s after "
              f"the SIGTERM, and started again; the 1200 ms one finished")

    if seen.restarts is None:
        for test in PROCESS_LESSONS[8:]:
            run.skip(test, "needs redis-server installed here: the scenario restarts a private one (never yours)")
        return
    plain, aof = seen.restarts
    run.check(PROCESS_LESSONS[8], all(r.worker_alive and r.ran_after == 5 for r in seen.restarts),
              f"the worker stayed up and ran 5 of 5 sent after each restart; "
              f"connection errors in its log: {plain.connection_errors} and {aof.connection_errors}")
    run.check(PROCESS_LESSONS[9], plain.queued_after == 0 and plain.ran_before == 10 - plain.queued
              and aof.queued_after == aof.queued > 0 and aof.ran_before == 10,
              f"persistence off: {plain.queued_after} of the {plain.queued} waiting left, {plain.ran_before} of 10 "
              f"ran (the one the worker held); appendonly yes: {aof.queued_after} of {aof.queued} left, "
              f"{aof.ran_before} of 10 ran")
