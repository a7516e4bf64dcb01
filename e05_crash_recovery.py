"""Experiment 05: crash recovery

Goal: kill workers and Redis on purpose; count what comes back, when, how many times, and what is lost.

Run it, in two terminals (a redis-server first; `python -m lab run e05 --redis URL` plays all of it):

    e05_heartbeat_timeout=2000 e05_maintenance_chance=1000000 dramatiq --threads 4 e05_crash_recovery
    python e05_crash_recovery.py deposit 100 --ms 200  # then `kill -9` a worker process, start it again
    python e05_crash_recovery.py count                 # sent, finished, ran twice, lost; counter vs ledger
    python e05_crash_recovery.py deposit 1 --amount -5 # declined: retried twice, then a dead letter
    python e05_crash_recovery.py poison                # kills each worker that runs it, 3 times at most
    python e05_crash_recovery.py count --reset         # count, then forget what was sent and counted
"""

import os
import signal
import sys
import time
from collections import Counter

import click
import dramatiq
from dramatiq.brokers.redis import MAINTENANCE_SCALE
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage

import lab

broker = lab.setup_broker()

QUEUE = "e05"
# How this process's broker brings back a dead worker's messages: the worker is dead once its heartbeat is
# heartbeat_timeout ms old (60 s); its messages go back on their queue when maintenance runs, on maintenance_chance
# (1000) in a million dispatch calls for that queue. Read only here; they count for every experiment of the process.
SETTINGS = {"e05_heartbeat_timeout": (100, 86_400_000), "e05_maintenance_chance": (0, MAINTENANCE_SCALE)}
for variable, (low, high) in SETTINGS.items():
    if value := os.environ.get(variable):
        if not (value.isdigit() and low <= int(value) <= high):
            print(f"{os.path.basename(sys.argv[0])}: {variable}={value!r} must be a whole number from {low} to {high}",
                  file=sys.stderr)
            sys.exit(lab.EXIT_USAGE)
        setattr(broker, variable.removeprefix("e05_"), int(value))


def key(name: str, on=None) -> str:
    """One of e05's own keys, ``<namespace>-e05:<name>``, apart from the queues' keys."""
    return f"{(on or broker).namespace}-e05:{name}"


class DeliveryLimit(Middleware):
    """Dead-letter, without running it, a message started more than ``max_deliveries`` times: a crash brings
    a message back as it was (``retries`` 0), so Retries never stops one that kills its worker. Starts are
    counted by ``redis_message_id`` (a recovery keeps it, a retry gets a new one), forgotten when one ends."""

    actor_options = {"max_deliveries"}
    logger = dramatiq.get_logger(__name__, "DeliveryLimit")

    def limit(self, broker, message) -> int | None:  # a message's option wins over its actor's
        return message.options.get("max_deliveries", broker.get_actor(message.actor_name).options.get("max_deliveries"))

    def before_process_message(self, broker, message) -> None:
        if limit := self.limit(broker, message):
            counter = key(f"deliveries:{message.options['redis_message_id']}", broker)
            started, _ = broker.client.pipeline().incr(counter).pexpire(counter, broker.dead_message_ttl).execute()
            if started > limit:
                self.logger.warning("%s started %d times and never finished: dead-lettered", message, started - 1)
                message.fail()
                raise SkipMessage(f"started {started - 1} times and never finished")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if self.limit(broker, message):
            broker.client.delete(key(f"deliveries:{message.options['redis_message_id']}", broker))

    after_skip_message = after_process_message


if not any(type(m).__name__ == DeliveryLimit.__name__ for m in broker.middleware):  # once per broker
    broker.add_middleware(DeliveryLimit())


@dramatiq.actor(queue_name=QUEUE, max_retries=2, min_backoff=100, max_backoff=1000)
def deposit(amount: int, ms: int = 0) -> None:
    """Add ``amount`` to a counter (INCRBY: a rerun adds it again) and to a ledger entry keyed by
    the message id (HSET: a rerun writes the same entry), then work ``ms`` more."""
    if amount < 0:
        raise ValueError(f"a deposit of {amount} is declined")
    message_id = CurrentMessage.get_current_message().message_id
    with broker.client.pipeline() as pipe:
        pipe.rpush(key("starts"), f"{message_id} {os.getpid()} {broker.broker_id} {time.time() * 1000:.0f}")
        pipe.incrby(key("counter"), amount).hset(key("ledger"), message_id, amount).execute()
    time.sleep(ms / 1000)  # killed here, both writes are done and the message is not acked
    broker.client.hincrby(key("finished"), message_id, 1)
    deposit.logger.info("deposited %d (%s)", amount, lab.describe_attempt())


@dramatiq.actor(queue_name=QUEUE, max_deliveries=3)
def poison() -> None:
    """Kill this worker process, as the kernel's OOM killer does to a task that takes too much memory."""
    poison.logger.warning("SIGKILL to my own process, %d (%s)", os.getpid(), lab.describe_attempt())
    os.kill(os.getpid(), signal.SIGKILL)


def counts(on=None) -> dict[str, int]:
    """Of the deposits sent: how many finished, ran twice, were lost; the sums they left."""
    redis = (on or broker).client
    sent = {k.decode(): int(v) for k, v in redis.hgetall(key("sent", on)).items()}
    starts = Counter(entry.split()[0] for entry in redis.lrange(key("starts", on), 0, -1))
    finished = len(sent.keys() & {k.decode() for k in redis.hkeys(key("finished", on))})
    return {"sent": len(sent), "finished": finished, "ran twice": sum(n > 1 for n in starts.values()),
            "lost": len(sent) - finished, "sum sent": sum(sent.values()),
            "counter": int(redis.get(key("counter", on)) or 0), "ledger": sum(map(int, redis.hvals(key("ledger", on))))}


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send e05's messages, and count what came of them."""


@main.command("deposit")
@click.argument("n", type=click.IntRange(1, 10_000))
@click.option("--amount", type=click.IntRange(-1000, 1000), default=1, show_default=True,
              help="What each adds; below 0 it is declined: retried twice, then dead-lettered.")
@click.option("--ms", type=click.IntRange(0, 60_000), default=100, show_default=True,
              help="How long each works after its writes: the window for a kill.")
def deposit_command(n: int, amount: int, ms: int) -> None:
    """Send N deposits (1 to 10000)."""
    sent = [deposit.send(amount, ms) for _ in range(n)]
    broker.client.hset(key("sent"), mapping={m.message_id: amount for m in sent})
    click.echo(f"sent {n} x deposit({amount}, {ms})  queue={QUEUE}")


@main.command("poison")
@click.option("--max-deliveries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Dead-letter it when it starts once more; 0: no limit, it comes back forever.")
def poison_command(max_deliveries: int) -> None:
    """Send a message that kills the worker process that runs it."""
    lab.confirm(poison.send_with_options(max_deliveries=max_deliveries))


@main.command("count")
@click.option("--reset", is_flag=True, help="Then forget them: delete e05's own keys (not its queue).")
def count_command(reset: bool) -> None:
    """Count what came of the deposits sent: finished, ran twice, lost; the counter and the ledger."""
    click.echo("\n".join(f"{name:>9}  {value}" for name, value in counts().items()))
    if reset:
        broker.client.delete(*(key(name) for name in ("sent", "starts", "finished", "counter", "ledger")))


if __name__ == "__main__":
    sys.exit(main())
