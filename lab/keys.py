"""The Redis key layout of Dramatiq's RedisBroker: naming, counting and purging.

With the default namespace ``dramatiq``, a queue ``q`` lives in:

- ``dramatiq:q``           list of ready message ids
- ``dramatiq:q.msgs``      hash id -> encoded message (ready *and* in flight)
- ``dramatiq:q.DQ``        list of delayed message ids, ``dramatiq:q.DQ.msgs`` their hash
- ``dramatiq:q.XQ``        zset of dead-lettered ids scored by when, ``dramatiq:q.XQ.msgs`` their hash
- ``dramatiq:__acks__.<broker id>.q``  set of ids a worker has fetched and not yet acked
  (``...q.DQ`` for the delayed messages it holds in memory until they are due)
- ``dramatiq:__heartbeats__``  zset of broker ids scored by their last command (senders too)

The ids are ``options["redis_message_id"]``, a new uuid for every enqueue.
Everything here uses plain Redis commands, never Dramatiq's Lua ``dispatch``
script: every dispatch writes a heartbeat for the calling process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

# Dramatiq's own rule for queue names (dramatiq/actor.py).
QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
# Longest first: "q.DQ.msgs" must not be read as queue "q.DQ".
SUFFIXES = (".DQ.msgs", ".XQ.msgs", ".msgs", ".DQ", ".XQ")
ACKS = "__acks__."
HEARTBEATS = "__heartbeats__"


def key(broker: RedisBroker, name: str) -> str:
    """The full Redis key for ``name`` in the broker's namespace."""
    return f"{broker.namespace}:{name}"


def queue_of(name: str) -> str | None:
    """The queue a key (without its namespace) belongs to; None for acks, heartbeats, others."""
    if name.startswith("__"):
        return None
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name if QUEUE_NAME.fullmatch(name) else None


def acks_of(name: str) -> tuple[str, str] | None:
    """(broker id, queue) of an ``__acks__.<broker id>.<queue>`` key name; a broker id is a uuid4."""
    if not name.startswith(ACKS):
        return None
    broker_id, _, queue = name[len(ACKS):].partition(".")
    return (broker_id, queue) if queue else None


def key_names(broker: RedisBroker) -> list[str]:
    """Every key in the broker's namespace, without the namespace (SCAN, not KEYS)."""
    prefix = key(broker, "")
    return [
        (raw.decode() if isinstance(raw, bytes) else raw).removeprefix(prefix)
        for raw in broker.client.scan_iter(match=f"{prefix}*", count=1000)
    ]


def queue_names(broker: RedisBroker, names: list[str] | None = None) -> list[str]:
    """The queues that have keys in Redis, and the ones declared on ``broker``, sorted."""
    names = key_names(broker) if names is None else names
    return sorted({q for q in map(queue_of, names) if q is not None} | broker.get_declared_queues())


@dataclass
class QueueCounts:
    """How many messages a queue holds, in each state."""

    name: str
    ready: int = 0  # ids in the list <q>: waiting for a worker
    delayed: int = 0  # entries of <q>.DQ.msgs: not due yet, in Redis or held by a worker
    in_flight: int = 0  # ids in every __acks__.<broker id>.<q>: fetched by a worker, not acked yet
    dead: int = 0  # ids in the zset <q>.XQ: dead-lettered
    held_delayed: int = 0  # ids in every __acks__.<broker id>.<q>.DQ: delayed ones a worker holds


def count_queues(broker: RedisBroker, names: list[str]) -> tuple[dict[str, QueueCounts], dict[str, int], list]:
    """Counts per queue, messages held per broker id, and the raw heartbeats, in one MULTI/EXEC.

    ``names`` are the key names of :func:`key_names`; one transaction makes every
    count come from the same moment.
    """
    queues = queue_names(broker, names)
    acks = [(name, parsed) for name in names if (parsed := acks_of(name))]
    with broker.client.pipeline(transaction=True) as pipe:
        for queue in queues:
            pipe.llen(key(broker, queue))
            pipe.hlen(key(broker, f"{queue}.DQ.msgs"))
            pipe.zcard(key(broker, f"{queue}.XQ"))
        for name, _ in acks:
            pipe.scard(key(broker, name))
        pipe.zrange(key(broker, HEARTBEATS), 0, -1, withscores=True)
        *replies, beats = pipe.execute()

    counts = {}
    for index, queue in enumerate(queues):
        ready, delayed, dead = replies[3 * index: 3 * index + 3]
        counts[queue] = QueueCounts(queue, ready, delayed, 0, dead)
    holding: dict[str, int] = {}
    for (_, (broker_id, queue)), size in zip(acks, replies[3 * len(queues):], strict=True):
        holding[broker_id] = holding.get(broker_id, 0) + size
        if queue in counts:
            counts[queue].in_flight += size
        elif queue.endswith(".DQ") and queue[:-3] in counts:  # delayed, held in memory: not in flight
            counts[queue[:-3]].held_delayed += size
    return counts, holding, beats


