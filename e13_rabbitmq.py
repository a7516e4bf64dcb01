"""Experiment 13: RabbitMQ beside Redis

Goal: see where the two brokers differ (a killed worker, priority, queue arguments, dead letters, join, a lost queue).

Run it against a RabbitMQ (a private one: `python -m lab rabbitmq` prints its URL), in two terminals:

    export DRAMATIQ_BROKER_URL=amqp://guest:guest@127.0.0.1:PORT/%2F
    dramatiq --threads 1 e13_rabbitmq              # the worker (1 thread: the order is easy to read)
    python e13_rabbitmq.py work 10 --ms 2000       # ten slow jobs; kill -9 the worker's PIDs, start it again:
                                                   #   the jobs come back at once, marked redelivered
    e13_max_priority=10 python e13_rabbitmq.py greet --priority 9   # jumps the undelivered jobs (RabbitMQ only)
    e13_max_priority=5 python e13_rabbitmq.py greet                 # 406 PRECONDITION_FAILED: the queue has 10
    python e13_rabbitmq.py fail                    # no retries: straight to e13.XQ, kept dramatiq_dead_message_ttl

`python -m lab run e13 --broker amqp://...` plays every lesson on that RabbitMQ and on Redis, side by side, and
starts private servers for the rest (consumer_timeout, a restart, throughput: scenarios/e13_rabbitmq_servers.py).
Set e13_max_priority the same for the worker and the sender: it is fixed when the queue is first declared.
"""

import sys
import time

import lab

import click
import dramatiq
import pika
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage

broker = lab.setup_broker()
QUEUE = "e13"
# RabbitMQ orders a queue by per-message priority only if the queue was declared with x-max-priority, which the
# broker sets on every queue it declares from then on (RabbitmqBroker(max_priority=N)). Read only here.
MAX_PRIORITY = lab.settings.whole_number("e13_max_priority", 1, 255)  # else: one line and exit 2
if MAX_PRIORITY is not None and hasattr(broker, "max_priority"):  # a RedisBroker has no such thing
    broker.max_priority = MAX_PRIORITY


def delivery() -> str:
    """How this message came: RabbitMQ marks a message it delivers again after a lost connection; Redis cannot."""
    redelivered = getattr(CurrentMessage.get_current_message(), "redelivered", None)
    return "no redelivered flag on Redis" if redelivered is None else f"redelivered={redelivered}"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def slow_job(n: int, ms: int = 2000) -> None:
    """A slow job: kill the worker while it runs, and watch it come back."""
    slow_job.logger.info("job %d starts (%s)", n, delivery())
    time.sleep(ms / 1000)
    slow_job.logger.info("job %d done", n)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def greeting(name: str) -> None:
    """Where it runs among the jobs depends on broker_priority (RabbitMQ) and on what the worker already holds."""
    greeting.logger.warning("hello, %s (%s)", name, delivery())


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def doomed() -> None:
    """Fails with no retry left: a dead letter, in e13.XQ."""
    raise RuntimeError("a dead letter on purpose")


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send e13's messages to the broker of $DRAMATIQ_BROKER_URL."""


def send(actor: dramatiq.Actor, *args: object, **options: object) -> None:
    try:
        lab.confirm(actor.send_with_options(args=args, **options))
    except ConnectionClosed as exc:
        if not isinstance(exc.message, pika.exceptions.ChannelClosedByBroker):
            raise  # a refused login or no server at all: the lab says which, with its exit code
        # RabbitMQ closed the channel, and only the channel: a 406 on declare, say
        raise lab.Failure(f"RabbitMQ refused it: {exc}", lab.EXIT_FAILED) from None


@main.command("work")
@click.argument("count", type=click.IntRange(1, 10_000))
@click.option("--ms", type=click.IntRange(0, 600_000), default=2000, show_default=True, help="How long each job runs.")
def send_work(count: int, ms: int) -> None:
    """Send COUNT slow jobs."""
    for n in range(count):
        send(slow_job, n, ms)


@main.command("greet")
@click.option("--priority", type=click.IntRange(0, 255), default=None, help="broker_priority: higher goes first.")
@click.option("--name", default="learner", show_default=True)
def send_greet(priority: int | None, name: str) -> None:
    """Send one greeting, with a broker priority if given (needs e13_max_priority on RabbitMQ; Redis ignores it)."""
    send(greeting, name, **({} if priority is None else {"broker_priority": priority}))


@main.command("fail")
def send_fail() -> None:
    """Send one message that fails at once: it goes to e13.XQ."""
    send(doomed)


if __name__ == "__main__":
    sys.exit(main())
