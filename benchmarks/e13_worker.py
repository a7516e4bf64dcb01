"""Experiment 13's drain actor, for ``dramatiq benchmarks.e13_worker``: e10's no-op, on RabbitMQ or Redis.

e10_throughput's own actors keep their tally in Redis, which a RabbitMQ run does not have; this module keeps
it in memory and writes it, when the worker stops, to a JSON file per process in ``E13_BENCH_OUT``: the
message ids it ran, and when its first run started and its last ended (time.time()), so a drain is timed
by the workers' own clocks and every message can be counted once.

The broker comes from ``E13_BENCH_URL``: ``amqp://`` gives a RabbitmqBroker, ``redis://`` a RedisBroker.
"""

import json
import os
import threading
import time

import dramatiq
from dramatiq.middleware import Middleware

from benchmarks.e13_common import OUT_ENV, QUEUE, URL_ENV, make_broker


class Tally(Middleware):
    """What ran in this process: ids, first start, last end; written to a file when the worker stops."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.first: float | None = None
        self.last: float | None = None

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        now = time.time()
        with self.lock:
            self.first = now if self.first is None else self.first

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *, result=None,
                              exception=None) -> None:
        now = time.time()
        with self.lock:
            self.ids.append(message.message_id)
            self.last = now

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        out = os.environ.get(OUT_ENV)
        if out:
            with self.lock, open(os.path.join(out, f"worker-{os.getpid()}.json"), "w") as f:
                json.dump({"ids": self.ids, "first": self.first, "last": self.last}, f)


broker = make_broker(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
broker.add_middleware(Tally())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def does_nothing(batch: str) -> None:
    """e10's no-op: the drain measures the broker and Dramatiq, not the work."""
