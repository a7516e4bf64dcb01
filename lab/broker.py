"""One broker for the whole process, configured by one environment variable.

Every experiment calls :func:`setup_broker` at import time, before it declares
its actors. The first call builds the broker and hands it to
``dramatiq.set_broker``; later calls (another experiment loaded by the same
``dramatiq`` worker) get the same broker back, so several experiments share one.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit, urlunsplit

import click
import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage, GroupCallbacks, Middleware, MiddlewareError
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend

#: The only configuration: where Redis is.
URL_ENV = "DRAMATIQ_REDIS_URL"
DEFAULT_URL = "redis://localhost:6379/0"
#: This value gives an in-process fakeredis server instead of a network Redis.
MEMORY_URL = "memory://"

#: Exit codes shared by the senders and ``python -m lab`` (2 is click's usage error).
EXIT_BAD_CONFIG = 2
EXIT_UNREACHABLE = 3  # the same code the ``dramatiq`` CLI uses for "broker connection failed"

_broker: RedisBroker | None = None


def redis_url() -> str:
    """The Redis URL the lab uses: ``$DRAMATIQ_REDIS_URL`` or the local default."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


def current_url() -> str:
    """The URL of the process's broker, or the configured one before there is a broker."""
    return _broker.lab_url if _broker is not None else redis_url()


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


#: What redis-py raises when there is no (working) Redis at the URL: nothing listens,
#: nothing answers in time, or something that is not Redis answers (an HTTP port, say).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)


def how_to_get_redis(url: str) -> str:
    """One line: which Redis could not be reached, and how to get one."""
    return (
        f"cannot reach Redis at {mask_url(url)}. Start one with `redis-server` "
        f"(or `python -m lab serve` for the embedded one), or set {URL_ENV} to yours."
    )


def make_client(url: str) -> redis.Redis:
    """A Redis client for ``url``; ``memory://`` gives a new in-process fakeredis server.

    Raises ValueError for a URL that is not ``redis://``, ``rediss://``,
    ``unix://`` or ``memory://``.
    """
    if url == MEMORY_URL:
        import fakeredis  # only the embedded broker needs it

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    # A host that never answers fails in 5 s with a clear line, not after the OS's TCP timeout.
    return redis.Redis.from_url(url, socket_connect_timeout=5)


class RedisUnreachable(MiddlewareError, BrokerConnectionError):
    """Raised at worker boot. A MiddlewareError, so Dramatiq lets it through its
    middleware hooks; a BrokerConnectionError, so the ``dramatiq`` CLI exits with 3."""


class RedisReachable(Middleware):
    """Fail a worker's boot with a clear message when Redis is not there.

    Without this, a worker started against a dead Redis boots "fine" and then
    logs a connection error every few seconds, forever.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def before_worker_boot(self, broker: RedisBroker, worker: dramatiq.Worker) -> None:
        try:
            broker.client.ping()
        except redis.RedisError:
            raise RedisUnreachable(how_to_get_redis(self.url)) from None


def make_broker(url: str, *, namespace: str = "dramatiq") -> RedisBroker:
    """A new RedisBroker on ``url``, with everything the experiments use.

    Results and group callbacks keep their data in the same Redis as the
    queues, through the same client, so ``memory://`` stays one server.
    """
    client = make_client(url)
    broker = RedisBroker(client=client, namespace=namespace)
    broker.add_middleware(CurrentMessage())
    # Readable result keys (<namespace>-results:<queue>:<actor>:<message id>) instead of
    # md5 hashes, so a learner can find them and the lab can clean up after itself.
    results = RedisResultBackend(client=client, namespace=f"{namespace}-results", use_namespace_prefix_keys=True)
    broker.add_middleware(Results(backend=results))
    broker.add_middleware(GroupCallbacks(RedisRateLimiterBackend(client=client)))
    broker.add_middleware(RedisReachable(url))
    broker.lab_url = url  # so status lines and errors can say where the broker is
    return broker


def use_broker(broker: RedisBroker) -> RedisBroker:
    """Make ``broker`` the process's broker, for the lab and for dramatiq."""
    global _broker
    _broker = broker
    dramatiq.set_broker(broker)
    return broker


def setup_broker() -> RedisBroker:
    """The process's broker: built from ``$DRAMATIQ_REDIS_URL`` on the first call.

    The explicit ``dramatiq.set_broker`` matters: without it,
    ``dramatiq.get_broker()`` tries RabbitMQ first and falls back to Redis
    only when pika cannot be imported (Dramatiq issue 483).

    A URL that is not a Redis URL ends the process with one line on stderr
    and exit code 2, whoever imported the experiment (sender, worker, lab).
    """
    if _broker is not None:
        return use_broker(_broker)
    url = redis_url()
    try:
        broker = make_broker(url)
    except ValueError as exc:
        click.echo(f"lab: {URL_ENV}={mask_url(url)!r} is not a Redis URL: {exc}", err=True)
        sys.exit(EXIT_BAD_CONFIG)
    return use_broker(broker)
