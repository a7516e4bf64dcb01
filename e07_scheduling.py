"""Experiment 07: cron scheduling

Goal: run periodic work with one scheduler process that only enqueues (APScheduler) and workers that run it.

Run it, in two terminals (a Redis first: `redis-server` or `python -m lab serve`):

    dramatiq --watch . e07_scheduling                       # the worker
    python e07_scheduling.py scheduler                      # the one scheduler: report() every minute; Ctrl-C stops it
    python e07_scheduling.py scheduler --every 1 --ms 2500  # each run takes 2.5 s: they overlap on the worker
    python e07_scheduling.py scheduler --every 1 --ms 2500 --actor guarded_report   # a mutex skips overlaps
    python e07_scheduling.py next "0 9 * * 1-5" --count 5   # the next fire times, in UTC and local time
    python e07_scheduling.py next "0 2 * * *" --tz Europe/Paris --start 2025-10-24   # across a DST change
"""

import os
import re
import signal
import sys
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import lab
from lab.broker import check_redis

import click
import dramatiq
import redis
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

broker = lab.setup_broker()

QUEUE = "e07"
JOB = dict(max_instances=1, coalesce=True, misfire_grace_time=60)  # APScheduler's defaults: 1, True, 1 (s)
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # crontab's day numbers: 0 and 7 are Sunday
MUTEX = ConcurrentRateLimiter(RedisBackend(client=broker.client), lab.key(broker, "__e07.mutex"), ttl=120_000)


@dramatiq.actor(queue_name=QUEUE)
def report(source: str, ms: int = 0) -> None:
    """The periodic job: logs who scheduled it and when, then works for ``ms``."""
    actor = CurrentMessage.get_current_message().actor_name
    report.logger.info("%s for %s (%s)", actor, source, lab.describe_attempt())
    time.sleep(ms / 1000)


@dramatiq.actor(queue_name=QUEUE)
def guarded_report(source: str, ms: int = 0) -> None:
    """``report`` under MUTEX: a run that starts while another works is skipped (the key expires after its ttl)."""
    with MUTEX.acquire(raise_on_failure=False) as acquired:
        if not acquired:
            return guarded_report.logger.warning("skipped: another report still runs")
        report.fn(source, ms)


def cron_days(field: str) -> str:
    """Day numbers as names: to crontab 0 and 7 are Sunday, to APScheduler 3 0 is Monday (its issue 286)."""
    def names(part: str) -> str:
        if part == "*" or not (found := re.fullmatch(r"(\*|\d+)(?:-(\d+))?(?:/(\d+))?", part)):
            return part  # names (mon-fri) and * mean the same to both
        first, last, step = found.groups()
        low, high = (0, 6) if first == "*" else (int(first), int(last or (6 if step else first)))
        if not 0 <= low <= high <= 7:
            raise ValueError(f"day of week {part!r}: from 0 to 7, Sunday being 0 and 7")
        return ",".join(DAYS[day] for day in range(low, high + 1, int(step or 1)))
    return ",".join(map(names, field.split(",")))


def cron_trigger(crontab: str, tz: str = "UTC", hint: str = "'CRONTAB'") -> CronTrigger:
    """APScheduler's trigger for a five-field crontab line, read in the time zone ``tz``; BadParameter if invalid."""
    fields = crontab.split()
    try:
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields; a crontab has 5: minute hour day-of-month month day-of-week")
        return CronTrigger.from_crontab(" ".join([*fields[:4], cron_days(fields[4])]), timezone=tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc).splitlines()[0], param_hint=hint) from None


def time_zone(ctx: click.Context, param: click.Parameter, tz: str) -> str:
    """--tz's check, as click parses it: ``tz`` if it names a time zone, else a usage error (exit 2)."""
    try:
        return ZoneInfo(tz).key
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: "", "/etc/x", "../x"
        raise click.BadParameter(f"no time zone {tz!r}: an IANA name, e.g. Europe/Paris", param_hint="--tz") from None


