"""e15's lessons: what Dramatiq's Prometheus middleware counts, where it listens, and where it fails.

The metrics tests share one run of the scenario's phases with real ``dramatiq`` processes on the
session's redis-server (``workers``), each scraped with prometheus_client's own text parser.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import json
import logging
import uuid
from dataclasses import asdict
from types import ModuleType, SimpleNamespace

import lab
from lab import experiments
from lab.keys import key
from lab.rabbitmq_share import delete_vhost, new_vhost
from lab.urls import URL_ENV

import pytest
from click.testing import CliRunner
from dramatiq.middleware import default_middleware
from dramatiq.middleware.prometheus import Prometheus

from conftest import free_port, need_redis_server


@pytest.fixture
def e15(load, recorder) -> ModuleType:
    """The experiment, bound to this test's broker, with a recorder on it (no worker yet)."""
    return load("e15")


@pytest.fixture(scope="module")
def scene() -> ModuleType:
    return importlib.import_module("scenarios.e15_monitoring")


@pytest.fixture(scope="module")
def workers(scene, redis_server, tmp_path_factory, worker_id) -> SimpleNamespace:
    """The scenario's phases with real processes, once per test session, on the session's redis-server.

    Under pytest-xdist the first worker to come runs them, under a file lock in the session's shared
    temporary directory, and the others read what it observed. Each phase kills its workers and
    deletes its metrics directories, even when it fails.
    """
    need_redis_server()
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    observed = shared / "e15-workers.json"
    with open(shared / "e15-workers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not observed.exists():
            observed.write_text(json.dumps(asdict(scene.play(redis_server, f"e15-tests-{uuid.uuid4().hex[:6]}"))))
    phases = json.loads(observed.read_text())
    return SimpleNamespace(**{name: SimpleNamespace(**seen) if isinstance(seen, dict) else seen
                              for name, seen in phases.items()})


# -- in this process ---------------------------------------------------------------------------------------------------


def test_prometheus_is_not_in_the_default_middleware_and_needs_the_extra(broker, load):
    # Given Dramatiq 2.2.1's defaults and its package metadata
    assert [m.__name__ for m in default_middleware] == [
        "AgeLimit", "TimeLimit", "ShutdownNotifications", "Callbacks", "Pipelines", "Retries"]
    assert 'prometheus-client>=0.2; extra == "prometheus"' in importlib.metadata.requires("dramatiq")
    # then the lab's broker has no Prometheus until e15 adds one
    assert not any(isinstance(m, Prometheus) for m in broker.middleware)
    load("e15")
    assert sum(isinstance(m, Prometheus) for m in broker.middleware) == 1


def test_unset_the_exposition_server_listens_on_every_interface_on_9191(scene, tmp_path):
    # Given Dramatiq's module loaded afresh with none of dramatiq_prom_host, _port, _db set
    defaults = scene.prometheus_defaults()
    # then its server would listen on every interface, on 9191, and keep its files in one fixed place
    assert (defaults["host"], defaults["port"]) == ("0.0.0.0", 9191)
    assert defaults["db"] == f"{defaults['tmp']}/dramatiq-prometheus"


def test_under_a_plain_worker_every_hook_fails_and_the_message_still_runs(broker, e15, recorder, start_worker,
                                                                          caplog):
    # Given e15's broker, with Prometheus, and a plain dramatiq.Worker: no CLI, so no process_boot
    caplog.set_level(logging.CRITICAL, logger="dramatiq")
    start_worker(threads=1)
    # when one message that succeeds goes through it
    message = e15.succeed.send()
    assert lab.wait_until(lambda: recorder.attempts and recorder.attempts[0].ended, timeout=5)
    # then it ran, and each of Prometheus's hooks failed on a metric it never made, logged at CRITICAL
    assert [(a.message_id, a.outcome) for a in recorder.attempts] == [(message.message_id, "ok")]
    failed = [(r.levelname, r.getMessage().split(" of ")[0], str(r.exc_info[1])) for r in caplog.records
              if "Prometheus" in r.getMessage()]
    assert failed == [
        ("CRITICAL", "Unexpected failure in before_process_message",
         "'Prometheus' object has no attribute 'inprogress_messages'"),
        ("CRITICAL", "Unexpected failure in after_process_message",
         "'Prometheus' object has no attribute 'message_durations'"),
    ]


# -- real workers, scraped ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_lab_s_exposition_server_listens_on_127_0_0_1_only(workers):
    assert workers.mix.listening == ["127.0.0.1"]


@pytest.mark.e2e
def test_messages_total_counts_every_attempt_and_every_skip(workers, scene):
    # Given 3 succeed, 1 fail (2 retries), 2 later (delayed), 1 expire (too old to run) and 1 hold
    mix = workers.mix
    assert mix.sent == {"succeed": 3, "fail": 1, "later": 2, "expire": 1}
    # then the counter counted each attempt, the skipped one too, and nothing before the first
    counted = scene.by_actor(mix.after, "dramatiq_messages_total")
    assert counted == {"expire": 1, "fail": 3, "hold": 1, "later": 2, "succeed": 3}
    assert mix.before == []


@pytest.mark.e2e
def test_errors_count_failed_attempts_and_rejects_count_dead_letters(workers, scene):
    assert scene.by_actor(workers.mix.after, "dramatiq_message_errors_total") == {"fail": 3}
    assert scene.by_actor(workers.mix.after, "dramatiq_message_rejects_total") == {"expire": 1, "fail": 1}


@pytest.mark.e2e
def test_retries_total_counts_each_retry_twice(workers, scene):
    # Given fail's 2 retries: each enqueued onto e15.DQ, then moved back to e15 when its backoff was over
    retries = scene.by_queue(workers.mix.after, "dramatiq_message_retries_total", "fail")
    # then each was counted at both
    assert retries == {"e15.DQ": 2, "e15": 2}
    assert scene.by_actor(workers.mix.after, "dramatiq_message_retries_total") == {"fail": 4}


@pytest.mark.e2e
def test_the_duration_histogram_observes_every_message_the_counter_counts(workers, scene):
    after = workers.mix.after
    observed = scene.by_actor(after, "dramatiq_message_duration_milliseconds_count")
    assert observed == scene.by_actor(after, "dramatiq_messages_total")
    # the skipped one never started: observed at 0 ms, so in every bucket from the first (5 ms) on
    expire = {s[1]["le"]: s[2] for s in after if s[0] == "dramatiq_message_duration_milliseconds_bucket"
              and s[1]["actor_name"] == "expire"}
    assert expire["5.0"] == expire["+Inf"] == 1
    assert scene.by_actor(after, "dramatiq_message_duration_milliseconds_sum").get("expire", 0) == 0


@pytest.mark.e2e
def test_messages_inprogress_is_1_while_one_runs_and_a_skip_takes_it_below_0(workers, scene):
    assert workers.mix.holding == 1
    assert scene.by_actor(workers.mix.after, "dramatiq_messages_inprogress") == {"expire": -1}


@pytest.mark.e2e
def test_the_delayed_gauge_never_comes_back_down(workers, scene):
    # Given 2 delayed messages and 2 retries (delayed by their backoff), all run by the end
    after = workers.mix.after
    later, fail = (scene.by_queue(after, "dramatiq_delayed_messages_inprogress", a) for a in ("later", "fail"))
    # then the e15.DQ series counted each up and never down
    assert (later.get("e15.DQ"), fail.get("e15.DQ")) == (2, 2)
    # and the downs land on the e15 series, only for those run by the process that took them off e15.DQ
    assert -4 <= later.get("e15", 0) + fail.get("e15", 0) <= 0
    # one series for each worker process (pid label): the gauge's multiprocess mode is "all"
    pids = {s[1]["pid"] for s in after if s[0] == "dramatiq_delayed_messages_inprogress"}
    assert pids <= {str(pid) for pid in workers.mix.pids} and pids


@pytest.mark.e2e
def test_counters_survive_a_restart_on_the_same_directory(workers, scene):
    restart = workers.restart
    # Given 3 messages (1 failing) to a worker, then a clean stop (SIGTERM: exit 0)
    assert scene.pair(restart.first) == (3, 1) and restart.stop_code == 0
    # when a new worker starts on the same dramatiq_prom_db
    # then its server serves the old counts before anything is sent, and adds to them
    assert scene.pair(restart.at_restart) == (3, 1)
    assert scene.pair(restart.second) == (6, 2)
    # because the first worker's files are still there (the clean stop removed only its livesum gauge)
    first_pid, second_pid = restart.pids
    assert {f"counter_{first_pid}.db", f"histogram_{first_pid}.db"} <= set(restart.files)
    assert f"gauge_livesum_{first_pid}.db" not in restart.files and f"gauge_livesum_{second_pid}.db" in restart.files


@pytest.mark.e2e
def test_loaded_as_a_second_module_prometheus_never_sets_up_and_serves_nothing(workers):
    second = workers.second
    assert second.ran and second.samples == []
    assert second.output[:4] == [
        "[CRITICAL] Unexpected failure in before_process_message of " + second.output[0].split(" of ")[-1],
        "AttributeError: 'Prometheus' object has no attribute 'inprogress_messages'",
        "[CRITICAL] Unexpected failure in after_process_message of " + second.output[2].split(" of ")[-1],
        "AttributeError: 'Prometheus' object has no attribute 'message_durations'",
    ]


# -- the same mix on RabbitMQ ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def on_rabbitmq(scene, once, rabbitmq_server, redis_server) -> SimpleNamespace:
    """The scenario's mix through `dramatiq --processes 2` on RabbitMQ (a vhost of its own on the run's shared
    server), with hold's gate in the session's redis-server beside it: once per test run, as ``workers``."""

    def play() -> dict:
        vhost = f"e15-mix-{uuid.uuid4().hex[:6]}"
        url = new_vhost(rabbitmq_server, vhost)
        try:
            with pytest.MonkeyPatch.context() as env:
                env.setenv(URL_ENV, redis_server)  # the Redis beside: this process's broker and the worker's read it
                return asdict(scene.mix(url, f"e15-tests-{vhost}"))
        finally:
            delete_vhost(rabbitmq_server, vhost)

    return SimpleNamespace(**once("e15-rabbitmq-mix", play))


@pytest.mark.e2e
def test_on_rabbitmq_the_counters_and_gauges_read_as_on_redis(on_rabbitmq, scene):
    # Given the same mix and hold, through `dramatiq --processes 2` on RabbitMQ
    assert on_rabbitmq.sent == {"succeed": 3, "fail": 1, "later": 2, "expire": 1} and on_rabbitmq.before == []
    # then each attempt and skip was counted, each failed attempt an error, each dead letter a reject
    after = on_rabbitmq.after
    counted = scene.by_actor(after, "dramatiq_messages_total")
    assert counted == {"expire": 1, "fail": 3, "hold": 1, "later": 2, "succeed": 3}
    assert scene.by_actor(after, "dramatiq_message_errors_total") == {"fail": 3}
    assert scene.by_actor(after, "dramatiq_message_rejects_total") == {"expire": 1, "fail": 1}
    # and the histogram observed each of them; hold was 1 in progress, and the skipped expire ended at -1
    assert scene.by_actor(after, "dramatiq_message_duration_milliseconds_count") == counted
    assert on_rabbitmq.holding == 1 and scene.by_actor(after, "dramatiq_messages_inprogress") == {"expire": -1}


@pytest.mark.e2e
def test_on_rabbitmq_retries_total_counts_each_retry_twice_too(on_rabbitmq, scene):
    # Given fail's 2 retries: each published to e15.DQ, then by the worker to e15 when its backoff was over
    retries = scene.by_queue(on_rabbitmq.after, "dramatiq_message_retries_total", "fail")
    # then each was counted at both, as on Redis: the same Retries and Worker code calls enqueue twice
    assert retries == {"e15.DQ": 2, "e15": 2}


@pytest.mark.e2e
def test_on_rabbitmq_the_delayed_gauge_never_comes_back_down_either(on_rabbitmq, scene):
    # Given 2 delayed messages and 2 retries, all run; RabbitMQ delivers each from e15.DQ to one of the 2 processes
    later, fail = (scene.by_queue(on_rabbitmq.after, "dramatiq_delayed_messages_inprogress", a)
                   for a in ("later", "fail"))
    # then the e15.DQ series counted each up and never down, and the downs landed on e15, from 0 to all 4
    assert (later.get("e15.DQ"), fail.get("e15.DQ")) == (2, 2)
    assert -4 <= later.get("e15", 0) + fail.get("e15", 0) <= 0


# -- the sender --------------------------------------------------------------------------------------------------------


def test_mix_sends_5_now_and_2_delayed(broker, e15):
    result = CliRunner().invoke(e15.main, ["mix"])
    assert result.exit_code == 0 and result.output == (
        "sent 3 x succeed, 1 x fail, 2 x later, 1 x expire  queue=e15\n")
    assert broker.client.llen(key(broker, "e15")) == 5 and broker.client.llen(key(broker, "e15.DQ")) == 2


@pytest.mark.parametrize(("args", "code", "says"), [
    (["mix", "3"], 2, "Got unexpected extra argument (3)."),
    (["hold", "--timeout", "0"], 2, "Invalid value for '--timeout': 0 is not in the range 1<=x<=3600."),
    (["nosuch"], 2, "No such command 'nosuch'."),
    (["scrape", "--url", "http://127.0.0.1:{free}/metrics"], 3, "nothing answers at http://127.0.0.1:"),
    (["scrape", "--url", "nonsense"], 3, "nothing answers at nonsense (unknown url type: 'nonsense')"),
])
def test_sender_rejects_bad_input_with_a_one_line_error(e15, args, code, says):
    args = [arg.replace("{free}", str(free_port())) for arg in args]
    result = CliRunner().invoke(e15.main, args)  # in-process: the same click checks, faster
    assert result.exit_code == code and result.output.count("\n") == 1 and says in result.output, result.output


def test_a_bad_prometheus_port_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(lab.broker, "_broker", None)  # restored after the test
    monkeypatch.setenv("dramatiq_prom_port", "9191x")
    lab.use_broker(lab.make_broker(lab.MEMORY_URL))
    with pytest.raises(SystemExit) as exit_:
        experiments.load(experiments.find("e15"))
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(": dramatiq_prom_port='9191x' must be a whole number from 1 to 65535")

