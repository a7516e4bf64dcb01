"""Experiment 07's lessons: one scheduler that only enqueues, crontab days and time zones, misfires, overlaps.

Nothing here waits for a real minute: the scenario module's FakeClock sets the time APScheduler reads, and its
SteppedScheduler runs one pass of APScheduler's own loop. One end-to-end test runs real scheduler processes
for a few seconds.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import ModuleType
from zoneinfo import ZoneInfo

import lab
from lab import experiments

import dramatiq
import pytest
import tzlocal
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from click.testing import CliRunner
from dramatiq.middleware import CurrentMessage
from dramatiq.rate_limits import ConcurrentRateLimiter

from conftest import ROOT, free_port, lab_env

UTC = timezone.utc


def fire_times(trigger: CronTrigger, start: datetime, count: int) -> list[datetime]:
    """The trigger's next ``count`` fire times after ``start``, as APScheduler computes them."""
    fires, fire = [], None
    for _ in range(count):
        fire = trigger.get_next_fire_time(fire, fire or start)
        fires.append(fire)
    return fires


def in_utc(fires: list[datetime]) -> list[str]:
    return [f"{fire.astimezone(UTC):%a %m-%d %H:%M}" for fire in fires]


@pytest.fixture
def e07(load) -> ModuleType:
    return load("e07")


@pytest.fixture
def e07_alone(monkeypatch) -> ModuleType:
    """e07 without a Redis: for what only needs its triggers and its command line."""
    monkeypatch.setenv(lab.URL_ENV, lab.MEMORY_URL)
    monkeypatch.setattr(lab.broker, "_broker", None)  # as in a new process
    monkeypatch.setattr(lab.urls, "_in_use", None)
    return experiments.load(experiments.find("e07"))


