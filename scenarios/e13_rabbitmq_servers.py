"""Experiment 13's lessons that need servers of their own: consumer_timeout, a restart, throughput.

Each lesson starts the private servers it needs (free ports, own temp dirs, stopped by pid), runs Dramatiq's
own RabbitmqBroker and RedisBroker on them with an in-process worker, and returns what it observed as rows
for a side-by-side table. Nothing here knows e13's broker: these lessons are about server settings.

- consumer_timeout (RabbitMQ 3.8.15+; 30 min by default), scaled down to TIMEOUT_MS with a short channel
  tick: a task that runs longer loses its channel, is delivered again and runs twice, and its first ack is
  lost (Dramatiq issue 827). So does a quick task prefetched behind a long one, and a delayed message held
  in the worker comes back to its .DQ at each timeout. The fix that works on Dramatiq 2.2.1 and RabbitMQ
  3.10.8 is the server setting, above the longest task: the ``x-consumer-timeout`` queue argument is
  ignored by 3.10.8 (measured here; RabbitMQ honours it from 3.12).
- a restart: durable queues and persistent messages survive a RabbitMQ restart; redis-server keeps its
  queues only with appendonly.
- throughput: ``benchmarks/e13_throughput.py``'s tiny plan, e10's drain beside each broker's own limit, on
  the same private RabbitMQ once it has restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

from lab.processes import RabbitServer, RedisServer
from lab.recorder import wait_until

import dramatiq
import dramatiq.worker
import pika
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

TIMEOUT_MS = 300  # the scaled-down consumer_timeout (RabbitMQ's default: 1,800,000, 30 minutes)
TICK_MS = 50  # channel_tick_interval: how often a channel checks its deliveries' age (default 60 s)
BEHIND_MS = 600  # a long task with a quick one waiting behind it
TASK_MS = 1000  # a task three times longer than the timeout
RAISED_MS = 60_000  # the fix: consumer_timeout above the longest task
RESTART_COUNT = 20
QUEUE, ARG_QUEUE, DELAYED_QUEUE, BEHIND_QUEUE = "e13-ct", "e13-ct-arg", "e13-ct-delayed", "e13-ct-behind"
RESTART_QUEUE = "e13-restart"


def missing() -> str | None:
    """None when rabbitmq-server and redis-server are installed; else one line saying what to install."""
    for executable_path in (RabbitServer.executable_path, RedisServer.executable_path):
        try:
            executable_path()
        except FileNotFoundError as exc:
            return str(exc)
    return None


def config(consumer_timeout_ms: int) -> list[str]:
    """rabbitmq.conf lines: a consumer_timeout."""
    return [f"consumer_timeout = {consumer_timeout_ms}"]


#: advanced.config (Erlang terms): rabbitmq.conf has no key for channel_tick_interval in 3.10.
TICK = f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}]."


def server_version(url: str) -> str:
    """"RabbitMQ 3.10.8 (Erlang/OTP 25.2.3)", from what the server says when pika connects."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    said = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in connection._impl.server_properties.items()}
    connection.close()
    return f"RabbitMQ {said.get('version', '?')} ({said.get('platform', '?')})"


class Deliveries(Middleware):
    """What each delivery looked like when the worker took it: (queue, actor, redelivered), in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[tuple[str, str, bool]] = []  # before_process_message: a run starts
        self.held: list[tuple[str, str, bool]] = []  # before_delay_message: a delayed message taken from a .DQ
        self.acked: list[str] = []

    def _note(self, into: list, message: Any) -> None:
        with self.lock:
            into.append((message.queue_name, message.actor_name, bool(getattr(message, "redelivered", False))))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._note(self.started, message)

    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._note(self.held, message)

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        with self.lock:
            self.acked.append(message.message_id)

    def runs(self, actor: str) -> list[bool]:
        """The runs of ``actor``: for each, whether RabbitMQ said it was a redelivery."""
        return [redelivered for _, a, redelivered in self.started if a == actor]

    def holds(self, actor: str) -> list[bool]:
        """Each time a delayed message of ``actor`` was taken from its .DQ: was it a redelivery?"""
        return [redelivered for _, a, redelivered in self.held if a == actor]


class QueueArguments(RabbitmqBroker):
    """A RabbitmqBroker that declares extra arguments on some queues: the per-queue fix, tried on this server."""

    def __init__(self, *, extra: dict[str, dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return {**super()._build_queue_arguments(queue_name), **self.extra.get(queue_name, {})}


class FailedAcks(logging.Handler):
    """The consumer's "Failed to ack message" warnings (an ack sent on a channel the server closed), by thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.threads: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Failed to ack message"):
            self.threads.append(record.threadName)


