"""What Experiment 13's throughput bench and its worker module share: the queue, the variables, the broker."""

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

URL_ENV, OUT_ENV = "E13_BENCH_URL", "E13_BENCH_OUT"
QUEUE = "e13-drain"


def make_broker(url: str) -> dramatiq.Broker:
    """``amqp://`` gives a RabbitmqBroker, anything else a RedisBroker: Dramatiq's own, no lab middleware."""
    return RabbitmqBroker(url=url) if url.startswith("amqp") else RedisBroker(url=url)