@pytest.fixture
def machine_in_tokyo() -> Iterator[None]:
    """This machine's local time zone as Asia/Tokyo (UTC+9) for the test: TZ, and tzlocal's cached zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    tzlocal.reload_localzone()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    tzlocal.reload_localzone()


@pytest.fixture
def steps(e07) -> ModuleType:
    """The scenario's FakeClock and SteppedScheduler (imported once e07 is bound to this test's broker)."""
    return importlib.import_module("scenarios.e07_scheduling")


def test_apscheduler_3_reads_1_5_as_tuesday_to_saturday():
    # APScheduler 3 counts weekdays from Monday = 0, and its from_crontab passes the numbers through
    weekdays = CronTrigger.from_crontab("0 9 * * 1-5", timezone="UTC")
    days = [f"{fire:%a}" for fire in fire_times(weekdays, datetime(2025, 1, 5, tzinfo=UTC), 5)]
    assert days == ["Tue", "Wed", "Thu", "Fri", "Sat"]
    [zero] = fire_times(CronTrigger.from_crontab("0 9 * * 0", timezone="UTC"), datetime(2025, 1, 5, tzinfo=UTC), 1)
    assert f"{zero:%a}" == "Mon"  # 0 is Sunday to crontab
    with pytest.raises(ValueError, match=r"the last value \(7\) is higher than the maximum value \(6\)"):
        CronTrigger.from_crontab("0 9 * * 7")  # 7 is Sunday too, to crontab


def test_the_lab_reads_day_numbers_as_crontab_does_sunday_0_or_7(e07_alone):
    sunday = datetime(2025, 1, 5, tzinfo=UTC)
    weekdays = fire_times(e07_alone.cron_trigger("0 9 * * 1-5"), sunday, 5)
    assert [f"{fire:%a %H:%M}" for fire in weekdays] == [
        "Mon 09:00", "Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00"]
    assert {e07_alone.cron_days(field) for field in ("0", "7", "sun")} == {"sun"}
    assert e07_alone.cron_days("*/2") == "sun,tue,thu,sat"  # 0, 2, 4, 6 to crontab
    assert e07_alone.cron_days("5-7,mon") == "fri,sat,sun,mon"  # names go through as they are
    with pytest.raises(ValueError, match="from 0 to 7"):
        e07_alone.cron_days("8")


def test_crontab_has_five_fields_minute_hour_day_month_weekday(e07_alone):
    start = datetime(2025, 1, 6, 8, 50, tzinfo=UTC)  # a Monday, 08:50
    assert in_utc(fire_times(e07_alone.cron_trigger("0 2 * * *"), start, 3)) == [
        "Tue 01-07 02:00", "Wed 01-08 02:00", "Thu 01-09 02:00"]  # every day at 02:00
    assert in_utc(fire_times(e07_alone.cron_trigger("*/15 * * * *"), start, 3)) == [
        "Mon 01-06 09:00", "Mon 01-06 09:15", "Mon 01-06 09:30"]  # every 15 minutes
    assert in_utc(fire_times(e07_alone.cron_trigger("0 9 * * 1-5"), start, 6)) == [
        "Mon 01-06 09:00", "Tue 01-07 09:00", "Wed 01-08 09:00", "Thu 01-09 09:00", "Fri 01-10 09:00",
        "Mon 01-13 09:00"]  # 09:00 on weekdays


def test_apscheduler_3_ands_day_of_month_with_day_of_week(e07_alone):
    # Crontab runs "0 0 1 * mon" on the 1st AND on every Monday; APScheduler only on a 1st that is a Monday
    fires = fire_times(e07_alone.cron_trigger("0 0 1 * mon"), datetime(2025, 1, 1, tzinfo=UTC), 3)
    assert in_utc(fires) == ["Mon 09-01 00:00", "Mon 12-01 00:00", "Mon 06-01 00:00"]


def test_0_2_in_paris_fires_twice_the_night_clocks_go_back(e07_alone):
    paris = e07_alone.cron_trigger("0 2 * * *", "Europe/Paris")
    # Autumn, 2025-10-26: 02:00 comes twice, at 02:00 CEST (00:00 UTC) and at 02:00 CET (01:00 UTC)
    autumn = fire_times(paris, datetime(2025, 10, 24, 12, tzinfo=UTC), 4)
    assert in_utc(autumn) == ["Sat 10-25 00:00", "Sun 10-26 00:00", "Sun 10-26 01:00", "Mon 10-27 01:00"]
    # Spring, 2025-03-30: 02:00 never comes; the run is at the jump, 01:00 UTC, 03:00 on Paris clocks
    spring = fire_times(paris, datetime(2025, 3, 28, 12, tzinfo=UTC), 3)
    assert in_utc(spring) == ["Sat 03-29 01:00", "Sun 03-30 01:00", "Mon 03-31 00:00"]
    assert f"{spring[1].astimezone(UTC).astimezone(ZoneInfo('Europe/Paris')):%H:%M %Z}" == "03:00 CEST"
    # In UTC nothing moves: 24 hours apart, every day of the year
    utc = fire_times(e07_alone.cron_trigger("0 2 * * *"), datetime(2025, 1, 1, tzinfo=UTC), 365)
    assert {b - a for a, b in zip(utc, utc[1:], strict=False)} == {timedelta(hours=24)}
    # New York's clocks go back at 02:00, so there it is 1:30 that runs twice
    new_york = e07_alone.cron_trigger("30 1 * * *", "America/New_York")
    new_york = fire_times(new_york, datetime(2025, 11, 1, 12, tzinfo=UTC), 3)
    assert in_utc(new_york) == ["Sun 11-02 05:30", "Sun 11-02 06:30", "Mon 11-03 06:30"]


def test_apscheduler_reads_a_crontab_in_local_time_unless_told_and_the_lab_in_utc(e07_alone, machine_in_tokyo):
    # Given a machine whose local time is Tokyo's, UTC+9, and Monday 2025-01-06 00:00 UTC (09:00 in Tokyo)
    monday = datetime(2025, 1, 6, tzinfo=UTC)
    # then APScheduler alone reads "0 2 * * *" as 02:00 in Tokyo, 17:00 UTC the day before
    plain = CronTrigger.from_crontab("0 2 * * *")
    assert str(plain.timezone) == "Asia/Tokyo"
    assert in_utc(fire_times(plain, monday, 2)) == ["Mon 01-06 17:00", "Tue 01-07 17:00"]
    # and the lab's cron_trigger, and its scheduler, as 02:00 UTC, wherever the machine is
    lab_trigger = e07_alone.cron_trigger("0 2 * * *")
    assert str(lab_trigger.timezone) == "UTC"
    assert in_utc(fire_times(lab_trigger, monday, 2)) == ["Mon 01-06 02:00", "Tue 01-07 02:00"]
    scheduler = e07_alone.make_scheduler(lab_trigger)
    assert str(scheduler.timezone) == "UTC"
    [job] = scheduler.get_jobs()
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 60)


def test_the_scheduler_command_sends_report_every_minute_in_utc_by_default(e07_alone, monkeypatch):
    # Given `python e07_scheduling.py scheduler` with no option, stopped as soon as it would start waiting
    built: list[BlockingScheduler] = []
    monkeypatch.setattr(BlockingScheduler, "start", lambda self, *args, **kwargs: built.append(self))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(e07_alone.main, ["scheduler"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # the command installs its own handler
    assert result.exit_code == 0, result.output
    # then its one job sends report(source, 0) at the start of every minute, read in UTC
    [scheduler] = built
    [job] = scheduler.get_jobs()
    assert (job.args[0], job.args[2]) == ("report", 0) and job.args[1].startswith("scheduler pid ")
    assert str(scheduler.timezone) == str(job.trigger.timezone) == "UTC"
    fires = fire_times(job.trigger, datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC), 3)
    assert [f"{fire.astimezone(UTC):%H:%M:%S}" for fire in fires] == ["09:01:00", "09:02:00", "09:03:00"]
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 60)
    assert result.output.splitlines()[0].endswith("report on cron[month='*', day='*', day_of_week='*', "
                                                  "hour='*', minute='*'] in UTC; Ctrl-C stops it")


def test_next_prints_fire_times_in_utc_and_local_time():
    result = subprocess.run([sys.executable, "e07_scheduling.py", "next", "0 9 * * 1-5", "--count", "5", "--start",
                             "2025-01-05"], cwd=ROOT, env=lab_env(lab.MEMORY_URL, TZ="Asia/Tokyo"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.startswith("'0 9 * * 1-5' in UTC: <CronTrigger") and "day_of_week='mon,tue,wed,thu,fri'" in header
    assert [row.split()[:6] for row in rows] == [
        [str(n), day, f"2025-01-{5 + n:02}", "09:00", "UTC", "UTC"] for n, day in enumerate(
            ["Mon", "Tue", "Wed", "Thu", "Fri"], 1)]
    assert all(f"local 01-{5 + n:02} 18:00 JST" in row for n, row in enumerate(rows, 1)), rows  # Tokyo is UTC+9
    assert [row.split()[-2:] for row in rows[1:]] == [["+24", "h"]] * 4


def test_next_shows_the_one_hour_gap_when_clocks_go_back(e07_alone):
    result = CliRunner().invoke(e07_alone.main, ["next", "0 2 * * *", "--tz", "Europe/Paris", "--start", "2025-10-25"])
    assert result.exit_code == 0, result.output
    gaps = [line.split()[-2] for line in result.output.splitlines()[2:]]
    assert gaps == ["+24", "+1", "+24", "+24"]


@pytest.mark.parametrize(("args", "says"), [
    (["next", "61 * * * *"], "Invalid value for 'CRONTAB': Error validating expression '61': the last value (61)"),
    (["next", "* * *"], "Invalid value for 'CRONTAB': 3 fields; a crontab has 5"),
    (["next", "0 9 * * 8"], "Invalid value for 'CRONTAB': day of week '8': from 0 to 7"),
    (["next", "0 0 31 2 *"], "Invalid value for 'CRONTAB': it never fires"),
    (["next", "0 9 * * *", "--tz", "Mars/Base"], "Invalid value for --tz: no time zone 'Mars/Base'"),
    (["next", "0 9 * * *", "--count", "0"], "0 is not in the range 1<=x<=100."),
    (["scheduler", "--cron", "every day"], "Invalid value for --cron: 2 fields; a crontab has 5"),
    (["scheduler", "--every", "60"], "60 is not in the range 1<=x<=59."),
    (["scheduler", "--actor", "nosuch"], "Invalid value for '--actor': 'nosuch' is not one of"),
])
def test_an_invalid_crontab_or_argument_is_one_line_and_exit_2(e07_alone, args, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        e07_alone.main(args, prog_name="e07_scheduling.py")  # standalone, as `python e07_scheduling.py ARGS`
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and says in err, err


def test_two_schedulers_send_every_run_twice(e07, steps, broker):
    queued = lambda: broker.client.llen(lab.key(broker, "e07"))  # noqa: E731
    with steps.FakeClock(datetime(2025, 1, 6, 8, 59, 30, tzinfo=UTC)) as clock:
        # Given two schedulers with the same job, as two scheduler processes (or one per worker process) have
        schedulers = [steps.stepped(e07.cron_trigger("* * * * *")) for _ in range(2)]
        # When the clock passes three fire times, 09:00, 09:01, 09:02
        sent = []
        for minute in range(3):
            clock.set(2025, 1, 6, 9, minute)
            for scheduler in schedulers:
                scheduler.step()
            sent.append(queued())
        for scheduler in schedulers:
            scheduler.shutdown()
    # then every fire time put two messages on the queue
    assert sent == [2, 4, 6]


def test_misfire_grace_time_and_coalescing_decide_what_a_late_scheduler_sends(steps, broker, caplog):
    # APScheduler 3.11's own defaults for a job: coalesce, 1 s of grace, one instance at a time
    defaults = steps.SteppedScheduler(timezone="UTC")
    defaults.start(paused=True)
    job = defaults.add_job(print, "interval", minutes=1)
    assert (job.coalesce, job.misfire_grace_time, job.max_instances) == (True, 1, 1)
    defaults.shutdown()
    # Given a job for every minute whose scheduler stalled from 09:00:30 to 09:10:45: 10 fire times missed
    options = {
        "the lab's job: coalesce, 60 s of grace": {},
        "APScheduler's defaults: coalesce, 1 s of grace": dict(coalesce=True, misfire_grace_time=1),
        "no coalescing, 60 s of grace": dict(coalesce=False),
        "no coalescing, no limit": dict(coalesce=False, misfire_grace_time=None),
    }
    sent_and_missed, warnings = {}, {}
    with steps.FakeClock(datetime(2025, 1, 6, tzinfo=UTC)) as clock:
        for name, job_options in options.items():
            caplog.clear()
            sent_and_missed[name] = steps.late_scheduler_sends(clock, **job_options)
            warnings[name] = [(r.levelname, r.getMessage().split(" was ")[1]) for r in caplog.records
                              if r.getMessage().startswith("Run time of job")]
    assert sent_and_missed == {
        "the lab's job: coalesce, 60 s of grace": (1, 0),  # the 10 runs become one, 45 s late: within its grace
        "APScheduler's defaults: coalesce, 1 s of grace": (0, 1),  # one run, 45 s late: skipped, with a warning
        "no coalescing, 60 s of grace": (1, 9),  # 09:10 runs; 09:01 to 09:09 are more than 60 s late
        "no coalescing, no limit": (10, 0),  # a burst: every missed run at once
    }
    assert warnings["APScheduler's defaults: coalesce, 1 s of grace"] == [("WARNING", "missed by 0:00:45")]
    assert broker.client.llen(lab.key(broker, "e07")) == 12  # what was sent is on the queue


def test_a_restarted_scheduler_forgets_the_runs_it_missed(e07, steps, broker):
    # Given the lab's scheduler with its default job store (in memory), started again at 09:10:45
    with steps.FakeClock(datetime(2025, 1, 6, 9, 10, 45, tzinfo=UTC)) as clock:
        scheduler = steps.stepped(e07.cron_trigger("* * * * *"))
        try:
            events = scheduler.step()
            # then it knows nothing of 09:01 to 09:10: it sends nothing now, and next at 09:11
            assert events == [] and broker.client.llen(lab.key(broker, "e07")) == 0
            assert scheduler.get_jobs()[0].next_run_time == datetime(2025, 1, 6, 9, 11, tzinfo=UTC)
            clock.set(2025, 1, 6, 9, 11, 0)
            assert steps.count(scheduler.step(), EVENT_JOB_EXECUTED) == 1
        finally:
            scheduler.shutdown()


def overlapping_runs(recorder: lab.Recorder, actor: str, ms: int) -> tuple[int, int]:
    """How many runs of ``actor`` did ``ms`` of work, and the most of them that worked at the same time."""
    worked = [a for a in recorder.attempts_of(actor) if a.ended and a.ended - a.started >= ms / 1000 * 0.8]
    together = max((sum(b.started < a.ended and a.started < b.ended for b in worked) for a in worked), default=0)
    return len(worked), together


def scheduled_three_times(e07, steps, actor: str, ms: int) -> None:
    """The lab's scheduler (max_instances=1) fires ``actor`` at 09:01, 09:02, 09:03, a few ms apart in real time."""
    with steps.FakeClock(datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)) as clock:
        scheduler = steps.stepped(e07.cron_trigger("* * * * *"), actor, ms)
        for minute in (1, 2, 3):
            clock.set(2025, 1, 6, 9, minute)
            scheduler.step()
        scheduler.shutdown()