def enqueue(actor_name: str, source: str, ms: int) -> None:
    """The scheduler's whole job: put one message on the queue. It returns at once; a worker runs the actor."""
    try:
        lab.confirm(broker.get_actor(actor_name).send(source, ms))
    except (redis.RedisError, BrokerConnectionError) as exc:  # this run is lost; the scheduler goes on to the next one
        click.echo(f"{datetime.now():%H:%M:%S} not sent: {actor_name}: {type(exc).__name__}: {exc}", err=True)


def make_scheduler(trigger, actor="report", ms=0, *, scheduler_class=BlockingScheduler, **job) -> BlockingScheduler:
    """A scheduler that enqueues ``actor`` at every fire time of ``trigger``, and does nothing else."""
    scheduler = scheduler_class(timezone=trigger.timezone)
    scheduler.add_job(enqueue, trigger, args=(actor, f"scheduler pid {os.getpid()}", ms), id=actor, **{**JOB, **job})
    return scheduler


@click.group(cls=lab.Group, epilog=lab.EXIT_CODES_HELP.replace("130 Ctrl-C", "130 Ctrl-C (SIGTERM: 0)"))
def main() -> None:
    """Run e07's one scheduler, or check a crontab's next fire times."""


@main.command("scheduler")
@click.option("--cron", "crontab", default="* * * * *", show_default=True, help="When to enqueue: 5 crontab fields.")
@click.option("--every", type=click.IntRange(1, 59), metavar="SECONDS", help="At seconds divisible by N, not --cron.")
@click.option("--tz", default="UTC", show_default=True, callback=time_zone, help="The crontab's time zone (IANA name).")
@click.option("--actor", type=click.Choice(["report", "guarded_report"]), default="report", show_default=True)
@click.option("--ms", type=click.IntRange(0, 60_000), default=0, show_default=True, help="How long each run works.")
def run_scheduler(crontab: str, every: int | None, tz: str, actor: str, ms: int) -> None:
    """The one scheduler: it enqueues --actor at each fire time; workers run it. Ctrl-C (130) or SIGTERM (0) stop it."""
    if every and click.get_current_context().get_parameter_source("crontab") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--cron and --every exclude each other: choose one.")
    trigger = CronTrigger(second=f"*/{every}", timezone=tz) if every else cron_trigger(crontab, tz, "--cron")
    check_redis(broker)  # its broker (Redis or RabbitMQ) down: one line and exit 3 now, not an error at every fire time
    scheduler = make_scheduler(trigger, actor, ms)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit(0) from scheduler.start(), below
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even if a shell's `&` ignored it
    click.echo(f"scheduler pid {os.getpid()}: {actor} on {trigger} in {tz}; Ctrl-C stops it")
    try:
        scheduler.start()  # runs until stopped; each fire time runs enqueue() in a thread of its pool
    finally:
        if scheduler.running:  # wait for a send in flight, so its "sent" line comes before "stopped"
            scheduler.shutdown(wait=True)
        click.echo("scheduler stopped")


@main.command("next")
@click.argument("crontab")
@click.option("--count", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--tz", default="UTC", show_default=True, callback=time_zone, help="CRONTAB's time zone (IANA name).")
@click.option("--start", type=click.DateTime(), help="Count from this time, in --tz (default: now).")
def next_times(crontab: str, count: int, tz: str, start: datetime | None) -> None:
    """Print CRONTAB's next fire times in --tz, in UTC and in local time, and the gaps. Needs no Redis."""
    trigger = cron_trigger(crontab, tz)
    fire = start.replace(tzinfo=trigger.timezone) if start else datetime.now(trigger.timezone)
    click.echo(f"{crontab!r} in {tz}: {trigger!r}")
    for number in range(1, count + 1):
        fire, before = trigger.get_next_fire_time(None if number == 1 else fire, fire), fire
        if fire is None:
            raise click.BadParameter("it never fires: no date matches all its fields", param_hint="'CRONTAB'")
        gap = "" if number == 1 else f"   {(fire.timestamp() - before.timestamp()) / 3600:+g} h"
        click.echo(f"{number:3}  {fire:%a %Y-%m-%d %H:%M %Z}  UTC {fire.astimezone(timezone.utc):%m-%d %H:%M}  "
                   f"local {fire.astimezone():%m-%d %H:%M %Z}{gap}")


if __name__ == "__main__":
    sys.exit(main())
