"""``python -m lab purge``: remove what waits in a queue, in one transaction (lab/keys.py)."""

from __future__ import annotations

import click

from .broker import is_rabbitmq
from .keys import QueueCounts
from .options import redis_option
from .status import EXIT_CODES, open_broker, read_snapshot
from .urls import DEFAULT_URL, mask_url


@click.command(epilog=EXIT_CODES.replace("0 ok;", "0 ok; 1 you answered no;").replace(" (without --watch)", ""),
               short_help="Remove the messages waiting in a queue (asks first).")
@click.argument("queue")
@redis_option(DEFAULT_URL)
@click.option("--dead-letters", is_flag=True, help="Also remove the dead letters (QUEUE.XQ).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, url: str, dead_letters: bool, yes: bool) -> None:
    """Remove the messages waiting in QUEUE: ready and delayed (and dead letters with --dead-letters).

    Messages a worker is running are left alone: it finishes them. (Dramatiq's
    own flush() would also delete the dead letters.) On RabbitMQ it is
    queue.purge of QUEUE and QUEUE.DQ (and QUEUE.XQ): what a worker holds
    stays, the delayed messages it took included.
    """
    broker = open_broker(url)
    try:
        if is_rabbitmq(broker):  # queue.purge on the server: lab/rabbit_status.py
            from .rabbit_status import declare_if_there
            from .rabbit_status import purge_rabbit_queue as purge_queue
            from .rabbit_status import rabbit_queue_names as queue_names

            declare_if_there(broker, queue)  # without the management API, only declared queues are counted
        else:
            from .keys import purge_queue, queue_names
        known = queue_names(broker)
        if queue not in known:
            raise click.BadParameter(f"no queue {queue!r} on {mask_url(url)} (known: {', '.join(known)})",
                                     param_hint="QUEUE")
        before = read_snapshot(broker, newest=0).queue(queue)
        planned = before.ready + before.delayed + (before.dead if dead_letters else 0)
        if planned == 0:
            kept = f" ({before.dead} dead letter(s) kept)" if before.dead else ""
            click.echo(f"Nothing to purge in {queue}{kept}")
            return
        if not yes:
            click.confirm(f"Remove {describe(before, dead_letters)} from {queue} on {mask_url(url)}?",
                          abort=True)
        found = purge_queue(broker, queue, dead_letters=dead_letters)
        removed = found.ready + found.delayed + (found.dead if dead_letters else 0)
        notes = [] if dead_letters or not found.dead else [
            f"{found.dead} dead letter(s) kept (--dead-letters removes them)"]
        if before.in_flight:
            notes.append(f"{before.in_flight} in flight left to their workers")
        elif before.in_flight is None:  # RabbitMQ without its management API: it cannot tell
            notes.append("what workers hold (in flight, and delayed ones they took) is left to them")
        if found.held_delayed:
            notes.append(f"{found.held_delayed} of the delayed were already held in memory by a worker, "
                         "which will still run them when due (stop that worker first to drop them)")
        click.echo(f"Removed {removed} message(s) from {queue}: {describe(found, dead_letters)}."
                   + "".join(f" {note}." for note in notes))
    finally:
        broker.close()


def describe(counts: QueueCounts, dead_letters: bool) -> str:
    parts = [f"{counts.ready} ready", f"{counts.delayed} delayed"]
    if dead_letters:
        parts.append(f"{counts.dead} dead letter(s)")
    return ", ".join(parts)