def test_max_instances_guards_the_enqueue_not_the_actor(e07, steps, broker, recorder, start_worker):
    # Given the lab's job, max_instances=1, and a worker with 3 threads
    start_worker(threads=3)
    # When it fires three times while each run works for 300 ms
    scheduled_three_times(e07, steps, "report", 300)
    broker.join("e07", timeout=10_000)
    # then all three ran, and at the same time: the job's instance is the enqueue, over in a few ms
    assert overlapping_runs(recorder, "report", 300) == (3, 3)


def test_a_redis_mutex_keeps_overlapping_runs_out(e07, steps, broker, recorder, start_worker, caplog):
    caplog.set_level(logging.INFO)
    # Given guarded_report fired three times, each run to work for 300 ms
    scheduled_three_times(e07, steps, "guarded_report", 300)
    # When a 3-thread worker starts all three at once (started after the sends, so that a slow machine
    # cannot spread them more than 300 ms apart)
    start_worker(threads=3)
    broker.join("e07", timeout=10_000)
    # then three messages ran, one of them did the work, and the two that overlapped it were skipped
    assert len(recorder.attempts_of("guarded_report")) == 3
    assert overlapping_runs(recorder, "guarded_report", 300) == (1, 1)
    skipped = [r for r in caplog.records if r.getMessage() == "skipped: another report still runs"]
    assert [r.levelname for r in skipped] == ["WARNING", "WARNING"]
    # and the skipped runs returned: three successes, nothing retried
    assert [a.outcome for a in recorder.attempts_of("guarded_report")] == ["ok"] * 3
    assert [e.queue for e in recorder.enqueues_of("guarded_report")] == ["e07"] * 3
    assert broker.client.get(e07.MUTEX.key) == b"0"  # released: the next fire time can run


