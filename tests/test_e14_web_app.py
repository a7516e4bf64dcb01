"""Experiment 14's lessons: Dramatiq in a Django app. In-process through Django's test client, on fakeredis (the
lessons are Django's and the database's; `python -m lab run e14` plays them on redis-server too), then end to
end: a real `runserver`, a real `dramatiq` worker and `rundramatiq`, driven over HTTP with urllib."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import lab
from lab import experiments
from lab.processes import guard, release
from lab.urls import URL_ENV

import dramatiq
import pytest
from click.testing import CliRunner

import e14_web_app_site
import scenarios.e14_web_app as plays
from conftest import ROOT, free_port, lab_env

_tables: dict[str, Path] = {}


def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the session's two SQLite files (a worker process may open them too)."""
    if "dir" not in _tables:
        _tables["dir"] = tmp_path_factory.mktemp("e14-db")
    return _tables["dir"]


def load_e14(url: str, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Experiment 14 on a fresh broker at ``url`` (recorded), its tables empty, its slow calls short."""
    broker = lab.use_broker(lab.make_broker(url))
    lab.Recorder.install(broker)
    module = experiments.load(experiments.find("e14"))
    if "made" not in _tables:  # the tables once per session; emptied for each test
        e14_web_app_site.use_data_dir(tables(tmp_path_factory))
        _tables["made"] = _tables["dir"]
    e14_web_app_site.empty()
    for name, value in plays.FAST.items():
        setattr(module, name, value)
    return module


@pytest.fixture
def e14(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """Experiment 14 on a fresh fakeredis broker (recorded), its tables empty, its slow calls short."""
    module = load_e14(lab.MEMORY_URL, tmp_path_factory)
    yield module
    module.broker.close()


@pytest.fixture
def recorder(e14) -> lab.Recorder:
    return lab.Recorder.install(e14.broker)


@pytest.fixture
def start() -> Iterator[Callable[..., dramatiq.Worker]]:
    """Start in-process workers on the broker e14 was loaded on (ask for e14's fixture first); stopped after."""
    workers: list[dramatiq.Worker] = []

    def start_worker(threads: int = 2) -> dramatiq.Worker:
        worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=threads, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start_worker
    for worker in workers:
        lab.stop_worker(worker)


def test_a_task_sent_inside_the_transaction_runs_before_the_commit_and_on_commit_fixes_it(e14, recorder, start):
    # Given a worker, and a commit that comes only after the worker has tried the message sent inside it
    start(threads=2)
    # when 3 users sign up with the task sent inside the transaction, and one sign-up is rolled back
    trap = plays.play_commit(recorder, "inside")
    # then each task ran before its commit: DoesNotExist, no e-mail; the rolled-back one was sent all the same
    assert trap["codes"] == [201, 201, 201, 400] and trap["sent_before_commit"] == 3
    assert (trap["does_not_exist"], trap["emails"], trap["users"], trap["sent_for_refused"]) == (4, 0, 3, 1)
    # and with on_commit, nothing is sent before the commit, nothing for the rollback, and every e-mail is written
    e14_web_app_site.empty()
    recorder.reset()
    fixed = plays.play_commit(recorder, "on_commit")
    assert fixed["codes"] == [201, 201, 201, 400] and fixed["sent_before_commit"] == 0
    assert (fixed["does_not_exist"], fixed["emails"], fixed["users"], fixed["sent_for_refused"]) == (0, 3, 3, 0)


def test_a_model_instance_cannot_be_sent_and_a_copy_is_stale_by_the_time_it_runs(e14, start):
    seen = plays.play_ids(start)
    assert seen["refused"] == "Object of type User is not JSON serializable"
    assert seen["copy_to_old"] and seen["id_to_new"]


def test_each_worker_thread_keeps_its_connection_unless_db_connections_middleware_closes_it(e14, recorder, start):
    without = plays.play_connections(e14.broker, recorder, start, middleware=False)
    assert (without["opened"], without["left_open"], without["threads"]) == (1, 1, 1)
    assert without["after_the_database_closed"] == "failed"
    assert without["error"] == "ProgrammingError: Cannot operate on a closed database."
    recorder.reset()
    with_it = plays.play_connections(e14.broker, recorder, start, middleware=True)
    assert (with_it["opened"], with_it["left_open"], with_it["after_the_database_closed"]) == (10, 0, "ok")


def test_the_request_returns_before_the_email_is_sent(e14, start):
    timed = plays.play_request_time(start)
    # sent in the request, the e-mail is there when the answer comes; queued, it is not, and comes later
    assert (timed["inline_outbox"], timed["queued_outbox"], timed["later"]) == (1, 0, 1)
    assert timed["said"] == ("sent", "queued")


def test_a_burst_of_requests_for_a_stale_quote_queues_one_refresh_with_the_guard(e14, recorder, start):
    unguarded = plays.play_burst(e14.broker, recorder, start, guard="off")
    assert unguarded == {"queued": 100, "stale_answers": 100}
    guarded = plays.play_burst(e14.broker, recorder, start, guard="on")
    assert (guarded["queued"], guarded["stale_answers"]) == (1, 100)
    assert guarded["after"] == {"symbol": "ACME", "price": 27.8, "stale": False, "refresh_queued": False}


def test_202_then_poll_shows_enqueued_running_done_and_failed(e14, start):
    status = plays.play_status(e14.broker, start)
    assert status["codes"] == [202, 202]
    assert status["seen"] == [["enqueued", "running", "done"], ["enqueued", "running", "failed"]]
    assert status["done"]["result"] == {"signups": 0, "emails": 0}
    assert status["failed"]["error"] == ["RuntimeError: the reporting database is down"]
    assert 590_000 < status["result_ttl_ms"] <= 600_000
    assert status["bad"] == [400, 404, 400, 405]


def test_under_django_testcase_the_task_needs_a_commit_the_test_never_makes(e14):
    outcomes = plays.play_django_tests()
    assert outcomes == {"test_on_commit_never_fires_so_no_task_is_sent": "passed",
                        "test_sent_anyway_the_worker_cannot_see_the_uncommitted_user": "passed",
                        "test_the_welcome_email_is_sent": "passed"}


def test_rundramatiq_adds_django_setup_and_every_apps_tasks_then_execs_dramatiq(e14):
    line = plays.play_rundramatiq("--processes", "4", "--queues", "default,email,processing")
    assert line["argv"][:10] == ["dramatiq", "--path", ".", "--processes", "4", "--threads", "8",
                                 "--worker-shutdown-timeout", "600000", "django_dramatiq.setup"]
    assert line["modules"] == ["django_dramatiq.setup", "django_dramatiq.tasks", "e14_web_app_site.tasks"]
    assert line["queues"] == ["default,email,processing"]  # one queue, commas and all
    assert plays.play_rundramatiq("--queues", "default", "email")["queues"] == ["default", "email"]


def test_views_answer_bad_requests_with_400_and_json(e14):
    web = plays.client()
    web.post("/signup", {"email": "ada@example.com"})
    bad = [
        web.post("/signup", {}), web.post("/signup", {"email": "not-an-address"}),
        web.post("/signup", {"email": "ada@example.com"}), web.post("/signup", {"email": "x@blocked.example"}),
        web.post("/signup?send=later", {"email": "bob@example.com"}), web.get("/quotes/acme"),
        web.get("/quotes/ACME?guard=maybe"), web.post("/reports", {"kind": ""}), web.get("/tasks/42"),
    ]
    assert [r.status_code for r in bad] == [400] * len(bad)
    assert all(list(r.json()) == ["error"] and "\n" not in r.json()["error"] for r in bad)
    assert [web.get("/signup").status_code, web.post("/quotes/ACME").status_code] == [405, 405]


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_an_unreachable_task_queue_is_a_503_and_one_json_line_on_either_broker(scheme, monkeypatch,
                                                                              tmp_path_factory):
    # Given the app on a Redis or a RabbitMQ URL where nothing listens
    monkeypatch.delenv(URL_ENV, raising=False)
    e14 = load_e14(f"{scheme}://127.0.0.1:{free_port()}/", tmp_path_factory)
    try:
        # when a report is asked for, then the answer is a 503 with one JSON line, not Django's 500 page
        answer = plays.client().post("/reports", {"kind": "signups"})
        assert (answer.status_code, answer.json()) == (503, {"error": "the task queue is unreachable"})
    finally:
        e14.broker.close()


# -- end to end: a real server and real workers ----------------------------------------------------------------


def http(port: int, path: str, form: dict | None = None) -> tuple[int, dict, dict]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=data, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def outbox(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "default.sqlite3") as db:
        return [to for (to,) in db.execute('SELECT "to" FROM e14_web_app_site_email')]


@pytest.fixture
def app_process(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    """Start ``python e14_web_app.py ARGS`` in a session of its own, output in a file; killed by pid at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str, url: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"app-{len(started)}.log"
        with log.open("w") as out:
            env = lab_env(url, E14_DATA_DIR=str(tmp_path), dramatiq_worker_timeout="100")
            process = guard(subprocess.Popen([sys.executable, "e14_web_app.py", *args], cwd=ROOT, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True, env=env))
        started.append(process)
        return process, log

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        release(process)


@pytest.mark.e2e
def test_a_real_server_and_worker_serve_signup_quote_and_report_over_http(real_redis_url, app_process,
                                                                           dramatiq_worker, tmp_path):
    # Given `python e14_web_app.py runserver PORT` and `dramatiq e14_web_app`, on one Redis and one data dir
    port = free_port()
    server, log = app_process("runserver", str(port), url=real_redis_url)
    worker = dramatiq_worker("--threads", "4", "e14_web_app", url=real_redis_url, E14_DATA_DIR=str(tmp_path))
    assert lab.wait_until(lambda: "Quit the server with" in log.read_text(), timeout=20), log.read_text()
    # when a user signs up and 20 requests find a stale quote
    assert http(port, "/signup", {"email": "ada@example.com"})[0] == 201
    refreshes = [http(port, "/quotes/ACME")[2]["refresh_queued"] for _ in range(20)]
    # then the e-mail is written, one refresh was queued and the quote is fresh
    assert lab.wait_until(lambda: outbox(tmp_path) == ["ada@example.com"], timeout=15), worker.output
    assert refreshes.count(True) == 1
    assert lab.wait_until(lambda: http(port, "/quotes/ACME")[2]["stale"] is False, timeout=15), worker.output
    # and a report asked for now (asked for before, it once ran beside the e-mail and counted 0 of them) polls
    # to done with both counts
    status, headers, body = http(port, "/reports", {"kind": "signups"})
    assert status == 202 and headers["Location"] == body["poll"] == f"/tasks/{body['task']}"
    assert lab.wait_until(lambda: http(port, body["poll"])[2]["status"] == "done", timeout=15), worker.output
    assert http(port, body["poll"])[2]["result"] == {"signups": 1, "emails": 1}
    assert http(port, "/signup", {"email": "bad"})[0] == 400 and server.poll() is None


@pytest.mark.e2e
def test_rundramatiq_starts_a_worker_that_sends_the_welcome_email(real_redis_url, app_process, tmp_path):
    # Given the tables and a committed user, and `python e14_web_app.py rundramatiq` (django_dramatiq's command)
    subprocess.run([sys.executable, "e14_web_app.py", "migrate"], cwd=ROOT, check=True, capture_output=True,
                   env=lab_env(real_redis_url, E14_DATA_DIR=str(tmp_path)))
    with sqlite3.connect(tmp_path / "default.sqlite3") as db:
        user_id = db.execute("INSERT INTO e14_web_app_site_user (email) VALUES ('ada@example.com')").lastrowid
    worker, log = app_process("rundramatiq", "-p", "1", "-t", "2", "-Q", "e14", url=real_redis_url)
    # then it execs dramatiq with django_dramatiq.setup and the tasks modules it found, and boots
    assert lab.wait_until(lambda: "Worker process is ready for action" in log.read_text(), timeout=20), log.read_text()
    assert "django_dramatiq.setup django_dramatiq.tasks e14_web_app_site.tasks --queues e14" in log.read_text()
    # and when a welcome task is sent for the user, its worker writes the e-mail
    broker = lab.make_broker(real_redis_url)
    broker.enqueue(dramatiq.Message(queue_name="e14", actor_name="send_welcome", args=(user_id,), kwargs={},
                                    options={}))
    broker.close()
    assert lab.wait_until(lambda: outbox(tmp_path) == ["ada@example.com"], timeout=15), log.read_text()
    assert worker.poll() is None





# -- on RabbitMQ: the lessons that are Django's and the database's, not the broker's ------------------------------


@pytest.fixture
def e14_on_rabbitmq(rabbitmq_url: str, monkeypatch, tmp_path_factory) -> Iterator[Callable[..., ModuleType]]:
    """``e14_on_rabbitmq(redis_beside=None)``: Experiment 14 on a RabbitmqBroker (this test's vhost), with the
    Redis beside it that ``redis_beside`` names, or none."""
    loaded: list[ModuleType] = []

    def load(redis_beside: str | None = None) -> ModuleType:
        if redis_beside:
            monkeypatch.setenv(URL_ENV, redis_beside)
        else:
            monkeypatch.delenv(URL_ENV, raising=False)
        loaded.append(load_e14(rabbitmq_url, tmp_path_factory))
        assert lab.broker.is_rabbitmq(loaded[-1].broker)
        return loaded[-1]

    yield load
    for module in loaded:
        module.broker.close()


@pytest.mark.e2e
def test_on_rabbitmq_a_real_worker_runs_a_task_sent_inside_the_transaction_before_the_commit(
        rabbitmq_url, e14_on_rabbitmq, monkeypatch, tmp_path_factory, dramatiq_worker):
    # Given `dramatiq e14_web_app` on RabbitMQ (booting meanwhile), on this process's tables, and the app here
    monkeypatch.delenv(URL_ENV, raising=False)  # sending and running a welcome need no Redis beside
    worker = dramatiq_worker("--threads", "4", "e14_web_app", url=rabbitmq_url, ready=False,
                             E14_DATA_DIR=str(tables(tmp_path_factory)))
    recorder = lab.Recorder.install(e14_on_rabbitmq().broker)
    worker.ready()
    # when 3 users sign up with the task sent inside the transaction (each commit held until the worker
    # logged its try), and one sign-up is rolled back
    since = len(worker.output)
    trap = plays.play_commit(recorder, "inside", plays.tried_by_worker(lambda: worker.output[since:]))
    # then the worker ran each before its commit: DoesNotExist, no e-mail; the rolled-back one was sent too
    assert trap["codes"] == [201, 201, 201, 400] and trap["sent_before_commit"] == 3, worker.output
    assert (trap["does_not_exist"], trap["emails"], trap["users"], trap["sent_for_refused"]) == (4, 0, 3, 1)
    # and with on_commit, nothing before the commit, nothing for the rollback, and every e-mail written
    e14_web_app_site.empty()
    recorder.reset()
    since = len(worker.output)
    fixed = plays.play_commit(recorder, "on_commit", plays.tried_by_worker(lambda: worker.output[since:]))
    assert fixed["codes"] == [201, 201, 201, 400] and fixed["sent_before_commit"] == 0, worker.output
    assert (fixed["does_not_exist"], fixed["emails"], fixed["users"], fixed["sent_for_refused"]) == (0, 3, 3, 0)


def test_on_rabbitmq_202_and_poll_keep_the_result_in_the_redis_beside(e14_on_rabbitmq, real_redis_url, start):
    # Given the app on RabbitMQ with the Redis beside it, where the Results middleware keeps its results
    e14 = e14_on_rabbitmq(redis_beside=real_redis_url)
    # when two reports are asked for, one of them broken, and polled while a worker runs them
    status = plays.play_status(e14.broker, start)
    # then the polls read as on Redis, and the result waits in the Redis beside for 10 minutes
    assert status["codes"] == [202, 202]
    assert status["seen"] == [["enqueued", "running", "done"], ["enqueued", "running", "failed"]]
    assert status["done"]["result"] == {"signups": 0, "emails": 0}
    assert 590_000 < status["result_ttl_ms"] <= 600_000


def test_on_rabbitmq_the_refresh_guard_in_the_redis_beside_queues_one_refresh(e14_on_rabbitmq, real_redis_url,
                                                                               start):
    # Given the app on RabbitMQ with the Redis beside it, where the guard's key is set with SET NX PX
    e14 = e14_on_rabbitmq(redis_beside=real_redis_url)
    recorder = lab.Recorder.install(e14.broker)
    # when 100 requests find a quote stale, without the guard and then with it
    unguarded = plays.play_burst(e14.broker, recorder, start, guard="off")
    guarded = plays.play_burst(e14.broker, recorder, start, guard="on")
    # then RabbitMQ got 100 refreshes without it and 1 with it, and once that one ran the quote was fresh
    assert unguarded == {"queued": 100, "stale_answers": 100}
    assert (guarded["queued"], guarded["stale_answers"]) == (1, 100)
    assert guarded["after"] == {"symbol": "ACME", "price": 27.8, "stale": False, "refresh_queued": False}


def test_on_rabbitmq_the_app_without_a_redis_beside_is_one_line_and_exit_2(e14_on_rabbitmq):
    # Given the app on a RabbitMQ that answers, and no DRAMATIQ_REDIS_URL for the refresh guard and the results
    e14 = e14_on_rabbitmq()
    for command in (["runserver", str(free_port())], ["rundramatiq", "-p", "1"]):
        # when the server or the worker is started, then it says what to set, in one line, and exits 2
        result = CliRunner().invoke(e14.main, command)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert "this needs a Redis beside RabbitMQ" in result.output and "set DRAMATIQ_REDIS_URL=" in result.output
