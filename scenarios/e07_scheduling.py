"""`python -m lab run e07`: one scheduler that only enqueues, on a fake clock, and workers that run the work.

Nothing here waits for a real minute: :class:`FakeClock` sets the time APScheduler reads, and
:class:`SteppedScheduler` runs one pass of APScheduler's own loop at that time (``step()``).
"""

from __future__ import annotations

import contextlib
import io
from datetime import datetime, timedelta, timezone
from unittest import mock

import lab

import apscheduler.executors.base
import apscheduler.schedulers.base
import dramatiq
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from dramatiq.middleware import CurrentMessage

import e07_scheduling as e07

UTC = timezone.utc
DONE = (EVENT_JOB_EXECUTED, EVENT_JOB_ERROR, EVENT_JOB_MISSED)


class FakeClock:
    """The time APScheduler reads (``datetime.now`` in its scheduler and executor modules), set by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __enter__(self) -> FakeClock:
        clock = self

        class Now(datetime):
            @classmethod
            def now(cls, tz=None):  # noqa: ANN206 - datetime.now's own signature
                return clock.now.astimezone(tz)

        self.patches = [mock.patch.object(module, "datetime", Now)
                        for module in (apscheduler.schedulers.base, apscheduler.executors.base)]
        for patch in self.patches:
            patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for patch in self.patches:
            patch.stop()

    def set(self, *args: int) -> FakeClock:
        """Set the clock to ``datetime(*args)`` in UTC."""
        self.now = datetime(*args, tzinfo=UTC)
        return self


class SteppedScheduler(BaseScheduler):
    """An APScheduler scheduler that never wakes up by itself: each :meth:`step` is one pass of its loop.

    Its jobs run in APScheduler's default executor, a thread pool, as in a BlockingScheduler.
    """

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.events: list = []
        self.add_listener(self.events.append)

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def step(self, timeout: float = 5) -> list:
        """Run the due jobs as APScheduler's loop would now; return this pass's events once its runs are done."""
        first = len(self.events)
        self._process_jobs()
        runs = sum(len(e.scheduled_run_times) for e in self.events[first:] if e.code == EVENT_JOB_SUBMITTED)
        lab.wait_until(lambda: sum(e.code in DONE for e in self.events[first:]) >= runs, timeout=timeout)
        return self.events[first:]


def count(events: list, code: int) -> int:
    return sum(e.code == code for e in events)


def stepped(trigger: CronTrigger, actor: str = "report", ms: int = 0, **job) -> SteppedScheduler:
    scheduler = e07.make_scheduler(trigger, actor, ms, scheduler_class=SteppedScheduler, **job)
    scheduler.start()
    return scheduler


def late_scheduler_sends(clock: FakeClock, **job) -> tuple[int, int]:
    """A scheduler for every minute, started at 09:00:30 and next stepped at 09:10:45, having missed 10 fire
    times (09:01 to 09:10). How many messages it sends then, and how many runs it reports missed."""
    clock.set(2025, 1, 6, 9, 0, 30)
    scheduler = stepped(e07.cron_trigger("* * * * *"), **job)
    try:
        clock.set(2025, 1, 6, 9, 10, 45)
        events = scheduler.step()
        return count(events, EVENT_JOB_EXECUTED), count(events, EVENT_JOB_MISSED)
    finally:
        scheduler.shutdown()


def fails_first(source: str, ms: int = 0) -> None:
    """A scheduled job whose first attempt fails."""
    if CurrentMessage.get_current_message().options.get("retries", 0) == 0:
        raise RuntimeError("the first attempt fails")


def scenario(run: lab.Run) -> None:
    days = {}
    for name, trigger in (("from_crontab", CronTrigger.from_crontab("0 9 * * 1-5", timezone="UTC")),
                          ("cron_trigger", e07.cron_trigger("0 9 * * 1-5"))):
        fires, at = [], datetime(2025, 1, 5, tzinfo=UTC)  # a Sunday
        for _ in range(5):
            fires.append(at := trigger.get_next_fire_time(None, at + timedelta(seconds=1)))
        days[name] = [f"{f:%a}" for f in fires]
    run.check("test_apscheduler_3_reads_1_5_as_tuesday_to_saturday",
              days == {"from_crontab": ["Tue", "Wed", "Thu", "Fri", "Sat"],
                       "cron_trigger": ["Mon", "Tue", "Wed", "Thu", "Fri"]},
              f"'0 9 * * 1-5': from_crontab fires {' '.join(days['from_crontab'])}, cron_trigger "
              f"{' '.join(days['cron_trigger'])}")

    paris, at, fires = e07.cron_trigger("0 2 * * *", "Europe/Paris"), datetime(2025, 10, 24, 12, tzinfo=UTC), []
    for _ in range(3):
        fires.append(at := paris.get_next_fire_time(None, at + timedelta(seconds=1)))
    gaps = [(b.astimezone(UTC) - a.astimezone(UTC)) / timedelta(hours=1)
            for a, b in zip(fires, fires[1:], strict=False)]
    run.check("test_0_2_in_paris_fires_twice_the_night_clocks_go_back", gaps == [24, 1],
              f"'0 2 * * *' in Paris: {', '.join(f'{f:%a %H:%M %Z}' for f in fires)}, "
              f"{' then '.join(f'{gap:g} h' for gap in gaps)} apart")

    # enqueue() prints a line per message it sends, as the scheduler command does: not here
    with FakeClock(datetime(2025, 1, 6, 8, 59, 30, tzinfo=UTC)) as clock, contextlib.redirect_stdout(io.StringIO()):
        schedulers = [stepped(e07.cron_trigger("* * * * *")) for _ in range(2)]
        for minute in (0, 1, 2):
            clock.set(2025, 1, 6, 9, minute, 0)
            for scheduler in schedulers:
                scheduler.step()
        for scheduler in schedulers:
            scheduler.shutdown()
        sent = len(run.enqueues("report"))
        run.check("test_two_schedulers_send_every_run_twice", sent == 6,
                  f"two schedulers passed 3 fire times and sent {sent} messages, {sent / 3:g} per run")
        run.broker.flush(e07.QUEUE)

        table = {"lab": late_scheduler_sends(clock), "defaults": late_scheduler_sends(clock, misfire_grace_time=1),
                 "uncoalesced": late_scheduler_sends(clock, coalesce=False),
                 "catch-up": late_scheduler_sends(clock, coalesce=False, misfire_grace_time=None)}
        run.check("test_misfire_grace_time_and_coalescing_decide_what_a_late_scheduler_sends",
                  table == {"lab": (1, 0), "defaults": (0, 1), "uncoalesced": (1, 9), "catch-up": (10, 0)},
                  "10 missed, 45 s late: sent/missed " + ", ".join(f"{k} {s}/{m}" for k, (s, m) in table.items()))
        run.broker.flush(e07.QUEUE)

        run.start_worker(threads=3)
        for actor in ("report", "guarded_report"):
            clock.set(2025, 1, 6, 9, 0, 30)
            scheduler = stepped(e07.cron_trigger("* * * * *"), actor, 300)
            for minute in (1, 2, 3):  # three fire times, a few ms apart in real time: runs of 300 ms overlap
                clock.set(2025, 1, 6, 9, minute, 0)
                scheduler.step()
            scheduler.shutdown()
        run.settle(e07.QUEUE, timeout=10)

        flaky = run.broker.actors.get("flaky_report") or dramatiq.actor(
            fails_first, actor_name="flaky_report", queue_name=e07.QUEUE, broker=run.broker, max_retries=3,
            min_backoff=100, max_backoff=1000)
        clock.set(2025, 1, 6, 9, 0, 30)
        scheduler = stepped(e07.cron_trigger("* * * * *"), flaky.actor_name)
        clock.set(2025, 1, 6, 9, 1, 0)
        events = scheduler.step()
        scheduler.shutdown()
        run.wait_until(lambda: [a.outcome for a in run.attempts("flaky_report")] == ["retried", "ok"], timeout=5)
    outcomes = [a.outcome for a in run.attempts("flaky_report")]
    job = (count(events, EVENT_JOB_EXECUTED), count(events, EVENT_JOB_ERROR))
    run.check("test_the_retries_of_a_scheduled_actor_are_dramatiqs_not_the_schedulers",
              outcomes == ["retried", "ok"] and job == (1, 0),
              f"the scheduler: {job[0]} job run, {job[1]} errors; the worker: {', then '.join(outcomes)}")
    worked = {actor: [a for a in run.attempts(actor) if a.ended and a.ended - a.started >= 0.25]
              for actor in ("report", "guarded_report")}
    together = max(sum(b.started < a.ended and a.started < b.ended for b in worked["report"])
                   for a in worked["report"])
    run.check("test_max_instances_guards_the_enqueue_not_the_actor", len(worked["report"]) == 3 and together >= 2,
              f"max_instances=1, 3 fire times, runs of 300 ms: {len(worked['report'])} ran, up to {together} at once")
    run.check("test_a_redis_mutex_keeps_overlapping_runs_out",
              len(run.attempts("guarded_report")) == 3 and len(worked["guarded_report"]) == 1,
              f"guarded_report, the same 3 fire times: {len(run.attempts('guarded_report'))} runs, "
              f"{len(worked['guarded_report'])} did the work, the others skipped it")
    run.skip("test_each_scheduler_process_sends_once_per_fire_time_and_stops_cleanly",
             "real scheduler processes for seconds: pytest -m e2e tests/test_e07_scheduling.py")