@dataclass(frozen=True)
class DeadLetter:
    """A message in a queue's dead-letter set, and when it got there."""

    message: Message
    dead_at_ms: int


def dead_letters(broker: RedisBroker, queue_name: str) -> list[DeadLetter]:
    """The dead letters of ``queue_name``, oldest first (on RabbitMQ too: its ``<queue>.XQ``, read and given back)."""
    if not isinstance(broker, RedisBroker):
        from .rabbit_status import rabbit_dead_letters  # here: the Redis side needs no pika

        return rabbit_dead_letters(broker, queue_name)
    xq = key(broker, f"{queue_name}.XQ")
    entries = broker.client.zrange(xq, 0, -1, withscores=True)
    if not entries:
        return []
    encoded = broker.client.hmget(f"{xq}.msgs", [message_id for message_id, _ in entries])
    return [
        DeadLetter(Message.decode(data), int(score))
        for (_, score), data in zip(entries, encoded, strict=True)
        if data is not None
    ]


def requeue_dead_letter(broker: RedisBroker, queue: str, message_id: str) -> Message:
    """Move the dead letter of ``queue`` whose Dramatiq message id is ``message_id`` to the end of ``queue``.

    The message goes back as it was stored, options and all, so it keeps its retry count: failing
    again, it goes straight back to the dead letters. Plain commands in one transaction, like
    :func:`purge_queue`; LookupError if there is no such dead letter (any more).
    """
    found = next((d.message for d in dead_letters(broker, queue) if d.message.message_id == message_id), None)
    if found is None:
        raise LookupError(f"no dead letter {message_id} in {queue}")
    redis_id = found.options["redis_message_id"]  # the key Dramatiq filed it under (a new uuid per enqueue)
    xq, xq_msgs = key(broker, f"{queue}.XQ"), key(broker, f"{queue}.XQ.msgs")

    def move(pipe: redis.client.Pipeline) -> None:
        data = pipe.hget(xq_msgs, redis_id)
        if data is None:
            raise LookupError(f"no dead letter {message_id} in {queue}")
        pipe.multi()
        pipe.zrem(xq, redis_id)
        pipe.hdel(xq_msgs, redis_id)
        pipe.hset(key(broker, f"{queue}.msgs"), redis_id, data)
        pipe.rpush(key(broker, queue), redis_id)

    broker.client.transaction(move, xq, xq_msgs)
    return found


def purge_queue(broker: RedisBroker, queue: str, *, dead_letters: bool = False) -> QueueCounts:
    """Delete ``queue``'s ready and delayed messages (and its dead letters); return the counts it found.

    One transaction, retried if a worker touches the queue meanwhile. The
    stored copies of in-flight messages stay in ``<q>.msgs``, so their worker
    can still ack them, or dead-letter them if they fail for good. Delayed
    messages a worker already holds in memory are deleted from Redis, but that
    worker still enqueues them when they are due: ``held_delayed`` counts them.
    """
    ready_list, msgs = key(broker, queue), key(broker, f"{queue}.msgs")
    dq, dq_msgs = key(broker, f"{queue}.DQ"), key(broker, f"{queue}.DQ.msgs")
    xq, xq_msgs = key(broker, f"{queue}.XQ"), key(broker, f"{queue}.XQ.msgs")
    held_sets = [key(broker, name) for name in key_names(broker)
                 if (parsed := acks_of(name)) and parsed[1] == f"{queue}.DQ"]
    found = QueueCounts(queue)  # in_flight stays 0: those messages are not touched

    def remove(pipe: redis.client.Pipeline) -> None:
        ready_ids = pipe.lrange(ready_list, 0, -1)
        found.ready, found.delayed, found.dead = len(ready_ids), pipe.hlen(dq_msgs), pipe.zcard(xq)
        found.held_delayed = sum(pipe.scard(held) for held in held_sets)
        pipe.multi()
        pipe.delete(ready_list, dq, dq_msgs)
        if ready_ids:
            pipe.hdel(msgs, *ready_ids)
        if dead_letters:
            pipe.delete(xq, xq_msgs)

    broker.client.transaction(remove, ready_list, msgs, dq_msgs, xq, *held_sets)
    return found
