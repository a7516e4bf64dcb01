"""One broker for the whole process, configured by one environment variable.

``$DRAMATIQ_BROKER_URL`` (else ``$DRAMATIQ_REDIS_URL``) says which: ``amqp://`` gives a
RabbitmqBroker (lab/rabbitmq.py), ``redis://`` or ``memory://`` a RedisBroker.

Every experiment calls :func:`setup_broker` at import time, before it declares
its actors. The first call builds the broker and hands it to
``dramatiq.set_broker``; later calls (another experiment loaded by the same
``dramatiq`` worker) get the same broker back, so several experiments share one.
"""

from __future__ import annotations

import logging
import os
import sys

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage, GroupCallbacks, Middleware, MiddlewareError
from dramatiq.rate_limits.backends import RedisBackend as RedisRateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as RedisResultBackend

from .failures import Failure, explain
from .settings import error_stream
from .urls import DEFAULT_NAMESPACE, MEMORY_URL, NAMESPACE_ENV, BadUrl, broker_url, check_url, is_amqp, redact, use_url

_broker: dramatiq.Broker | None = None


def make_client(url: str) -> redis.Redis:
    """A Redis client for ``url``; ``memory://`` gives a new in-process fakeredis server.

    Raises BadUrl for a URL that cannot be a Redis URL. Connects lazily.
    """
    if check_url(url) == MEMORY_URL:
        import fakeredis  # only the embedded broker needs it

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    # A host that never answers fails in 5 s with a clear line, not after the OS's TCP timeout.
    # (A `?socket_connect_timeout=` in the URL wins over this.)
    return redis.Redis.from_url(url, socket_connect_timeout=5)


def is_rabbitmq(broker: dramatiq.Broker) -> bool:
    """Whether ``broker`` is a RabbitmqBroker (without importing pika when no RabbitMQ was ever asked for)."""
    module = sys.modules.get("dramatiq.brokers.rabbitmq")
    return module is not None and isinstance(broker, module.RabbitmqBroker)


def check_redis(broker: dramatiq.Broker) -> None:
    """Ask the broker's server (Redis or RabbitMQ) to answer; raise the Failure that explains why it does not."""
    try:
        if is_rabbitmq(broker):
            from .rabbitmq import check_rabbitmq

            check_rabbitmq(broker)
        else:
            broker.client.ping()
    except Exception as exc:
        failure = explain(exc, broker.lab_url)
        if failure is None:
            raise
        raise failure from None


class RedisUnreachable(Failure, MiddlewareError, BrokerConnectionError):
    """Raised at an in-process worker's boot. A MiddlewareError, so Dramatiq lets it
    through its hooks (it logs and swallows anything else there); a Failure, so the
    lab's commands print its one line and exit with its code."""


class RedisReachable(Middleware):
    """Stop a worker at boot, with one clear line, when its Redis does not answer.

    Without this, a worker started against a dead Redis boots "fine" and then
    logs a connection error every few seconds, forever.
    """

    def after_process_boot(self, broker: RedisBroker) -> None:
        # Sent only by the `dramatiq` CLI, in each worker process, right after it imports
        # the broker. Dramatiq would log a BrokerConnectionError with its traceback; one
        # logged line and SystemExit give the CLI's exit code without it.
        try:
            check_redis(broker)
        except Failure as failure:
            log_boot_error(redact(failure.line, broker.lab_url))
            raise SystemExit(failure.exit_code) from None

    def before_worker_boot(self, broker: RedisBroker, worker: dramatiq.Worker) -> None:
        try:
            check_redis(broker)
        except Failure as failure:
            raise RedisUnreachable(failure.line, failure.exit_code) from None


def log_boot_error(line: str) -> None:
    """Log ``line`` at ERROR as the ``lab`` logger, formatted as the worker's other lines,
    straight to :func:`~lab.settings.error_stream`: the master's log pipe can lose it."""
    record = logging.getLogger("lab").makeRecord("lab", logging.ERROR, __file__, 0, line, None, None)
    formatters = [handler.formatter for handler in logging.getLogger().handlers if handler.formatter]
    handler = logging.StreamHandler(error_stream())
    handler.setFormatter(formatters[0] if formatters else None)  # none with --skip-logging: the line alone
    handler.handle(record)


def make_broker(url: str, *, namespace: str = DEFAULT_NAMESPACE, **options: object) -> dramatiq.Broker:
    """A new broker on ``url``, with everything the experiments use.

    On Redis, results and group callbacks keep their data in the same Redis
    as the queues, through the same client, so ``memory://`` stays one server.
    An ``amqp://`` URL gives a RabbitmqBroker (``options`` go to it: ``max_priority``,
    ``confirm_delivery``), with results in the Redis beside it (lab/rabbitmq.py).
    Raises BadUrl for a URL that cannot work; does not connect.
    """
    if is_amqp(check_url(url)):
        from .rabbitmq import make_rabbitmq_broker  # pika only for who asks for RabbitMQ

        return make_rabbitmq_broker(url, namespace=namespace, reachable=RedisReachable(), **options)
    if options:
        raise TypeError(f"options for RabbitMQ only: {sorted(options)}")
    client = make_client(url)
    broker = RedisBroker(client=client, namespace=namespace)
    broker.add_middleware(CurrentMessage())
    # Readable result keys (<namespace>-results:<queue>:<actor>:<message id>) instead of
    # md5 hashes, so a learner can find them and the lab can clean up after itself.
    results = RedisResultBackend(client=client, namespace=f"{namespace}-results", use_namespace_prefix_keys=True)
    broker.add_middleware(Results(backend=results))
    broker.add_middleware(GroupCallbacks(RedisRateLimiterBackend(client=client)))
    broker.add_middleware(RedisReachable())
    broker.lab_url = url  # so status lines and errors can say where the broker is
    return broker


def connect(url: str, *, namespace: str = DEFAULT_NAMESPACE, **options: object) -> dramatiq.Broker:
    """A broker on ``url`` whose server answers; otherwise the Failure that says why not."""
    broker = make_broker(url, namespace=namespace, **options)
    try:
        check_redis(broker)
    except Failure:
        broker.close()
        raise
    return broker


def use_broker(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Make ``broker`` the process's broker, for the lab and for dramatiq."""
    global _broker
    _broker = broker
    use_url(getattr(broker, "lab_url", MEMORY_URL))  # a StubBroker, say, has no URL: nothing to mask
    dramatiq.set_broker(broker)
    return broker


def setup_broker() -> dramatiq.Broker:
    """The process's broker: built from ``$DRAMATIQ_BROKER_URL`` (else ``$DRAMATIQ_REDIS_URL``) on the first call.

    The explicit ``dramatiq.set_broker`` matters: without it,
    ``dramatiq.get_broker()`` tries RabbitMQ first and falls back to Redis
    only when pika cannot be imported (Dramatiq issue 483).

    A URL that cannot work ends the process with one line on stderr
    and exit code 2, whoever imported the experiment (sender, worker, lab).
    It does not connect: a sender's first command, or a worker's boot, does.
    """
    if _broker is not None:
        return use_broker(_broker)
    url = broker_url()
    try:
        broker = make_broker(url, namespace=os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE)
    except BadUrl as exc:
        failure = explain(exc, url)
        print(f"{os.path.basename(sys.argv[0])}: {failure.line}", file=error_stream())
        sys.exit(failure.exit_code)
    return use_broker(broker)
