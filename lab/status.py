"""``python -m lab status``: what Dramatiq keeps in Redis, read, then shown.

The key layout, and the counting, are in lab/keys.py. Status reads with plain
Redis commands, never the broker's Lua ``dispatch`` script: every dispatch
writes a heartbeat for the calling process, so a status read through it would
list itself as a worker.

Queues are found in two places: the keys under ``dramatiq:`` and the actors
the experiments declare (a queue with no message has no key at all).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime

import click
from dramatiq.brokers.redis import RedisBroker
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import experiments
from .broker import connect, is_rabbitmq, use_broker
from .failures import UNREACHABLE, how_to_get_redis
from .keys import QueueCounts, count_queues, dead_letters, key_names
from .options import Seconds, redis_option
from .urls import DEFAULT_URL, MEMORY_URL, mask_url

EXIT_CODES = ("Exit codes: 0 ok; 2 bad arguments or URL, or memory://; 3 Redis unreachable; "
              "5 Redis refused the password; 130 Ctrl-C (without --watch).")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


# -- reading -----------------------------------------------------------------------------


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
    """Counts for every queue, every heartbeat, and the ``newest`` dead letters, from Redis as it is now.

    On RabbitMQ, counts and consumers per queue (lab/rabbit_status.py): it has no heartbeats, and
    its dead letters can be counted but not read without taking them.
    """
    if is_rabbitmq(broker):
        from .rabbit_status import read_rabbit_snapshot  # pika only for who asks for RabbitMQ

        return read_rabbit_snapshot(broker)
    counts, holding, beats = count_queues(broker, key_names(broker))

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


def _busy(q: QueueCounts) -> bool:
    return bool(q.ready or q.delayed or q.in_flight or q.dead)


#: Lines the view spends on titles, headers, notes and gaps, whatever the data: 3 tables of 2, the idle
#: queues' line, 2 gaps, the workers' note and the watch footer.
FIXED_LINES = 11


def fit(busy: int, workers: int, letters: int, height: int | None) -> tuple[int, int, int]:
    """How many of the ``busy`` queues, ``workers`` and dead ``letters`` to show in ``height`` lines (None: all).

    The workers and the dead letters are what a watcher watches, so they keep up to 3 rows each; the
    busy queues get the rest, and whatever does not fit is counted in one line.
    """
    if height is None:
        return busy, workers, letters
    room = max(0, height - FIXED_LINES)
    kept_workers, kept_letters = min(workers, 3), min(letters, 3)
    queues = min(busy, max(1, room - kept_workers - kept_letters))
    room -= queues  # what the queues leave goes back to the workers and the dead letters
    kept_workers = min(workers, max(kept_workers, room - kept_letters))
    kept_letters = min(letters, max(kept_letters, room - kept_workers))
    return queues, kept_workers, kept_letters


def render(snapshot: Snapshot, size: tuple[int, int] | None = None) -> Group:
    """The snapshot as rich tables: queues (busy ones first, idle ones folded into one line), workers, dead
    letters. With ``size`` (a live view's columns and lines), rows are cut to fit, each row kept to one line."""
    if getattr(snapshot, "broker", "redis") == "rabbitmq":
        from .rabbit_status import render_rabbit

        return render_rabbit(snapshot)
    width, height = size or (0, None)
    now = snapshot.taken_at_ms
    busy = sorted((q for q in snapshot.queues if _busy(q)), key=lambda q: (-(q.ready + q.in_flight + q.dead), q.name))
    idle = [q.name for q in snapshot.queues if not _busy(q)]
    n_queues, n_workers, n_letters = fit(len(busy), len(snapshot.alive), len(snapshot.dead_letters), height)
    queues = Table("queue", "ready", "delayed", "in flight", "dead", box=None,
                   title=f"Queues on {snapshot.url}", title_justify="left")
    for q in busy[:n_queues]:
        queues.add_row(escape(q.name), str(q.ready), str(q.delayed), str(q.in_flight),
                       f"[red]{q.dead}[/]" if q.dead else "0")
    folded = Text(f"{len(idle)} idle queue(s): {', '.join(idle)}" if idle else "", style="dim",
                  no_wrap=bool(height), overflow="ellipsis")
    if len(busy) > n_queues:
        folded = Text(f"... and {len(busy) - n_queues} more busy queue(s); ", style="dim") + folded

    timeout_s = snapshot.heartbeat_timeout_ms / 1000
    workers = Table("broker id", "last seen", "holding", box=None, title_justify="left",
                    title=f"Alive: {len(snapshot.alive)} (a heartbeat in the last {timeout_s:.0f} s)")
    for h in snapshot.alive[:n_workers]:
        workers.add_row(h.broker_id, _ago(h.last_seen_ms, now), str(h.holding))
    stale = len(snapshot.heartbeats) - len(snapshot.alive)
    more = len(snapshot.alive) - n_workers
    note = Text(
        (f"... and {more} more alive. " if more > 0 else "")
        + ("Senders count too: a worker's 'last seen' stays under a second, a sender's grows." if height else
           "Senders show up here too: any process that sends or fetches writes a heartbeat. A worker polls at "
           "least every worker_timeout (1 s by default), so its 'last seen' stays small; a sender's grows.")
        + (f" {stale} older id(s) not shown." if stale else ""),
        style="dim", no_wrap=bool(height), overflow="ellipsis",
    )

    letters = Table("when", "queue", "actor", "args", "tries", "why (last stored error)", box=None,
                    title=f"Newest dead letters ({n_letters} shown)", title_justify="left")
    if height:  # one line a row: the short columns get fixed widths, the error what they leave
        widths = (8, 8, 12, 12, 5)
        for column, fixed in zip(letters.columns, (*widths, max(10, width - sum(widths) - 12)), strict=True):
            column.no_wrap, column.overflow, column.width = True, "ellipsis", fixed
    for d in snapshot.dead_letters[:n_letters]:
        when = datetime.fromtimestamp(d.dead_at_ms / 1000).strftime("%H:%M:%S")
        args = ", ".join([*map(repr, d.args), *(f"{k}={v!r}" for k, v in d.kwargs.items())])
        letters.add_row(when if height else f"{when} ({_ago(d.dead_at_ms, now)})", escape(d.queue),
                        escape(d.actor), escape(args), str(d.tries), escape(d.why))
    return Group(queues, folded, Text(""), workers, note, Text(""), letters)


# -- the command -------------------------------------------------------------------------


def open_broker(url: str) -> RedisBroker:
    """The lab's broker on ``url``, with every experiment's queues declared on it."""
    if url == MEMORY_URL:
        raise click.BadParameter(
            f"{MEMORY_URL} lives inside one process, so there is nothing to look at from here; "
            f"give the URL of the Redis your workers use (e.g. `python -m lab serve` and {DEFAULT_URL})",
            param_hint="--redis",
        )
    broker = use_broker(connect(url))
    for experiment in experiments.all_experiments():
        try:
            experiments.load(experiment)  # its actors declare their queues on this broker
        except Exception as exc:  # a broken experiment must not hide the others' queues
            err.print(f"lab: skipped {experiment.name}: {type(exc).__name__}: {escape(str(exc))}")
    return broker


@click.command(epilog=EXIT_CODES.replace("(without --watch)", "(--watch: 0, the way to stop it)"),
               short_help="Queues, live workers and dead letters; --watch for a live view.")
@redis_option(DEFAULT_URL)
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=Seconds(0.2, 3600), default=1.0, show_default=True, metavar="SECONDS",
              help="Time between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), metavar="N",
              help="With --watch: stop after N refreshes.")