@contextmanager
def quick_restarts() -> Iterator[FailedAcks]:
    """Consumers restart 0.1 s after a connection error, not Dramatiq's 3 s (``dramatiq_restart_delay``), so the
    second delivery comes soon; and failed acks are noted."""
    failed_acks, logger = FailedAcks(), logging.getLogger("dramatiq.brokers.rabbitmq._RabbitmqConsumer")
    restart_delay, dramatiq.worker.CONSUMER_RESTART_DELAY_SECS = dramatiq.worker.CONSUMER_RESTART_DELAY_SECS, 0.1
    logger.addHandler(failed_acks)
    # `lab run` disables records up to ERROR to keep the screen clean (lab.scenario.worker_log): the warnings
    # counted here must still be made. Where they go beyond this handler is still the run's choice.
    disabled = logging.root.manager.disable
    logging.disable(min(disabled, logging.INFO))
    try:
        yield failed_acks
    finally:
        logging.disable(disabled)
        dramatiq.worker.CONSUMER_RESTART_DELAY_SECS = restart_delay
        logger.removeHandler(failed_acks)


Send = Callable[[dict[str, dramatiq.Actor]], None]


def play(broker: dramatiq.Broker, actors: dict[str, tuple[str, bool]], send: Send, done: Callable[[Deliveries], bool],
         *, failed_acks: FailedAcks, threads: int = 8, task_ms: int = TASK_MS) -> dict[str, Any]:
    """Declare ``actors`` (name: (queue, slow)) on ``broker``, start a worker, ``send``, wait until ``done``.

    A slow actor runs ``task_ms``, a quick one returns at once. The slow ones wait on an event, so the worker
    stops at once when the lesson has seen enough. Returns the deliveries, this worker's failed acks, and
    whether ``done`` came in time.
    """
    deliveries, release = Deliveries(), threading.Event()
    broker.add_middleware(deliveries)

    def slow() -> None:  # runs task_ms, or until the lesson has seen enough
        release.wait(task_ms / 1000)

    def quick() -> None:
        pass

    declared = {name: dramatiq.actor(slow if is_slow else quick, actor_name=name, queue_name=queue, broker=broker,
                                     max_retries=0) for name, (queue, is_slow) in actors.items()}
    worker = dramatiq.Worker(broker, queues={queue for queue, _ in actors.values()}, worker_threads=threads,
                             worker_timeout=100)
    try:
        worker.start()
        send(declared)
        in_time = wait_until(lambda: done(deliveries), timeout=TASK_MS / 1000 * 3 + 10)
    finally:
        release.set()
        worker.stop(timeout=5000)
        broker.close()
    mine = {thread.name for thread in worker.workers}
    return {"deliveries": deliveries, "failed_acks": sum(name in mine for name in failed_acks.threads),
            "in_time": in_time}


def too_long(server: RabbitServer, failed_acks: FailedAcks) -> dict[str, Any]:
    """On a server with consumer_timeout TIMEOUT_MS: a long task, the same with x-consumer-timeout, a delay."""
    broker = QueueArguments(url=server.url, extra={ARG_QUEUE: {"x-consumer-timeout": RAISED_MS}})
    delay_ms = 3 * TIMEOUT_MS
    actors = {"long_task": (QUEUE, True), "long_task_with_arg": (ARG_QUEUE, True),
              "delayed_task": (DELAYED_QUEUE, False)}

    def send(declared: dict[str, dramatiq.Actor]) -> None:
        declared["long_task"].send()
        declared["long_task_with_arg"].send()
        declared["delayed_task"].send_with_options(delay=delay_ms)

    def done(d: Deliveries) -> bool:
        return len(d.runs("long_task")) >= 2 and len(d.runs("long_task_with_arg")) >= 2 and d.runs("delayed_task")

    played = play(broker, actors, send, done, failed_acks=failed_acks)
    d = played["deliveries"]
    return {"runs": d.runs("long_task"), "arg_runs": d.runs("long_task_with_arg"),
            "delayed_runs": d.runs("delayed_task"), "delayed_holds": d.holds("delayed_task"), "delay_ms": delay_ms,
            "failed_acks": played["failed_acks"], "in_time": played["in_time"]}


