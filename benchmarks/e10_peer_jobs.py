"""The same two jobs for Dramatiq, RQ, Huey and Celery: what each library's workers import (``e10_peers``).

Each job stamps its index and start time onto one Redis list (one RPUSH, the same for all four
libraries), so the bench sees when every job ran, and that each ran once. ``noop`` does nothing
else; ``sleeps`` then sleeps ``ms`` milliseconds, as a call to a slow API would.

The environment says which library this process serves (``E10_PEER``), on which Redis
(``E10_PEER_URL``) and queue (``E10_PEER_QUEUE``, also the namespace of the run's keys).
"""

from __future__ import annotations

import os
import time

import redis

LIBRARY = os.environ.get("E10_PEER", "")
URL = os.environ.get("E10_PEER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("E10_PEER_QUEUE", "e10-peers")
DONE = f"{QUEUE}:done"
_stamps = redis.Redis.from_url(URL)


def noop(index: int) -> None:
    _stamps.rpush(DONE, f"{index} {time.time()}")


def sleeps(index: int, ms: int) -> None:
    _stamps.rpush(DONE, f"{index} {time.time()}")
    time.sleep(ms / 1000)


if LIBRARY == "dramatiq":
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=URL, namespace=QUEUE)
    dramatiq.set_broker(broker)
    jobs = {"noop": dramatiq.actor(noop, queue_name=QUEUE), "sleeps": dramatiq.actor(sleeps, queue_name=QUEUE)}

    def enqueue(kind: str, *args: int) -> None:
        jobs[kind].send(*args)

elif LIBRARY == "huey":
    from huey import RedisHuey

    huey = RedisHuey(QUEUE, url=URL, results=False)
    jobs = {"noop": huey.task()(noop), "sleeps": huey.task()(sleeps)}

    def enqueue(kind: str, *args: int) -> None:
        jobs[kind](*args)

elif LIBRARY == "celery":
    from celery import Celery

    app = Celery(QUEUE, broker=URL)
    app.conf.task_default_queue = QUEUE
    app.conf.worker_hijack_root_logger = False
    jobs = {"noop": app.task(noop, name="noop", ignore_result=True),
            "sleeps": app.task(sleeps, name="sleeps", ignore_result=True)}

    def enqueue(kind: str, *args: int) -> None:
        jobs[kind].delay(*args)

elif LIBRARY == "rq":
    from rq import Queue

    queue = Queue(QUEUE, connection=redis.Redis.from_url(URL))

    def enqueue(kind: str, *args: int) -> None:
        # no result kept, as Huey (results=False), Celery (ignore_result) and Dramatiq (no backend) do here
        queue.enqueue(f"benchmarks.e10_peer_jobs.{kind}", *args, result_ttl=0)
