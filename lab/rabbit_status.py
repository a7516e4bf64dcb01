"""``python -m lab status`` and ``purge`` on RabbitMQ: what Dramatiq keeps on the server, read, then shown.

Dramatiq's RabbitmqBroker makes three durable queues for a queue ``q``: ``q`` (ready), ``q.DQ``
(delayed: a worker consumes them at once and holds them, unacked, until they are due) and
``q.XQ`` (dead letters, expired by the server after 7 days). So on RabbitMQ:

- ready is ``q``'s ready count; in flight is ``q``'s unacknowledged count;
- delayed is ``q.DQ``'s ready and unacknowledged counts together (held by a worker, or not);
- dead is ``q.XQ``'s count; consumers are ``q``'s consumers (one a worker process and queue).

Two ways to read them, and why both: the management plugin's HTTP API knows every count
(unacknowledged ones and consumers included) and lists the queues, but it is a plugin that
may be off, on a port of its own, and its figures are samples (every
``collect_statistics_interval``, 5 s by default). AMQP alone needs nothing but the broker's URL
and is exact at the moment it asks, but a passive ``queue.declare`` answers only the ready
messages and the consumers: it cannot see what a worker holds. So status asks the management
API first and, when it does not answer, falls back to AMQP and says what it cannot count.
RabbitMQ has no heartbeats to read: its consumers are the workers.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

import pika
import pika.exceptions
from dramatiq import Message
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .keys import DeadLetter, QueueCounts
from .rabbitmq import LabRabbitmqBroker, management, quote_vhost
from .status import Snapshot
from .urls import mask_url

#: Where the management HTTP API is (``http://USER:PASSWORD@HOST:PORT``); unset: the broker's host on
#: port 15672, with the broker URL's user and password. ``python -m lab rabbitmq`` prints its own.
MANAGEMENT_ENV = "LAB_RABBITMQ_MANAGEMENT_URL"
MANAGEMENT_PORT = 15672
#: The errors that mean the RabbitMQ went away while a --watch or the dashboard runs.
GONE = (pika.exceptions.AMQPError,)


@dataclass
class RabbitQueueCounts(QueueCounts):
    """A queue's counts on RabbitMQ. Through AMQP alone, in flight is None (it cannot count what workers hold)
    and delayed counts only the delayed messages no worker took yet."""

    consumers: int = 0


@dataclass
class RabbitSnapshot(Snapshot):
    """What ``status`` shows on RabbitMQ: counts and consumers per queue, and how they were read."""

    broker: str = "rabbitmq"
    via: str = ""  # "management API at ..." or "AMQP only (...)"
    dead_letters_note: str = "On RabbitMQ the dead letters are counted, not listed (reading one means taking it)."
    queues: list[RabbitQueueCounts] = field(default_factory=list)

    def as_dict(self) -> dict:
        # No heartbeats on RabbitMQ: the consumers are the workers, and no sender shows up.
        return {**super().as_dict(), "workers_alive": None, "consumers": sum(q.consumers for q in self.queues)}


def management_url(amqp_url: str) -> str:
    """The management API for the RabbitMQ at ``amqp_url``: ``$LAB_RABBITMQ_MANAGEMENT_URL``, else port 15672."""
    if os.environ.get(MANAGEMENT_ENV):
        return os.environ[MANAGEMENT_ENV]
    parts = urlsplit(amqp_url)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{MANAGEMENT_PORT}"


def base_of(name: str) -> str:
    return name[:-3] if name.endswith((".DQ", ".XQ")) else name


def _by_management(broker: LabRabbitmqBroker, vhost: str) -> tuple[dict[str, dict], str] | str:
    """Every queue of ``vhost`` as the management API sees it, and where it is; or why it did not answer."""
    base = management_url(broker.lab_url)
    where = mask_url(base)
    try:
        listed = management(base, "GET", f"/api/queues/{quote_vhost(vhost)}"
                            "?columns=name,messages_ready,messages_unacknowledged,consumers", timeout=2)
    except urllib.error.HTTPError as exc:
        return f"the management API at {where} said {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:  # nothing listening, a timeout, not JSON
        return f"no management API answered at {where}: {getattr(exc, 'reason', exc)}"
    return {q["name"]: q for q in listed}, where


@contextmanager
def _quiet_404s() -> Iterator[None]:
    """pika logs a WARNING for each channel the server closes; a missing queue's 404 is an answer here."""
    logger = logging.getLogger("pika.channel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def amqp_counts(broker: LabRabbitmqBroker, names: list[str]) -> dict[str, dict]:
    """A passive ``queue.declare`` of each name: its ready messages and consumers (absent: no such queue)."""
    found: dict[str, dict] = {}
    with _quiet_404s(), closing(pika.BlockingConnection(broker.parameters)) as connection:
        channel = connection.channel()
        for name in names:
            try:
                ok = channel.queue_declare(queue=name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue; the server closed the channel
                channel = connection.channel()
                continue
            found[name] = {"messages_ready": ok.message_count, "messages_unacknowledged": None,
                           "consumers": ok.consumer_count}
    return found


def rabbit_dead_letters(broker: LabRabbitmqBroker, queue_name: str) -> list[DeadLetter]:
    """The messages in ``<queue_name>.XQ``, oldest first: each taken unacknowledged, read, and given back when the
    connection closes (RabbitMQ cannot read a message without taking it). When each died: its ``x-death`` time."""
    letters = []
    with _quiet_404s(), closing(pika.BlockingConnection(broker.parameters)) as connection:
        channel = connection.channel()
        try:
            while (got := channel.basic_get(f"{queue_name}.XQ"))[0] is not None:
                deaths = (got[1].headers or {}).get("x-death") or [{}]
                died = deaths[0].get("time")
                letters.append(DeadLetter(Message.decode(got[2]), int(died.timestamp() * 1000) if died else 0))
        except pika.exceptions.ChannelClosedByBroker:  # 404: no such queue, so no dead letters
            return []
    return letters


def read_rabbit_snapshot(broker: LabRabbitmqBroker) -> RabbitSnapshot:
    """Counts and consumers of every queue (the declared ones and those on the server), as they are now."""
    vhost = broker.parameters.virtual_host
    listed = _by_management(broker, vhost)
    if isinstance(listed, tuple):
        server, where = listed
        via = f"management API at {where} (sampled, every 5 s by default)"
    else:
        names = sorted(broker.get_declared_queues())
        server = amqp_counts(broker, [n for q in names for n in (q, f"{q}.DQ", f"{q}.XQ")])
        via = f"AMQP only ({listed}): in flight unknown, delayed counts only those no worker holds"
    bases = sorted({base_of(name) for name in server} | broker.get_declared_queues())

    def count(name: str, column: str) -> int | None:
        return server.get(name, {}).get(column, 0)

    queues = [
        RabbitQueueCounts(q, ready=count(q, "messages_ready"), in_flight=count(q, "messages_unacknowledged"),
                          delayed=count(f"{q}.DQ", "messages_ready") + (count(f"{q}.DQ", "messages_unacknowledged")
                                                                        or 0),
                          dead=count(f"{q}.XQ", "messages_ready"), consumers=count(q, "consumers") or 0)
        for q in bases
    ]
    return RabbitSnapshot(mask_url(broker.lab_url), int(time.time() * 1000), 0, queues, [], [], via=via)


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


def render_rabbit(snapshot: RabbitSnapshot) -> Group:
    """The snapshot as a rich table: busy queues first, idle ones folded into one line, then how it was read."""
    busy = [q for q in snapshot.queues if q.ready or q.delayed or q.in_flight or q.dead or q.consumers]
    busy.sort(key=lambda q: (-(q.ready + (q.in_flight or 0) + q.dead), q.name))
    idle = [q.name for q in snapshot.queues if q not in busy]
    table = Table("queue", "ready", "delayed", "in flight", "dead", "consumers", box=None,
                  title=f"Queues on {snapshot.url}", title_justify="left")
    for q in busy:
        table.add_row(escape(q.name), str(q.ready), _n(q.delayed), _n(q.in_flight),
                      f"[red]{q.dead}[/]" if q.dead else "0", str(q.consumers))
    folded = Text(f"{len(idle)} idle queue(s): {', '.join(idle)}" if idle else "", style="dim")
    consumers = sum(q.consumers for q in snapshot.queues)
    note = Text(f"Read through the {snapshot.via}. {consumers} consumer(s): on RabbitMQ a worker process consumes "
                f"each of its queues; there are no heartbeats to list. {snapshot.dead_letters_note}", style="dim")
    return Group(table, folded, Text(""), note)


def rabbit_queue_names(broker: LabRabbitmqBroker) -> list[str]:
    """The queues declared on ``broker`` and those the server has (through the management API, if it answers)."""
    return [q.name for q in read_rabbit_snapshot(broker).queues]


def declare_if_there(broker: LabRabbitmqBroker, queue: str) -> None:
    """Declare ``queue`` on ``broker`` (here, not on the server) if the server has it, so a snapshot counts it."""
    if queue in amqp_counts(broker, [queue]) and queue == base_of(queue):
        broker.declare_queue(queue)


def purge_rabbit_queue(broker: LabRabbitmqBroker, queue: str, *, dead_letters: bool = False) -> QueueCounts:
    """``queue.purge`` of ``queue`` and ``queue.DQ`` (and ``queue.XQ``): the counts of what was removed.

    RabbitMQ purges only the messages no consumer holds: in flight ones stay with their workers,
    and so do the delayed ones a worker already took (it still runs them when due).
    """
    found = QueueCounts(queue)
    with _quiet_404s(), closing(pika.BlockingConnection(broker.parameters)) as connection:
        channel = connection.channel()
        for name, column in ((queue, "ready"), (f"{queue}.DQ", "delayed"), (f"{queue}.XQ", "dead")):
            if column == "dead" and not dead_letters:
                continue
            try:
                setattr(found, column, channel.queue_purge(name).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:  # 404: that queue was never made
                channel = connection.channel()
    return found