def behind(server: RabbitServer, failed_acks: FailedAcks) -> dict[str, Any]:
    """On the same server, a worker with one thread: a long task (BEHIND_MS), then a quick one, prefetched behind it."""
    actors = {"first_long_task": (BEHIND_QUEUE, True), "quick_task_behind": (BEHIND_QUEUE, False)}

    def send(declared: dict[str, dramatiq.Actor]) -> None:
        declared["first_long_task"].send()
        declared["quick_task_behind"].send()

    def done(d: Deliveries) -> bool:
        return len(d.runs("quick_task_behind")) >= 2

    # The quick task waits as long as the long one runs: BEHIND_MS, twice the timeout and then some.
    played = play(RabbitmqBroker(url=server.url), actors, send, done, failed_acks=failed_acks, threads=1,
                  task_ms=BEHIND_MS)
    return {"quick_runs": played["deliveries"].runs("quick_task_behind"), "in_time": played["in_time"]}


def raised(server: RabbitServer, failed_acks: FailedAcks) -> dict[str, Any]:
    """On a server with consumer_timeout RAISED_MS: the same long task, and the same delayed message."""
    purge(server.url, QUEUE, DELAYED_QUEUE)  # what the first part left (requeued when its worker stopped)
    delay_ms = 3 * TIMEOUT_MS
    actors = {"long_task": (QUEUE, True), "delayed_task": (DELAYED_QUEUE, False)}

    def send(declared: dict[str, dramatiq.Actor]) -> None:
        declared["long_task"].send()
        declared["delayed_task"].send_with_options(delay=delay_ms)

    def done(d: Deliveries) -> bool:  # both ran and were acked (and the delayed one's .DQ copy too)
        return len(d.acked) >= 3

    played = play(RabbitmqBroker(url=server.url), actors, send, done, failed_acks=failed_acks)
    d = played["deliveries"]
    return {"runs": d.runs("long_task"), "delayed_runs": d.runs("delayed_task"), "delayed_holds":
            d.holds("delayed_task"), "failed_acks": played["failed_acks"], "acked": len(d.acked),
            "in_time": played["in_time"]}


# -- a restart -------------------------------------------------------------------------------------


def rabbit_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare: it fails if the queue is gone)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        if connection.is_open:
            connection.close()