def test_the_mutex_key_expires_after_its_ttl_of_2_minutes_even_while_held(e07, broker):
    # Given guarded_report's mutex: Dramatiq's ConcurrentRateLimiter, limit 1, with a ttl of 2 minutes
    assert (e07.MUTEX.limit, e07.MUTEX.ttl) == (1, 120_000)
    assert ConcurrentRateLimiter(e07.MUTEX.backend, "default").ttl == 900_000  # Dramatiq's default: 15 minutes
    # When a run takes it and never lets it go, as a worker that dies holding it
    assert e07.MUTEX._acquire()  # what `with MUTEX.acquire()` does first; its release never comes
    # then no other run gets it, and its key is set to expire 2 minutes after it was taken
    with e07.MUTEX.acquire(raise_on_failure=False) as acquired:
        assert not acquired
    assert broker.client.get(e07.MUTEX.key) == b"1"
    assert 119_000 < broker.client.pttl(e07.MUTEX.key) <= 120_000
    # and once the ttl has passed, held or not, the next run gets it: here with a ttl of 200 ms
    short = ConcurrentRateLimiter(e07.MUTEX.backend, e07.MUTEX.key + ".short", ttl=200)
    assert short._acquire()
    with short.acquire(raise_on_failure=False) as acquired:
        assert not acquired
    assert lab.wait_until(lambda: broker.client.get(short.key) is None, timeout=2)
    with short.acquire(raise_on_failure=False) as acquired:
        assert acquired


