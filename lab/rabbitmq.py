"""The RabbitMQ side of the lab's broker: an ``amqp://`` URL gives a RabbitmqBroker.

Dramatiq's RabbitMQ broker keeps queues, delays (``.DQ``) and dead letters (``.XQ``) on the
server, but has no backend for results or rate limits: those live in a Redis beside it,
``$DRAMATIQ_REDIS_URL`` (:func:`lab.urls.redis_beside`), and so do the counters some
experiments keep (e05's balance): ``broker.client`` is that Redis, as on a RedisBroker.
Without one, whatever needs it (a result, ``broker.client``, a group's completion callback)
fails with one line that says what to set, and exit 2.

lab/broker.py imports this module only when a URL asks for RabbitMQ: a Redis-only learner
never loads pika.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import dramatiq
import pika
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage, GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import ResultBackend, Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend

from .failures import EXIT_USAGE, Failure
from .urls import BROKER_URL_ENV, DEFAULT_NAMESPACE, URL_ENV, mask_url, redis_beside

#: Seconds to connect and shake hands, unless the URL says otherwise (pika's default is 15 s in all).
CONNECT_TIMEOUT = 5


def no_redis_beside(url: str) -> Failure:
    """The one line for what needs a Redis beside the RabbitMQ at ``url`` when there is none."""
    return Failure(f"this needs a Redis beside RabbitMQ ({mask_url(url)}) for results, counters or rate limits: "
                   f"set {URL_ENV}=redis://HOST:PORT/0 next to {BROKER_URL_ENV}.", EXIT_USAGE)


class LabRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitmqBroker, plus the Redis beside it as ``client`` (as a RedisBroker has one)."""

    namespace = DEFAULT_NAMESPACE  # of the lab's keys in the Redis beside, as on a RedisBroker
    lab_redis_client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        # Without a Redis beside, a stand-in that fails at its first use, not here: an experiment that keeps it
        # at import time (e09's rate limiters) still imports, and the command that uses it says what is missing.
        return self.lab_redis_client or NoRedis(self.lab_url)


class NoRedis:
    """Stands in for the Redis beside RabbitMQ when there is none: its first use is the one line, exit 2."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Any:
        raise no_redis_beside(self.url)


class NoRedisBeside(ResultBackend):
    """Stands in for the results backend when there is no Redis beside: the one line, exit 2."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _get(self, message_key: str) -> Any:
        raise no_redis_beside(self.url)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        raise no_redis_beside(self.url)


def make_rabbitmq_broker(url: str, *, namespace: str, reachable: dramatiq.Middleware,
                         **options: Any) -> LabRabbitmqBroker:
    """A new RabbitmqBroker on ``url`` (checked by the caller), with the lab's middleware.

    ``options`` go to ``RabbitmqBroker`` (``max_priority``, ``confirm_delivery``). Results and
    group callbacks use the Redis beside it. Does not connect.
    """
    broker = LabRabbitmqBroker(url=url, **options)
    # Something that accepts the connection and never speaks AMQP (an HTTP port, a silent one) fails in 5 s,
    # as on Redis, not after pika's 15 s. A `?stack_timeout=` or `?socket_timeout=` in the URL wins.
    query = urlsplit(url).query
    for timeout in ("stack_timeout", "socket_timeout"):
        if f"{timeout}=" not in query:
            setattr(broker.parameters, timeout, CONNECT_TIMEOUT)
    broker.lab_url = url
    broker.lab_redis_url = redis_beside(url)
    broker.namespace = namespace
    broker.add_middleware(CurrentMessage())
    if broker.lab_redis_url is None:
        broker.add_middleware(Results(backend=NoRedisBeside(url)))
        broker.add_middleware(GroupCallbacks(NoRedis(url)))
    else:
        from .broker import make_client  # a Redis URL: the same checks and timeouts as the Redis broker's

        client = broker.lab_redis_client = make_client(broker.lab_redis_url)
        results = RedisResultBackend(client=client, namespace=f"{namespace}-results", use_namespace_prefix_keys=True)
        broker.add_middleware(Results(backend=results))
        broker.add_middleware(GroupCallbacks(RedisRateLimiterBackend(client=client)))
    broker.add_middleware(reachable)
    return broker


def check_rabbitmq(broker: RabbitmqBroker) -> None:
    """Connect to the broker's RabbitMQ and close again; pika's error if it cannot (lab.failures explains it).

    A connection of its own, not ``broker.connection``: that one would stay open in this
    thread, unused, until the server drops it for missed heartbeats.
    """
    pika.BlockingConnection(broker.parameters).close()


def management(base: str, method: str, path: str, body: dict | None = None, timeout: float = 5) -> Any:
    """One call to a RabbitMQ management HTTP API at ``base`` (``http://USER:PASSWORD@HOST:PORT``); its JSON.

    ``path`` is the API's (``/api/queues/%2F``); a vhost in it must be quoted (:func:`quote_vhost`).
    urllib's errors propagate (HTTPError for a 4xx or 5xx, URLError when nothing answers).
    """
    parts = urlsplit(base)
    request = urllib.request.Request(f"{parts.scheme}://{parts.hostname}:{parts.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
    credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        said = response.read()
    return json.loads(said) if said else None


def quote_vhost(vhost: str) -> str:
    """``vhost`` as the management API's paths write it: ``/`` is ``%2F``."""
    return quote(vhost, safe="")
