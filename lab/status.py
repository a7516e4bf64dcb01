"""``python -m lab status`` and ``python -m lab purge``: read and reset Dramatiq's Redis keys.

The key layout is in lab/keys.py. Both commands use plain Redis commands,
never the broker's Lua ``dispatch`` script: every dispatch writes a heartbeat
for the calling process, so a status read through it would list itself as
a worker.

Queues are found in two places: the keys under ``dramatiq:`` and the actors
the experiments declare (a queue with no message has no key at all).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import NoReturn

import click
import redis
from dramatiq.brokers.redis import RedisBroker
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import experiments
from .broker import (
    DEFAULT_URL, EXIT_UNREACHABLE, MEMORY_URL, UNREACHABLE, URL_ENV, how_to_get_redis, mask_url, use_broker,
)
from .keys import dead_letters, key

# Dramatiq's own rule for queue names (dramatiq/actor.py).
QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
# Longest first: "q.DQ.msgs" must not be read as queue "q.DQ".
SUFFIXES = (".DQ.msgs", ".XQ.msgs", ".msgs", ".DQ", ".XQ")
ACKS = "__acks__."
HEARTBEATS = "__heartbeats__"

EXIT_CODES = "Exit codes: 0 ok; 2 bad arguments, unknown queue or bad URL; 3 Redis unreachable."

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


# -- reading -----------------------------------------------------------------------------


@dataclass
class QueueCounts:
    """How many messages a queue holds, in each state."""

    name: str
    ready: int = 0  # ids in the list <q>: waiting for a worker
    delayed: int = 0  # entries of <q>.DQ.msgs: not due yet (a worker may hold some until due)
    in_flight: int = 0  # ids in every __acks__.<broker id>.<q>: fetched by a worker, not acked yet
    dead: int = 0  # ids in the zset <q>.XQ: dead-lettered


@dataclass
class Heartbeat:
    """One broker id in ``__heartbeats__``: a worker, or a process that sent a message."""

    broker_id: str
    last_seen_ms: int
    alive: bool  # seen within the broker's heartbeat_timeout
    holding: int  # messages in its acks sets: fetched and not acked yet


@dataclass
class DeadLetterRow:
    queue: str
    actor: str
    args: list
    kwargs: dict
    message_id: str
    dead_at_ms: int
    tries: int  # the retries recorded in the stored copy, plus the final try
    why: str


@dataclass
class Snapshot:
    """What ``status`` shows: counts per queue, heartbeats, the newest dead letters."""

    url: str
    taken_at_ms: int
    heartbeat_timeout_ms: int
    queues: list[QueueCounts] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)

    @property
    def alive(self) -> list[Heartbeat]:
        return [h for h in self.heartbeats if h.alive]

    def queue(self, name: str) -> QueueCounts:
        return next(q for q in self.queues if q.name == name)

    def as_dict(self) -> dict:
        return {**asdict(self), "workers_alive": len(self.alive)}


def queue_of(name: str) -> str | None:
    """The queue a key (without its namespace) belongs to; None for acks, heartbeats, others."""
    if name.startswith("__"):
        return None
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name if QUEUE_NAME.fullmatch(name) else None


def _acks_of(name: str) -> tuple[str, str] | None:
    """(broker id, queue) of an ``__acks__.<broker id>.<queue>`` key name; a broker id is a uuid4."""
    if not name.startswith(ACKS):
        return None
    broker_id, _, queue = name[len(ACKS):].partition(".")
    return (broker_id, queue) if queue else None


def _key_names(broker: RedisBroker) -> list[str]:
    """Every key in the broker's namespace, without the namespace (SCAN, not KEYS)."""
    prefix = key(broker, "")
    return [
        (raw.decode() if isinstance(raw, bytes) else raw).removeprefix(prefix)
        for raw in broker.client.scan_iter(match=f"{prefix}*", count=1000)
    ]


def _queues(broker: RedisBroker, names: list[str]) -> list[str]:
    return sorted({q for q in map(queue_of, names) if q is not None} | broker.get_declared_queues())


def queue_names(broker: RedisBroker) -> list[str]:
    """The queues that have keys in Redis, and the ones declared on ``broker``, sorted."""
    return _queues(broker, _key_names(broker))