def test_a_run_that_raises_on_a_taken_mutex_is_retried_and_runs_late(e07, broker, recorder, start_worker):
    # Given an actor that raises when the mutex is taken (acquire()'s default), while another run holds it
    @dramatiq.actor(queue_name="e07", broker=broker, max_retries=3, min_backoff=200, max_backoff=400)
    def raising_report(source: str, ms: int = 0) -> None:
        with e07.MUTEX.acquire():
            pass

    assert e07.MUTEX._acquire()
    start_worker()
    raising_report.send("scheduler", 0)
    # then its run raised RateLimitExceeded, and Retries sent it again through e07.DQ
    assert lab.wait_until(lambda: [a.outcome for a in recorder.attempts_of("raising_report")] == ["retried"],
                          timeout=5)
    # and once the holder let go, its retry did the work, 200 to 400 ms late
    e07.MUTEX._release()
    assert lab.wait_until(lambda: [a.outcome for a in recorder.attempts_of("raising_report")] == ["retried", "ok"],
                          timeout=5)
    [failed, _] = recorder.attempts_of("raising_report")
    assert failed.error.startswith("RateLimitExceeded: rate limit exceeded for key")
    assert [e.queue for e in recorder.enqueues_of("raising_report")] == ["e07", "e07.DQ", "e07"]


