"""The Redis key layout of Dramatiq's RedisBroker, and readers for it.

With the default namespace ``dramatiq``, a queue ``q`` lives in:

- ``dramatiq:q``           list of ready message ids
- ``dramatiq:q.msgs``      hash id -> encoded message (ready *and* in flight)
- ``dramatiq:q.DQ``        list of delayed message ids, ``dramatiq:q.DQ.msgs`` their hash
- ``dramatiq:q.XQ``        zset of dead-lettered ids scored by when, ``dramatiq:q.XQ.msgs`` their hash
- ``dramatiq:__acks__.<broker id>.q``  set of ids a worker has fetched and not yet acked
- ``dramatiq:__heartbeats__``  zset of broker ids scored by their last command (senders too)
"""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker


def key(broker: RedisBroker, name: str) -> str:
    """The full Redis key for ``name`` in the broker's namespace."""
    return f"{broker.namespace}:{name}"


@dataclass(frozen=True)
class DeadLetter:
    """A message in a queue's dead-letter set, and when it got there."""

    message: Message
    dead_at_ms: int


def dead_letters(broker: RedisBroker, queue_name: str) -> list[DeadLetter]:
    """The dead letters of ``queue_name``, oldest first."""
    xq = key(broker, f"{queue_name}.XQ")
    entries = broker.client.zrange(xq, 0, -1, withscores=True)
    if not entries:
        return []
    encoded = broker.client.hmget(f"{xq}.msgs", [message_id for message_id, _ in entries])
    return [
        DeadLetter(Message.decode(data), int(score))
        for (_, score), data in zip(entries, encoded)
        if data is not None
    ]