def purge(url: str, *queues: str) -> None:
    """Empty ``queues`` and their delay queues."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.DQ"):
                channel.queue_purge(name)
    finally:
        connection.close()


def send_batch(broker: dramatiq.Broker, count: int) -> None:
    """``count`` messages to RESTART_QUEUE; no worker: they wait there."""
    actor = dramatiq.actor(lambda n: None, actor_name="e13_restart_batch", queue_name=RESTART_QUEUE, broker=broker)
    for n in range(count):
        actor.send(n)
    broker.close() if isinstance(broker, RabbitmqBroker) else broker.client.close()


def rabbit_restart(server: RabbitServer, count: int, new_config: list[str]) -> dict[str, Any]:
    """``count`` messages waiting in a durable queue; the server restarted with ``new_config``; what is left."""
    # with publisher confirms, each send returns once the server has queued (and, persistent, written) it: without,
    # a count read at once saw 1 of 20 still on its way (a loaded canary run), and a restart could come first
    send_batch(RabbitmqBroker(url=server.url, confirm_delivery=True), count)
    before = rabbit_count(server.url, RESTART_QUEUE)
    server.config = new_config
    server.restart()
    return {"broker": "RabbitMQ", "persistence": "durable queue, persistent messages (Dramatiq's)",
            "sent": count, "before": before, "survived": rabbit_count(server.url, RESTART_QUEUE)}


def redis_restart(appendonly: bool, count: int) -> dict[str, Any]:
    with RedisServer(appendonly=appendonly) as server:
        send_batch(RedisBroker(url=server.url), count)
        client = redis.Redis.from_url(server.url)
        before = client.llen(f"dramatiq:{RESTART_QUEUE}")
        server.restart()
        survived = client.llen(f"dramatiq:{RESTART_QUEUE}")
        client.close()
    return {"broker": "redis-server", "persistence": "appendonly yes, fsync always" if appendonly else
            "appendonly no, no snapshots", "sent": count, "before": before, "survived": survived}


# -- the lessons, for e13's scenario and tests ---------------------------------------------------------


def server_lessons(count: int = RESTART_COUNT, redis_url: str | None = None) -> dict[str, Any]:
    """Lessons 4, 9 and 10 on one private RabbitMQ, with two redis-servers meanwhile.

    The server starts with consumer_timeout TIMEOUT_MS: a long task runs twice. The fix is a server setting,
    so the server restarts with RAISED_MS, ``count`` messages waiting in a durable queue: they survive it,
    and the long task then runs once; meanwhile the tiny drains run on it, beside ``redis_url`` (or a private
    redis-server). One start and one restart in all: a RabbitMQ start is most of the time this takes.
    """
    began, timings = time.monotonic(), {}

    def timed(step: str, since: float) -> float:
        timings[step] = round(time.monotonic() - since, 2)
        return time.monotonic()

    with ThreadPoolExecutor(3) as pool:
        redis_rows = [pool.submit(redis_restart, appendonly, count) for appendonly in (False, True)]
        server = RabbitServer(config=config(TIMEOUT_MS), advanced=TICK)
        try:
            mark = timed("start", began)
            version = server_version(server.url)
            with quick_restarts() as failed_acks:
                queued = pool.submit(behind, server, failed_acks)
                shown = {**too_long(server, failed_acks), **queued.result()}
                mark = timed("too_long", mark)
                rabbit_row = rabbit_restart(server, count, config(RAISED_MS))
                mark = timed("restart", mark)
                # the drains after the restart: with the 300 ms timeout, a message waiting in a worker would run twice
                drains = pool.submit(throughput_lesson, server.url, redis_url)
                fixed = raised(server, failed_acks)
                timed("raised", mark)
                throughput = drains.result()
                timed("throughput", mark)
        finally:
            server.stop(signal.SIGKILL)  # a crash: nothing of it is needed any more, and a clean stop takes a second
            server.close()
        rows = [rabbit_row, *(row.result() for row in redis_rows)]
    return {"consumer_timeout": {"too_long": shown, "raised": fixed, "timeout_ms": TIMEOUT_MS, "tick_ms": TICK_MS,
                                 "task_ms": TASK_MS, "raised_ms": RAISED_MS, "rows": timeout_rows(shown, fixed),
                                 "columns": ["server", "message", "runs", "redelivered", "failed_acks"]},
            "restart": {"rows": rows, "columns": ["broker", "persistence", "sent", "before", "survived"]},
            "throughput": throughput, "seconds": time.monotonic() - began, "timings": timings,
            "rabbitmq": version, "cores": os.cpu_count()}


def timeout_rows(shown: dict[str, Any], fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """consumer_timeout's table: each message, its runs (and how many of them were redeliveries)."""
    short, long = f"consumer_timeout {TIMEOUT_MS} ms", f"consumer_timeout {RAISED_MS // 1000} s (restarted)"
    task, delayed = f"a task of {TASK_MS} ms", f"delayed {shown['delay_ms']} ms: taken from its .DQ"

    def row(server: str, message: str, runs: list[bool], failed_acks: int | str) -> dict[str, Any]:
        return {"server": server, "message": message, "runs": len(runs), "redelivered": sum(runs),
                "failed_acks": failed_acks}

    return [row(short, task, shown["runs"], shown["failed_acks"]),
            row(f"{short}, queue x-consumer-timeout {RAISED_MS // 1000} s", task, shown["arg_runs"], "-"),
            row(short, delayed, shown["delayed_holds"], "-"),
            row(short, "... and then ran", shown["delayed_runs"], "-"),
            row(f"{short}, a worker with 1 thread", f"a quick task prefetched behind one of {BEHIND_MS} ms",
                shown["quick_runs"], "-"),
            row(long, task, fixed["runs"], fixed["failed_acks"]),
            row(long, delayed, fixed["delayed_holds"], "-"),
            row(long, "... and then ran", fixed["delayed_runs"], "-")]


def throughput_lesson(rabbitmq_url: str | None = None, redis_url: str | None = None,
                      plan: str = "tiny") -> dict[str, Any]:
    """e10's drain on RabbitMQ beside Redis, each a fraction of its own limit (benchmarks/e13_throughput.py).

    On private servers unless URLs are given; the queue it uses (``e13-drain``) must be empty and unused.
    """
    from benchmarks import e13_throughput  # here: the servers' lessons need none of it

    with ExitStack() as stack:
        rabbitmq_url = rabbitmq_url or stack.enter_context(RabbitServer()).url
        redis_url = redis_url or stack.enter_context(RedisServer()).url
        return e13_throughput.measure(rabbitmq_url, redis_url, plan)
