"""Experiment 13's measurements: each lesson played on a RabbitMQ and on a Redis, in this process.

Every function takes the two URLs, uses queues (RabbitMQ) or a namespace (Redis) of its own that
it deletes after, and returns a :class:`Side` per broker: what it observed, nothing hard-coded.
The scenario (``scenarios/e13_rabbitmq.py``) checks the lessons on them and prints the tables;
the tests (``tests/test_e13_rabbitmq.py``) run them once and assert on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lab
from lab.processes import ROOT, backstop, guard, release

import dramatiq
import dramatiq.brokers.rabbitmq as rabbitmq
import pika
import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout

HOLDER = str(Path(__file__).with_name("e13_holder.py"))


@dataclass
class Side:
    """What one broker did in one lesson: named values, shown as one column of its table."""

    broker: str  # "RabbitMQ" or "Redis"
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def tag() -> str:
    """A name part of this measurement's own: its queues never meet an earlier run's."""
    return uuid.uuid4().hex[:8]


def message(queue: str, *args: Any, **options: Any) -> Message:
    """A message for an actor no process declares: only the broker's side of it matters here."""
    return Message(queue_name=queue, actor_name="e13_probe", args=args, kwargs={}, options=options)


# -- the brokers' side: counts asked of the server, never of the consumer ------------------------------------------


def rabbit_ready(url: str, queue: str) -> int | None:
    """Ready messages in a RabbitMQ queue (a passive declare: AMQP's only count), None if there is no such queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        connection.close()


def rabbit_delete(url: str, *queues: str) -> None:
    """Delete RabbitMQ queues with their delay and dead-letter queues, as ``rabbitmqctl delete_queue`` would."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            for name in (queue, dq_name(queue), xq_name(queue)):
                channel.queue_delete(name)
    finally:
        connection.close()


def redis_broker(url: str, namespace: str, **options: Any) -> RedisBroker:
    return RedisBroker(client=redis.Redis.from_url(url), namespace=namespace, **options)


