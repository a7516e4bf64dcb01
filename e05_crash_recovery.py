"""Experiment 05: crash recovery

Goal: kill workers and Redis on purpose; count what comes back, when, how many times, and what is lost.

Run it, in three terminals (`python -m lab run e05 --redis URL` plays all of it, scripted):

    redis-server --save ''                             # terminal 0 (or: python -m lab serve)
    e05_heartbeat_timeout=2000 e05_maintenance_chance=1000000 dramatiq --processes 2 --threads 4 e05_crash_recovery
    python e05_crash_recovery.py deposit 100           # terminal 2: 2 s each, about 25 s on terminal 1's 8 threads
    kill -9 4242                                       # at once: a PID from a "deposited" line of terminal 1
    python e05_crash_recovery.py count                 # not finished yet, 0 lost; start terminal 1 again
    python e05_crash_recovery.py count                 # once all finished: 0 lost, the counter above the ledger
    python e05_crash_recovery.py deposit 1 --amount -5 # declined: retried twice, then in the dead letters
    python e05_crash_recovery.py poison                # kills each worker process that runs it, 3 at most
    python e05_crash_recovery.py count --reset         # count, then forget what was sent
"""

import os
import signal
import sys
import time
from collections import Counter

import lab

import click
import dramatiq
from dramatiq.brokers.redis import MAINTENANCE_SCALE
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage

broker = lab.setup_broker()
QUEUE = "e05"
# A worker is dead once its heartbeat is heartbeat_timeout ms old (60 s); maintenance, drawn on maintenance_chance
# (1000) in a million dispatch calls for a queue, puts its messages back. Read only here; set for the whole process.
SETTINGS = {"e05_heartbeat_timeout": (100, 86_400_000), "e05_maintenance_chance": (0, MAINTENANCE_SCALE)}
for variable, (low, high) in SETTINGS.items():
    if (value := lab.settings.whole_number(variable, low, high)) is not None:  # else: one line and exit 2
        setattr(broker, variable.removeprefix("e05_"), value)


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
    deposit.logger.info("deposited %d (%s)", amount, lab.describe_attempt())  # the CLI's log line says [PID n]


@dramatiq.actor(queue_name=QUEUE, max_deliveries=3)
def poison() -> None:
    """Kill this worker process, as the kernel's OOM killer does to a task that takes too much memory."""
    poison.logger.warning("SIGKILL to my own process, %d (%s)", os.getpid(), lab.describe_attempt())
    os.kill(os.getpid(), signal.SIGKILL)


def counts(on=None) -> dict[str, int]:
    """Of the deposits sent: finished, not finished yet (queued, delayed, in flight), in the dead letters, lost
    (nowhere, never finished), ran twice or more; then the sum of the finished, the counter, the ledger."""
    with (on := on or broker).client.pipeline() as pipe:  # one snapshot (MULTI): none seen moving
        pipe.hgetall(key("sent", on)).hkeys(key("finished", on)).get(key("counter", on)).hvals(key("ledger", on))
        pipe.lrange(key("starts", on), 0, -1)
        for queue in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):  # stored by redis id: queued or in flight, delayed, dead
            pipe.hvals(f"{on.namespace}:{queue}.msgs")
        sent, finished, counter, ledger, starts, *stored = pipe.execute()
    sent = {k.decode(): int(v) for k, v in sent.items()}  # by message id, which a retry keeps (not its redis id)
    queued, delayed, dead = ({dramatiq.Message.decode(m).message_id for m in each} & sent.keys() for each in stored)
    finished = sent.keys() & {k.decode() for k in finished}
    waiting = (queued | delayed) - finished
    dead -= finished | waiting
    runs = Counter(entry.split()[0] for entry in starts)
    return {"sent": len(sent), "finished": len(finished), "not finished yet": len(waiting), "dead letters": len(dead),
            "lost": len(sent.keys() - finished - waiting - dead), "ran twice": sum(n > 1 for n in runs.values()),
            "sum finished": sum(map(sent.get, finished)), "counter": int(counter or 0), "ledger": sum(map(int, ledger))}


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP)
def main() -> None:
    """Send e05's messages, and count what came of them."""


@main.command("deposit")
@click.argument("n", type=click.IntRange(1, 10_000))
@click.option("--amount", type=click.IntRange(-1000, 1000), default=1, show_default=True,
              help="What each adds; below 0 it is declined: retried twice, then dead-lettered.")
@click.option("--ms", type=click.IntRange(0, 60_000), default=2000, show_default=True,
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
    """Count what came of the deposits sent, and list the worker processes (pids) that started them."""
    click.echo("\n".join(f"{name:>16}  {value}" for name, value in counts().items()))
    pids = Counter(entry.split()[1].decode() for entry in broker.client.lrange(key("starts"), 0, -1))
    click.echo(f"{'starts by pid':>16}  " + (", ".join(f"{pid}: {n}" for pid, n in pids.items()) or "none"))
    if reset:
        broker.client.delete(*(key(name) for name in ("sent", "starts", "finished", "counter", "ledger")))


if __name__ == "__main__":
    sys.exit(main())