def test_the_retries_of_a_scheduled_actor_are_dramatiqs_not_the_schedulers(e07, steps, broker, recorder,
                                                                            start_worker):
    # Given an actor whose first attempt fails, with Dramatiq's Retries (min_backoff 100 ms)
    @dramatiq.actor(queue_name="e07", broker=broker, max_retries=3, min_backoff=100, max_backoff=1000)
    def flaky_report(source: str, ms: int = 0) -> None:
        if CurrentMessage.get_current_message().options.get("retries", 0) == 0:
            raise RuntimeError("the first attempt fails")

    start_worker()
    with steps.FakeClock(datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)) as clock:
        scheduler = steps.stepped(e07.cron_trigger("* * * * *"), "flaky_report")
        clock.set(2025, 1, 6, 9, 1)
        events = scheduler.step()  # When the scheduler fires it once
        scheduler.shutdown()
    assert lab.wait_until(lambda: [a.outcome for a in recorder.attempts] == ["retried", "ok"], timeout=5)
    # then the scheduler's job ran once, without an error: the failure and the retry happened on the worker
    assert (steps.count(events, EVENT_JOB_EXECUTED), steps.count(events, EVENT_JOB_ERROR)) == (1, 0)
    retry = [e for e in recorder.enqueues if e.delay_ms is not None]
    assert [(e.actor, e.queue) for e in retry] == [("flaky_report", "e07.DQ")]  # re-enqueued by Retries


