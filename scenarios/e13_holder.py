"""A process that takes messages the way a worker does and never acks them, until it is SIGKILLed.

    python scenarios/e13_holder.py amqp://... QUEUE COUNT
    python scenarios/e13_holder.py redis://... QUEUE COUNT NAMESPACE HEARTBEAT_MS

It consumes with Dramatiq's own consumer (prefetch COUNT), says "holding COUNT" on stdout once it
has them in hand, and sleeps. Experiment 13's first lesson kills it and watches what comes back.
"""

import sys
import time

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker


def main(url: str, queue: str, count: str, namespace: str = "", heartbeat_ms: str = "0") -> None:
    if url.startswith("amqp"):
        broker = RabbitmqBroker(url=url)
    else:
        broker = RedisBroker(url=url, namespace=namespace, heartbeat_timeout=int(heartbeat_ms))
    consumer = broker.consume(queue, prefetch=int(count), timeout=100)
    held = []
    while len(held) < int(count):
        if (message := next(consumer)) is not None:
            held.append(message)
    print(f"holding {len(held)}", flush=True)
    while True:
        time.sleep(60)  # until SIGKILL; nothing is ever acked


if __name__ == "__main__":
    main(*sys.argv[1:])
