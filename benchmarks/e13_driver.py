"""One driver process of Experiment 13's throughput bench: consume and ack with no actor, the broker's limit.

    python -m benchmarks.e13_driver URL PREFETCH THREADS OUT.json     # started by benchmarks/e13_throughput.py

On RabbitMQ: pika, one connection, ``basic_qos`` at the prefetch, acking each delivery. On Redis: e10's limit
(``e10_ceilings.drive``), Dramatiq's dispatch script with one fetching thread and THREADS acking threads,
waiting for an ack where the consumer would sleep. Until SIGTERM (RabbitMQ) or an empty queue (Redis); then
it writes the ids it acked, its first start and its last ack (time.time()) to OUT.json.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import dramatiq
import pika

from benchmarks.e13_common import QUEUE, make_broker


def drive(url: str, prefetch: int, threads: int, out: str) -> None:
    """Consume QUEUE at ``prefetch`` until SIGTERM; note the ids, the first start and the last ack in ``out``."""
    ids: list[str] = []
    times: dict[str, float] = {}  # "first": the first delivery's arrival; "last": the last ack
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def note(message_id: str, started: float) -> None:
        ids.append(message_id)
        times.setdefault("first", started)
        times["last"] = time.time()

    if url.startswith("amqp"):
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        for method, _, body in channel.consume(QUEUE, inactivity_timeout=0.1):
            if method is not None:
                started = time.time()
                message = dramatiq.Message.decode(body)  # as Dramatiq's consumer does
                channel.basic_ack(method.delivery_tag)
                note(message.message_id, started)
            if stop.is_set():
                break
        connection.close()
    else:  # e10's driver (benchmarks/e10_ceilings.drive): the consumer's protocol, waiting for an ack, not sleeping
        broker = make_broker(url)
        work: queue.Queue = queue.Queue()
        held, lock = [0], threading.Condition()

        def acker() -> None:
            while (item := work.get()) is not None:
                message, started = item
                broker.do_ack(QUEUE, message.options["redis_message_id"])
                with lock:
                    note(message.message_id, started)
                    held[0] -= 1
                    lock.notify()

        ackers = [threading.Thread(target=acker) for _ in range(threads)]
        for thread in ackers:
            thread.start()
        while not stop.is_set():
            with lock:
                lock.wait_for(lambda: held[0] < prefetch)
                wanted = prefetch - held[0]
            fetched = broker.do_fetch(QUEUE, wanted)
            if not fetched:
                break  # the batch was published before: empty is done
            started = time.time()
            with lock:
                held[0] += len(fetched)
            for data in fetched:
                work.put((dramatiq.Message.decode(data), started))
        for _ in ackers:
            work.put(None)
        for thread in ackers:
            thread.join()
    Path(out).write_text(json.dumps({"ids": ids, "first": times.get("first"), "last": times.get("last")}))


if __name__ == "__main__":
    drive(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