@click.option("--dead", "newest", type=click.IntRange(min=0), default=5, show_default=True, metavar="N",
              help="How many of the newest dead letters to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --watch: one line per refresh).")
def status(url: str, watch: bool, interval: float, count: int | None, newest: int, as_json: bool) -> None:
    """Queues (ready, delayed, in flight, dead), live workers and the newest dead letters.

    Reads Dramatiq's keys in the Redis at URL with plain commands, so it
    never shows up as a worker itself. On RabbitMQ (an amqp:// URL): ready,
    delayed, in flight, dead and consumers per queue, from the management
    API ($LAB_RABBITMQ_MANAGEMENT_URL, else port 15672), else from AMQP alone
    (ready and consumers only; the output says which).
    """
    broker = open_broker(url)
    try:
        if not watch:
            snapshot = read_snapshot(broker, newest=newest)
            if as_json:
                click.echo(json.dumps(snapshot.as_dict(), indent=2))
            else:
                out.print(render(snapshot))
        elif as_json:
            _watch_json(broker, interval, count, newest)
        else:
            _watch_live(broker, interval, count, newest)
    except KeyboardInterrupt:
        if not watch:
            raise
        # Ctrl-C ends --watch: that is how it is meant to stop, so it exits 0
    finally:
        broker.close()


def gone(broker: RedisBroker) -> tuple[type[BaseException], ...]:
    """What reading raises when the broker's server went away: redis-py's errors, and pika's on RabbitMQ."""
    if is_rabbitmq(broker):
        from .rabbit_status import GONE

        return UNREACHABLE + GONE
    return UNREACHABLE


def _refreshes(interval: float, count: int | None) -> Iterator[int]:
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
        except gone(broker):  # the server went away: say so, and keep trying
            click.echo(json.dumps({"error": how_to_get_redis(broker.lab_url)}))


def _watch_live(broker: RedisBroker, interval: float, count: int | None, newest: int) -> None:
    with Live(console=out, auto_refresh=False) as live:
        for number in _refreshes(interval, count):
            try:
                snapshot = read_snapshot(broker, newest=newest)
                view = render(snapshot, (out.size.width, out.size.height - 1))  # and a line for the cursor
            except gone(broker):  # the server went away: say so, and keep trying
                view = Text(how_to_get_redis(broker.lab_url), style="red")
            footer = Text(f"refresh {number}, every {interval:g} s; Ctrl-C to stop", style="dim")
            live.update(Group(view, footer), refresh=True)