def why(options: dict) -> str:
    """The last line of the traceback stored in a message, or why there is none.

    Retries stores a traceback in the copy it re-enqueues; the copy that ends in
    the dead letters is the one enqueued before the last try, so its traceback
    is that of the try before the last. A message that never was retried
    (throws=, max_retries=0) has none.
    """
    lines = [line.strip() for line in (options.get("traceback") or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no traceback stored (never retried: throws= or max_retries=0)"


def read_snapshot(broker: RedisBroker, *, newest: int = 5) -> Snapshot:
    """Counts for every queue, every heartbeat, and the ``newest`` dead letters, from Redis as it is now."""
    client = broker.client
    names = _key_names(broker)
    queues = _queues(broker, names)
    acks = [(name, parsed) for name in names if (parsed := _acks_of(name))]

    with client.pipeline(transaction=True) as pipe:  # one MULTI/EXEC: all counts from the same moment
        for queue in queues:
            pipe.llen(key(broker, queue))
            pipe.hlen(key(broker, f"{queue}.DQ.msgs"))
            pipe.zcard(key(broker, f"{queue}.XQ"))
        for name, _ in acks:
            pipe.scard(key(broker, name))
        pipe.zrange(key(broker, HEARTBEATS), 0, -1, withscores=True)
        *replies, beats = pipe.execute()

    counts = {}
    for index, queue in enumerate(queues):
        ready, delayed, dead = replies[3 * index: 3 * index + 3]
        counts[queue] = QueueCounts(queue, ready, delayed, 0, dead)
    holding: dict[str, int] = {}
    for (_, (broker_id, queue)), size in zip(acks, replies[3 * len(queues):]):
        holding[broker_id] = holding.get(broker_id, 0) + size
        if queue in counts:  # acks of "<q>.DQ" are delayed messages a worker holds: counted in delayed
            counts[queue].in_flight += size

    now = int(time.time() * 1000)
    heartbeats = sorted(
        (Heartbeat(broker_id, int(score), now - score < broker.heartbeat_timeout, holding.get(broker_id, 0))
         for broker_id, score in ((b.decode() if isinstance(b, bytes) else b, s) for b, s in beats)),
        key=lambda h: -h.last_seen_ms,
    )
    letters = sorted(
        (DeadLetterRow(q.name, d.message.actor_name, list(d.message.args), dict(d.message.kwargs),
                       d.message.message_id, d.dead_at_ms, d.message.options.get("retries", 0) + 1,
                       why(d.message.options))
         for q in counts.values() if q.dead for d in dead_letters(broker, q.name)),
        key=lambda row: -row.dead_at_ms,
    )[:newest]
    return Snapshot(mask_url(broker.lab_url), now, broker.heartbeat_timeout,
                    list(counts.values()), heartbeats, letters)


# -- showing -----------------------------------------------------------------------------


def _ago(ms: int, now_ms: int) -> str:
    seconds = max(0, now_ms - ms) / 1000
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def render(snapshot: Snapshot) -> Group:
    """The snapshot as rich tables: queues, workers, dead letters."""
    now = snapshot.taken_at_ms
    queues = Table("queue", "ready", "delayed", "in flight", "dead", box=None,
                   title=f"Queues on {snapshot.url}", title_justify="left")
    for q in snapshot.queues:
        queues.add_row(escape(q.name), str(q.ready), str(q.delayed), str(q.in_flight),
                       f"[red]{q.dead}[/]" if q.dead else "0")

    timeout_s = snapshot.heartbeat_timeout_ms / 1000
    workers = Table("broker id", "last seen", "holding", box=None, title_justify="left",
                    title=f"Alive: {len(snapshot.alive)} (a heartbeat in the last {timeout_s:.0f} s)")
    for h in snapshot.alive:
        workers.add_row(h.broker_id, _ago(h.last_seen_ms, now), str(h.holding))
    stale = len(snapshot.heartbeats) - len(snapshot.alive)
    note = Text(
        "Senders show up here too: any process that sends or fetches writes a heartbeat. A worker polls at "
        "least every worker_timeout (1 s by default), so its 'last seen' stays small; a sender's grows."
        + (f" {stale} older id(s) not shown." if stale else ""),
        style="dim",
    )

    letters = Table("when", "queue", "actor", "args", "tries", "why (last stored error)", box=None,
                    title=f"Newest dead letters ({len(snapshot.dead_letters)} shown)", title_justify="left")
    for d in snapshot.dead_letters:
        when = datetime.fromtimestamp(d.dead_at_ms / 1000).strftime("%H:%M:%S")
        args = ", ".join([*map(repr, d.args), *(f"{k}={v!r}" for k, v in d.kwargs.items())])
        letters.add_row(f"{when} ({_ago(d.dead_at_ms, now)})", escape(d.queue), escape(d.actor),
                        escape(args), str(d.tries), escape(d.why))
    return Group(queues, Text(""), workers, note, Text(""), letters)


# -- commands ----------------------------------------------------------------------------


url_option = click.option(
    "--redis", "url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True, metavar="URL",
    help=f"The Redis your workers use (also ${URL_ENV}).",
)


def open_broker(url: str) -> RedisBroker:
    """The lab's broker on ``url`` with every experiment's queues declared; exit 2 or 3 if not."""
    if url == MEMORY_URL:
        raise click.BadParameter(
            f"{MEMORY_URL} lives inside one process, so there is nothing to look at from here; "
            f"give the URL of the Redis your workers use (e.g. `python -m lab serve` and {DEFAULT_URL})",
            param_hint="--redis",
        )
    from .cli import connect  # here, not at the top: lab/cli.py imports this module

    broker = use_broker(connect(url))
    for experiment in experiments.all_experiments():
        try:
            experiments.load(experiment)  # its actors declare their queues on this broker
        except Exception as exc:  # a broken experiment must not hide the others' queues
            err.print(f"lab: skipped {experiment.name}: {type(exc).__name__}: {escape(str(exc))}")
    return broker


@click.command(epilog=EXIT_CODES,
               short_help="Queues, live workers and dead letters; --watch for a live view.")
@url_option
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, metavar="SECONDS",
              help="Time between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="With --watch: stop after N refreshes.")
@click.option("--dead", "newest", type=click.IntRange(min=0), default=5, show_default=True, metavar="N",
              help="How many of the newest dead letters to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --watch: one line per refresh).")
def status(url: str, watch: bool, interval: float, count: int | None, newest: int, as_json: bool) -> None:
    """Queues (ready, delayed, in flight, dead), live workers and the newest dead letters.

    Reads Dramatiq's keys in the Redis at URL with plain commands, so it
    never shows up as a worker itself.
    """
    broker = open_broker(url)
    try:
        if not watch:
            snapshot = read_snapshot(broker, newest=newest)
            if as_json:
                click.echo(json.dumps(snapshot.as_dict(), indent=2))
            else:
                out.print(render(snapshot))
            return
        if as_json:
            _watch_json(broker, interval, count, newest)
        else:
            _watch_live(broker, interval, count, newest)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --watch: that is how it is meant to stop
    except UNREACHABLE:  # Redis went away after it answered
        _unreachable(url)
    finally:
        broker.close()


def _unreachable(url: str) -> NoReturn:
    click.echo(f"lab: {how_to_get_redis(url)}", err=True)
    raise SystemExit(EXIT_UNREACHABLE)


def _refreshes(interval: float, count: int | None):
    """1, 2, ... (up to ``count``), ``interval`` seconds apart."""
    number = 0
    while count is None or number < count:
        if number:
            time.sleep(interval)
        number += 1
        yield number


def _watch_json(broker: RedisBroker, interval: float, count: int | None, newest: int) -> None:
    for _ in _refreshes(interval, count):
        try:
            click.echo(json.dumps(read_snapshot(broker, newest=newest).as_dict()))
        except UNREACHABLE:
            click.echo(json.dumps({"error": how_to_get_redis(broker.lab_url)}))


def _watch_live(broker: RedisBroker, interval: float, count: int | None, newest: int) -> None:
    with Live(console=out, auto_refresh=False) as live:
        for number in _refreshes(interval, count):
            try:
                view = render(read_snapshot(broker, newest=newest))
            except UNREACHABLE:  # the server went away: say so, and keep trying
                view = Text(how_to_get_redis(broker.lab_url), style="red")
            footer = Text(f"refresh {number}, every {interval:g} s; Ctrl-C to stop", style="dim")
            live.update(Group(view, footer), refresh=True)


@click.command(epilog=EXIT_CODES.replace("0 ok;", "0 ok; 1 you answered no;"),
               short_help="Remove the messages waiting in a queue (asks first).")
@click.argument("queue")
@url_option
@click.option("--dead-letters", is_flag=True, help="Also remove the dead letters (QUEUE.XQ).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, url: str, dead_letters: bool, yes: bool) -> None:
    """Remove the messages waiting in QUEUE: ready and delayed (and dead letters with --dead-letters).

    Messages a worker is running are left alone: it finishes them. (Dramatiq's
    own flush() would also delete the dead letters.)
    """
    broker = open_broker(url)
    try:
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
        click.echo(f"Removed {removed} message(s) from {queue}: {describe(found, dead_letters)}."
                   + "".join(f" {note}." for note in notes))
    except UNREACHABLE:  # Redis went away after it answered
        _unreachable(url)
    finally:
        broker.close()


def describe(counts: QueueCounts, dead_letters: bool) -> str:
    parts = [f"{counts.ready} ready", f"{counts.delayed} delayed"]
    if dead_letters:
        parts.append(f"{counts.dead} dead letter(s)")
    return ", ".join(parts)


def purge_queue(broker: RedisBroker, queue: str, *, dead_letters: bool = False) -> QueueCounts:
    """Delete ``queue``'s ready and delayed messages (and its dead letters); return the counts it found.

    One transaction, retried if a worker touches the queue meanwhile. The
    stored copies of in-flight messages stay in ``<q>.msgs``, so their worker
    can still ack them, or dead-letter them if they fail for good.
    """
    ready_list, msgs = key(broker, queue), key(broker, f"{queue}.msgs")
    dq, dq_msgs = key(broker, f"{queue}.DQ"), key(broker, f"{queue}.DQ.msgs")
    xq, xq_msgs = key(broker, f"{queue}.XQ"), key(broker, f"{queue}.XQ.msgs")
    found = QueueCounts(queue)  # in_flight stays 0: those messages are not touched

    def remove(pipe: redis.client.Pipeline) -> None:
        ready_ids = pipe.lrange(ready_list, 0, -1)
        found.ready, found.delayed, found.dead = len(ready_ids), pipe.hlen(dq_msgs), pipe.zcard(xq)
        pipe.multi()
        pipe.delete(ready_list, dq, dq_msgs)
        if ready_ids:
            pipe.hdel(msgs, *ready_ids)
        if dead_letters:
            pipe.delete(xq, xq_msgs)

    broker.client.transaction(remove, ready_list, msgs, dq_msgs, xq)
    return found