def redis_forget(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    names = list(client.scan_iter(match=f"{namespace}:*"))
    if names:
        client.delete(*names)
    client.close()


# -- 1. a worker killed with SIGKILL -------------------------------------------------------------------------------


@contextmanager
def holder(*args: str) -> Iterator[subprocess.Popen]:
    """``scenarios/e13_holder.py ARGS``, once it says it holds its messages; SIGKILLed by pid on the way out."""
    backstop()
    out = tempfile.NamedTemporaryFile("w+", prefix="lab-e13-holder-", delete=False)
    process = guard(subprocess.Popen([sys.executable, HOLDER, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True))
    try:
        said = lambda: Path(out.name).read_text()  # noqa: E731
        if not lab.wait_until(lambda: "holding" in said() or process.poll() is not None, timeout=20):
            raise TimeoutError(f"e13: the holder did not take its messages in 20 s: {said()}")
        if process.poll() is not None:
            raise RuntimeError(f"e13: the holder exited with {process.returncode}: {said()[-300:]}")
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        release(process)
        out.close()
        Path(out.name).unlink(missing_ok=True)


def killed_holder(args: list[str], consumer: dramatiq.Consumer, count: int, timeout: float = 30) -> dict[str, Any]:
    """Start a holder, SIGKILL it, and take back what it held with ``consumer``: what came back, and when."""
    with holder(*args) as process:
        os.killpg(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        process.wait()
    back, deadline = [], killed + timeout
    while len(back) < count and time.monotonic() < deadline:
        if (proxy := next(consumer)) is not None:
            back.append(proxy)
    recovery_ms = (time.monotonic() - killed) * 1000
    for proxy in back:
        consumer.ack(proxy)
    return {"back": back, "recovery_ms": recovery_ms}


def kill_lesson(rabbit_url: str, redis_url: str, *, count: int = 5, heartbeat_ms: int = 1000) -> list[Side]:
    """SIGKILL a process holding ``count`` unacked messages; a live consumer takes them back. Redis recovers through
    ``heartbeat_ms`` (60,000 by default) and maintenance on every call (1,000 in a million by default)."""
    queue = f"e13-{tag()}-kill"
    rabbit = RabbitmqBroker(url=rabbit_url)
    sent = [rabbit.enqueue(message(queue, i)).message_id for i in range(count)]
    consumer = rabbit.consume(queue, prefetch=count, timeout=100)  # subscribed before the kill, holding nothing yet
    try:
        got = killed_holder([rabbit_url, queue, str(count)], consumer, count)
    finally:
        consumer.close()
        rabbit_delete(rabbit_url, queue)
        rabbit.close()
    sides = [Side("RabbitMQ", {
        "sent": count, "lost": len(set(sent) - {m.message_id for m in got["back"]}),
        "recovery_ms": got["recovery_ms"], "redelivered": [m.redelivered for m in got["back"]],
        "how": "the server requeues a connection's unacked messages when it closes",
    })]
    namespace = f"e13-{tag()}"
    tuned = redis_broker(redis_url, namespace, heartbeat_timeout=heartbeat_ms, maintenance_chance=MAINTENANCE_SCALE)
    sent = [tuned.enqueue(message(queue, i)).message_id for i in range(count)]
    consumer = tuned.consume(queue, prefetch=count, timeout=100)
    try:
        got = killed_holder([redis_url, queue, str(count), namespace, str(heartbeat_ms)], consumer, count)
    finally:
        redis_forget(redis_url, namespace)
        tuned.client.close()
    sides.append(Side("Redis", {
        "sent": count, "lost": len(set(sent) - {m.message_id for m in got["back"]}),
        "recovery_ms": got["recovery_ms"], "redelivered": [getattr(m, "redelivered", None) for m in got["back"]],
        "how": f"maintenance, once the heartbeat is {heartbeat_ms} ms old (default 60,000 ms and 1 call in 1,000)",
    }))
    return sides


# -- 2. per-message priority, and the prefetch ---------------------------------------------------------------------


def greeting_position(broker: dramatiq.Broker, queue: str, *, backlog: int, prefetch: int | None) -> int:
    """Where a greeting sent with ``broker_priority=9`` ran among ``backlog`` messages sent before it, on a worker
    with one thread that is busy with the first of them when the greeting is sent. 1-based."""
    recorder = lab.Recorder.install(broker)
    recorder.reset()
    busy = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"work_{queue}")
    def work(i: int) -> None:
        if i == 0:
            busy.wait(10)  # the worker is busy with the first one until the greeting is in the queue

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"greet_{queue}")
    def greet() -> None:
        pass

    for i in range(backlog):
        work.send(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.queue_prefetch = prefetch or worker.queue_prefetch
    worker.start()
    try:
        if not lab.wait_until(lambda: recorder.attempts, timeout=10):
            raise TimeoutError("e13: the worker did not start the backlog in 10 s")
        greet.send_with_options(broker_priority=9)  # confirmed by the server before send returns (confirm_delivery)
        busy.set()
        if not lab.wait_until(lambda: len([a for a in recorder.attempts if a.ended]) == backlog + 1, timeout=10):
            raise TimeoutError("e13: the backlog and the greeting did not run in 10 s")
    finally:
        busy.set()
        lab.stop_worker(worker)
    order = [a.actor for a in recorder.attempts_of()]
    return order.index(greet.actor_name) + 1


def priority_lesson(rabbit_url: str, redis_url: str, *, backlog: int = 6) -> list[Side]:
    """e06's question asked again: where does a high-priority greeting run, with prefetch 1 and with the default?"""
    rabbit_values, redis_values = {"backlog": backlog}, {"backlog": backlog}
    for prefetch, label in ((1, "prefetch_1"), (None, "prefetch_default")):
        queue = f"e13-{tag()}-priority"
        rabbit = RabbitmqBroker(url=rabbit_url, max_priority=10, confirm_delivery=True)
        try:
            rabbit_values[label] = greeting_position(rabbit, queue, backlog=backlog, prefetch=prefetch)
        finally:
            rabbit_delete(rabbit_url, queue)
            rabbit.close()
        namespace = f"e13-{tag()}"
        broker = redis_broker(redis_url, namespace)
        try:
            redis_values[label] = greeting_position(broker, queue, backlog=backlog, prefetch=prefetch)
        finally:
            redis_forget(redis_url, namespace)
            broker.client.close()
    return [Side("RabbitMQ", rabbit_values), Side("Redis", redis_values)]


# -- 3. queue arguments are fixed when the queue is made -----------------------------------------------------------


def declare(url: str, queue: str, max_priority: int | None) -> str:
    """Declare ``queue`` as a RabbitmqBroker with ``max_priority`` would: "ok", or the error it gets."""
    broker = RabbitmqBroker(url=url, max_priority=max_priority)
    try:
        broker.declare_queue(queue, ensure=True)
        return "ok"
    except ConnectionClosed as exc:
        return str(exc)
    finally:
        broker.close()


def declare_lesson(rabbit_url: str, redis_url: str) -> list[Side]:
    """Declare a queue with max_priority 10, then again with 5; then delete it and declare again."""
    queue = f"e13-{tag()}-declare"
    try:
        first = declare(rabbit_url, queue, 10)
        again = declare(rabbit_url, queue, 5)
        renamed = declare(rabbit_url, f"{queue}-v2", 5)
        rabbit_delete(rabbit_url, queue)
        after_delete = declare(rabbit_url, queue, 5)
    finally:
        rabbit_delete(rabbit_url, queue, f"{queue}-v2")
    namespace = f"e13-{tag()}"
    broker = redis_broker(redis_url, namespace)
    broker.declare_queue(queue)
    kept = {name for name in broker.client.scan_iter(match=f"{namespace}:*")}  # declaring writes nothing to Redis
    broker.client.close()
    return [
        Side("RabbitMQ", {"first": first, "again": again, "new_name": renamed, "after_delete": after_delete}),
        Side("Redis", {"first": "ok", "again": "ok", "keys_after_declare": len(kept),
                       "has_max_priority": "max_priority" in RedisBroker.__init__.__code__.co_varnames}),
    ]


# -- 5. dead letters -----------------------------------------------------------------------------------------------


def dead_letter_one(broker: dramatiq.Broker, queue: str) -> None:
    """What a worker does with a message that failed for good: nack it, into ``<queue>.XQ``."""
    broker.enqueue(message(queue, 1))
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    try:
        proxy = None
        deadline = time.monotonic() + 10
        while proxy is None and time.monotonic() < deadline:
            proxy = next(consumer)
        consumer.nack(proxy)
    finally:
        consumer.close()


def dead_letter_lesson(rabbit_url: str, redis_url: str, *, ttl_ms: int = 500) -> list[Side]:
    """One dead letter on each broker with a ``dead_message_ttl`` of ``ttl_ms``, watched from the broker's side."""
    queue = f"e13-{tag()}-dead"
    rabbit = RabbitmqBroker(url=rabbit_url)
    default_ttl, rabbitmq.DEAD_MESSAGE_TTL = rabbitmq.DEAD_MESSAGE_TTL, ttl_ms  # read when .XQ is declared, then fixed
    try:
        rabbit.declare_queue(queue, ensure=True)
    finally:
        rabbitmq.DEAD_MESSAGE_TTL = default_ttl
    try:
        nacked = time.monotonic()  # a little before the nack: the ttl counts from the dead-lettering
        dead_letter_one(rabbit, queue)
        at_once = rabbit_ready(rabbit_url, xq_name(queue))
        lab.wait_until(lambda: rabbit_ready(rabbit_url, xq_name(queue)) == 0, timeout=ttl_ms / 1000 + 10)
        gone_ms = (time.monotonic() - nacked) * 1000
        after = rabbit_ready(rabbit_url, xq_name(queue))
    finally:
        rabbit_delete(rabbit_url, queue)
        rabbit.close()
    rabbit_side = Side("RabbitMQ", {"ttl_ms": ttl_ms, "at_once": at_once, "after_ttl": after, "gone_ms": gone_ms,
                                    "default_ttl_ms": default_ttl, "by": "the server, on its own"})
    namespace = f"e13-{tag()}"
    broker = redis_broker(redis_url, namespace, dead_message_ttl=ttl_ms, maintenance_chance=0)
    letters = f"{namespace}:{xq_name(queue)}"
    try:
        dead_letter_one(broker, queue)
        at_once = broker.client.zcard(letters)
        time.sleep(max(gone_ms, ttl_ms) / 1000 + 0.2)  # longer than the RabbitMQ dead letter lasted
        after = broker.client.zcard(letters)
        sweeper = redis_broker(redis_url, namespace, dead_message_ttl=ttl_ms, maintenance_chance=MAINTENANCE_SCALE)
        sweeper.do_qsize(queue)  # one dispatch call for this queue that draws maintenance
        swept = broker.client.zcard(letters)
        sweeper.client.close()
    finally:
        redis_forget(redis_url, namespace)
        broker.client.close()
    return [rabbit_side, Side("Redis", {"ttl_ms": ttl_ms, "at_once": at_once, "after_ttl": after,
                                        "after_maintenance": swept, "by": "maintenance for its queue only"})]


# -- 6. join() -----------------------------------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> tuple[float, str]:
    """How long ``call`` took, in ms, and how it ended: "returned" or "timed out"."""
    started = time.monotonic()
    try:
        call()
        ended = "returned"
    except QueueJoinTimeout:
        ended = "timed out"
    return (time.monotonic() - started) * 1000, ended


def join_side(name: str, broker: dramatiq.Broker, queue: str, patience_ms: int) -> Side:
    """join() on an empty queue, then with one message taken and not yet acked."""
    broker.declare_queue(queue, ensure=True) if name == "RabbitMQ" else broker.declare_queue(queue)
    empty_ms, _ = timed(lambda: broker.join(queue, timeout=10_000))
    broker.enqueue(message(queue, 1))
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    try:
        proxy = None
        while proxy is None:
            proxy = next(consumer)
        in_flight_ms, in_flight = timed(lambda: broker.join(queue, timeout=patience_ms))
        consumer.ack(proxy)
    finally:
        consumer.close()
    return Side(name, {"empty_ms": empty_ms, "in_flight_ms": in_flight_ms, "in_flight": in_flight})


def join_lesson(rabbit_url: str, redis_url: str, *, patience_ms: int = 1500) -> list[Side]:
    """join(timeout=``patience_ms``) on both, side by side in two threads (each waits about a second)."""
    queue = f"e13-{tag()}-join"
    namespace = f"e13-{tag()}"
    rabbit, broker = RabbitmqBroker(url=rabbit_url), redis_broker(redis_url, namespace)
    sides: dict[str, Side] = {}

    def play(name: str, on: dramatiq.Broker) -> None:
        sides[name] = join_side(name, on, queue, patience_ms)

    threads = [threading.Thread(target=play, args=("RabbitMQ", rabbit)),
               threading.Thread(target=play, args=("Redis", broker))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        rabbit_delete(rabbit_url, queue)
        rabbit.close()
        redis_forget(redis_url, namespace)
        broker.client.close()
    if len(sides) != 2:
        raise RuntimeError(f"e13: join() did not finish on {', '.join({'RabbitMQ', 'Redis'} - set(sides))}")
    return [sides["RabbitMQ"], sides["Redis"]]


# -- 7. publishing when the queue is gone --------------------------------------------------------------------------


def publish_after_delete(rabbit_url: str, count: int, *, confirm: bool) -> int:
    """Messages that reached the queue when a sender publishes ``count`` after the queue was deleted under it."""
    queue = f"e13-{tag()}-gone"
    sender = RabbitmqBroker(url=rabbit_url, confirm_delivery=confirm)
    try:
        sender.declare_queue(queue, ensure=True)  # the sender now believes the queue exists
        rabbit_delete(rabbit_url, queue)  # an operator, or a test's teardown, deletes it
        for i in range(count):
            sender.enqueue(message(queue, i))
        return rabbit_ready(rabbit_url, queue) or 0  # None: there is no queue, so nothing reached one
    finally:
        rabbit_delete(rabbit_url, queue)
        sender.close()


def publish_lesson(rabbit_url: str, redis_url: str, *, count: int = 5) -> list[Side]:
    """Publish ``count`` messages after the queue was deleted: without and with confirm_delivery; Redis alike."""
    rabbit = Side("RabbitMQ", {"sent": count,
                               "arrived_without_confirm": publish_after_delete(rabbit_url, count, confirm=False),
                               "arrived_with_confirm": publish_after_delete(rabbit_url, count, confirm=True)})
    queue, namespace = f"e13-{tag()}-gone", f"e13-{tag()}"
    broker = redis_broker(redis_url, namespace)
    try:
        broker.enqueue(message(queue, 0))
        redis_forget(redis_url, namespace)  # every key of the queue deleted
        for i in range(count):
            broker.enqueue(message(queue, i))
        arrived = broker.client.llen(f"{namespace}:{queue}")
    finally:
        redis_forget(redis_url, namespace)
        broker.client.close()
    return [rabbit, Side("Redis", {"sent": count, "arrived_without_confirm": arrived, "arrived_with_confirm": None})]


# -- 8. prefetch on the server, prefetch in the client -------------------------------------------------------------


def held_by_a_worker(broker: dramatiq.Broker, queue: str, ready: Callable[[], int | None], *, count: int,
                     prefetch: int, settle_s: float) -> list[int]:
    """A worker with one thread and ``prefetch`` on a queue of ``count`` messages, each of which runs until told:
    the broker's count of ready messages while the first runs, and while the second does."""
    recorder = lab.Recorder.install(broker)
    recorder.reset()
    go = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"hold_{queue}")
    def hold(i: int) -> None:
        go.acquire(timeout=10)

    for i in range(count):
        hold.send(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.queue_prefetch = prefetch
    worker.start()
    seen = []
    try:
        for running in (1, 2):
            if not lab.wait_until(lambda n=running: len(recorder.attempts) == n, timeout=10):
                raise TimeoutError(f"e13: message {running} did not start in 10 s")
            time.sleep(settle_s)  # time for the worker to fetch, or the server to push, what it may hold
            seen.append(ready())
            go.release()
    finally:
        for _ in range(count):
            go.release()
        lab.stop_worker(worker)
    return seen


def prefetch_lesson(rabbit_url: str, redis_url: str, *, count: int = 10, prefetch: int = 4,
                    settle_s: float = 0.2) -> list[Side]:
    """What a worker with ``prefetch`` holds, seen from the broker: sent - ready - done, while message 1 runs and
    while message 2 does."""
    queue = f"e13-{tag()}-prefetch"
    rabbit = RabbitmqBroker(url=rabbit_url)
    try:
        ready = held_by_a_worker(rabbit, queue, lambda: rabbit_ready(rabbit_url, queue), count=count,
                                 prefetch=prefetch, settle_s=settle_s)
    finally:
        rabbit_delete(rabbit_url, queue)
        rabbit.close()
    sides = [Side("RabbitMQ", {"sent": count, "prefetch": prefetch, "ready": ready,
                               "held": [count - r - k for k, r in enumerate(ready)],
                               "where": "unacked on the consumer's channel: basic_qos, kept by the server"})]
    namespace = f"e13-{tag()}"
    broker = redis_broker(redis_url, namespace)
    acks = []

    def ready_and_acks() -> int:
        acks.append(sum(broker.client.scard(k) for k in broker.client.scan_iter(match=f"{namespace}:__acks__.*")))
        return broker.client.llen(f"{namespace}:{queue}")

    try:
        ready = held_by_a_worker(broker, queue, ready_and_acks, count=count, prefetch=prefetch, settle_s=settle_s)
    finally:
        redis_forget(redis_url, namespace)
        broker.client.close()
    sides.append(Side("Redis", {"sent": count, "prefetch": prefetch, "ready": ready,
                                "held": [count - r - k for k, r in enumerate(ready)], "in_acks_sets": acks,
                                "where": "the worker's acks set, __acks__.<broker id>.<queue>: fetched by the client"}))
    return sides
