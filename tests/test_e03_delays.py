"""e03's lessons: where a delayed message waits, who moves it, and how late it runs."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from datetime import time as TimeOfDay

import dramatiq
import pytest
from click.testing import CliRunner
from dramatiq.common import current_millis

import lab
from lab.keys import key


@pytest.fixture
def e03(load):
    return load("e03")


def ran(e03, *messages: dramatiq.Message) -> bool:
    return all(m.message_id in e03.started_ms for m in messages)


def test_a_delayed_message_waits_in_the_delay_queue_not_the_queue(broker, e03):
    message = e03.send_in("in a minute", 60_000)
    client, redis_id = broker.client, message.options["redis_message_id"]
    assert message.queue_name == "e03.DQ"
    assert client.lrange(key(broker, "e03.DQ"), 0, -1) == [redis_id.encode()]
    assert client.hexists(key(broker, "e03.DQ.msgs"), redis_id)
    assert client.llen(key(broker, "e03")) == 0 and client.hlen(key(broker, "e03.msgs")) == 0
    assert message.options["eta"] - current_millis() > 55_000  # the unit is milliseconds


def test_without_a_worker_a_due_message_waits_until_one_starts(broker, e03, start_worker):
    message = e03.send_in("alone", 50)
    assert not lab.wait_until(lambda: ran(e03, message), timeout=0.3)  # 6x its delay: nobody moved it
    assert broker.client.llen(key(broker, "e03.DQ")) == 1
    start_worker(threads=1)
    assert lab.wait_until(lambda: ran(e03, message), timeout=5)


def test_a_worker_takes_delayed_messages_into_memory_long_before_they_are_due(broker, e03, start_worker):
    message = e03.send_in("in a minute", 60_000)
    start_worker(threads=1)
    client, redis_id = broker.client, message.options["redis_message_id"]
    assert lab.wait_until(lambda: client.llen(key(broker, "e03.DQ")) == 0, timeout=5)
    # Fetched: out of the list, into the worker's set of unacked ids; the payload stays in the hash.
    assert client.sismember(key(broker, f"__acks__.{broker.broker_id}.e03.DQ"), redis_id)
    assert client.hexists(key(broker, "e03.DQ.msgs"), redis_id)
    assert not ran(e03, message)


def test_stopping_a_worker_puts_the_delayed_messages_it_held_back(broker, e03):
    message = e03.send_in("in a minute", 60_000)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert lab.wait_until(lambda: broker.client.llen(key(broker, "e03.DQ")) == 0, timeout=5)
    finally:
        lab.stop_worker(worker)
    assert broker.client.lrange(key(broker, "e03.DQ"), 0, -1) == [message.options["redis_message_id"].encode()]


def test_one_worker_thread_runs_other_messages_while_it_holds_a_delayed_one(broker, e03, start_worker):
    start_worker(threads=1)
    held = e03.send_in("held", 1500)
    assert lab.wait_until(lambda: broker.client.llen(key(broker, "e03.DQ")) == 0, timeout=1)
    others = [e03.wake_up.send(f"now {i}", current_millis()) for i in range(3)]
    assert lab.wait_until(lambda: ran(e03, *others), timeout=5)
    assert max(e03.started_ms[m.message_id] for m in others) < held.options["eta"]
    assert not ran(e03, held)


def test_a_delay_is_a_minimum_no_message_starts_before_its_eta(broker, e03, start_worker):
    start_worker(threads=2)
    sent = e03.send_batch(6, 200)
    assert lab.wait_until(lambda: ran(e03, *sent), timeout=5)
    assert [m.message_id for m in sent if e03.started_ms[m.message_id] < m.options["eta"]] == []


def test_with_worker_timeout_100_delayed_messages_start_well_within_a_second(broker, e03, start_worker):
    start_worker(threads=1, worker_timeout=100)
    sent = e03.send_batch(6, 200)
    assert lab.wait_until(lambda: ran(e03, *sent), timeout=5)
    assert max(e03.lateness(sent)) < 1000  # measured: max 150 ms (README); generous on purpose


def test_a_full_delay_prefetch_holds_back_a_message_due_sooner(broker, e03):
    later = e03.send_in("in a minute", 60_000)
    sooner = e03.send_in("in 50 ms", 50)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.delay_prefetch = 1  # default 1000 per thread; env dramatiq_delay_queue_prefetch
    worker.start()
    try:
        assert not lab.wait_until(lambda: ran(e03, sooner), timeout=0.3)  # 6x its delay
        assert broker.client.lrange(key(broker, "e03.DQ"), 0, -1) == [sooner.options["redis_message_id"].encode()]
    finally:
        lab.stop_worker(worker)
    assert not ran(e03, later)


NOON = datetime(2025, 6, 1, 12, 0, 0)


@pytest.mark.parametrize(("at", "now", "expected_ms"), [
    (TimeOfDay(14, 30), NOON, 2 * 3600 * 1000 + 30 * 60 * 1000),
    (TimeOfDay(12, 0, 1), NOON, 1000),
    (TimeOfDay(12, 0, 1), NOON + timedelta(microseconds=999_500), 1),  # rounded up: never before the time
    (TimeOfDay(12, 0), NOON, 0),
])
def test_at_turns_a_time_of_day_into_a_delay_in_ms(e03, at, now, expected_ms):
    assert e03.delay_until(at, now) == expected_ms


def test_at_rejects_a_time_already_past_today(e03):
    with pytest.raises(ValueError, match="already passed today"):
        e03.delay_until(TimeOfDay(11, 59, 59), NOON)


def a_minute_ago() -> str:
    now = datetime.now()
    if now.hour == 0 and now.minute < 2:
        pytest.skip("just after midnight, a minute ago was yesterday")
    return f"{now - timedelta(minutes=1):%H:%M}"


@pytest.mark.parametrize(("args", "says"), [
    (["send", "-5"], "negative"),
    (["at", a_minute_ago], "already passed today"),
], ids=["negative", "past-time"])
def test_sender_rejects_bad_input_with_a_usage_error(sender, args, says):
    args = [arg() if callable(arg) else arg for arg in args]
    result = sender("e03_delays.py", *args, url=lab.MEMORY_URL)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["send", "soon"], "not a whole number"),
    (["send", str(7 * 24 * 3600 * 1000 + 1)], "more than 7 days"),
    (["batch", "5", "--spread", str(7 * 24 * 3600 * 1000 + 1)], "more than 7 days"),
    (["at", "25:00"], "not a time of day"),
], ids=["not-a-number", "send-over-7-days", "spread-over-7-days", "not-a-time"])
def test_sender_rejects_non_numbers_more_than_7_days_and_malformed_times(e03, args, says):
    result = CliRunner().invoke(e03.main, args)  # in-process: the same click checks, faster
    assert result.exit_code == 2 and says in result.output


@pytest.mark.e2e
def test_dramatiq_cli_runs_a_sent_delay_no_earlier_than_asked(dramatiq_worker, sender, real_redis_url):
    worker = dramatiq_worker("e03_delays", "--threads", "1", url=real_redis_url, ready=False)
    result = sender("e03_delays.py", "send", "300", url=real_redis_url)  # while the worker boots
    assert result.returncode == 0, result.stderr
    assert "queue=e03.DQ" in result.stdout
    output = worker.wait_for(r"sent with delay=300: due .* ms late")
    late_ms, since_sent = re.search(r"started (-?\d+) ms late \(attempt 1, .*, ([\d.]+) s after it was sent",
                                    output).groups()
    assert int(late_ms) >= 0 and float(since_sent) >= 0.3