def test_a_scheduler_without_redis_exits_3_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv(lab.URL_ENV, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setattr(lab.broker, "_broker", None)
    monkeypatch.setattr(lab.urls, "_in_use", None)
    e07 = experiments.load(experiments.find("e07"))
    with pytest.raises(SystemExit) as exit_:
        e07.main(["scheduler"], prog_name="e07_scheduling.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 3 and err.count("\n") == 1 and "cannot reach Redis at redis://127.0.0.1:" in err, err


def test_a_run_the_scheduler_cannot_send_is_one_line_and_lost(monkeypatch, capsys):
    # Given the lab's scheduler, and a Redis that has gone away
    monkeypatch.setenv(lab.URL_ENV, f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(lab.broker, "_broker", None)
    monkeypatch.setattr(lab.urls, "_in_use", None)
    e07 = experiments.load(experiments.find("e07"))
    steps = importlib.import_module("scenarios.e07_scheduling")
    with steps.FakeClock(datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)) as clock:
        scheduler = steps.stepped(e07.cron_trigger("* * * * *"))
        events = []
        for minute in (1, 2):  # When two fire times pass
            clock.set(2025, 1, 6, 9, minute)
            events += scheduler.step()
        scheduler.shutdown()
    # then each is one line on stderr, and the scheduler goes on: its job did not even fail
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(" not sent: report: ConnectionError: " in line for line in lines), lines
    assert (steps.count(events, EVENT_JOB_EXECUTED), steps.count(events, EVENT_JOB_ERROR)) == (2, 0)


@pytest.mark.e2e
def test_each_scheduler_process_sends_once_per_fire_time_and_stops_cleanly(real_redis_url, dramatiq_worker):
    worker = dramatiq_worker("e07_scheduling", "--threads", "2", url=real_redis_url)
    schedulers = [subprocess.Popen([sys.executable, "e07_scheduling.py", "scheduler", "--every", "1"], cwd=ROOT,
                                   env=lab_env(real_redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for _ in range(2)]
    try:
        # Given two scheduler processes firing every second, when the worker has run 3 reports from each
        runs = lambda: re.findall(r"\] report for scheduler pid (\d+)", worker.output)  # noqa: E731
        assert lab.wait_until(lambda: all(runs().count(str(s.pid)) >= 3 for s in schedulers), timeout=15), runs()
        # then Ctrl-C stops one (130, one line) and SIGTERM the other (0), both cleanly
        schedulers[0].send_signal(signal.SIGINT)
        schedulers[1].send_signal(signal.SIGTERM)
        (out_int, err_int), (out_term, err_term) = (s.communicate(timeout=10) for s in schedulers)
    finally:
        for scheduler in schedulers:
            scheduler.kill()
    assert (schedulers[0].returncode, err_int.splitlines()[-1]) == (130, "e07_scheduling.py: interrupted (Ctrl-C)")
    assert (schedulers[1].returncode, err_term) == (0, "")
    assert out_int.endswith("scheduler stopped\n") and out_term.endswith("scheduler stopped\n")
    assert "Traceback" not in err_int
    # and each process sent one message per fire time: as many as it said, each run once, a second apart
    sent = [out.count("sent report(") for out in (out_int, out_term)]
    assert lab.wait_until(lambda: len(runs()) == sum(sent), timeout=5), (runs(), sent)
    for scheduler, count in zip(schedulers, sent, strict=True):
        assert runs().count(str(scheduler.pid)) == count
        seconds = re.findall(rf"^\[[\d-]+ ([\d:]+),\d+\] [^\n]*report for scheduler pid {scheduler.pid} ",
                             worker.output, flags=re.M)
        assert len(set(seconds)) == len(seconds) == count, seconds  # never two in one second from one scheduler
    worker.kill()  # a clean stop costs the CLI about 2 s, and proves nothing here
