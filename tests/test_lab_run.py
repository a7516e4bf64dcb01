"""`python -m lab list` and `python -m lab run`: scenarios, their lessons, and their failures."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace

import lab
import lab.cli
from lab import experiments
from lab.cli import cli
from lab.failures import how_to_get_redis
from lab.lessons import lesson_for
from lab.rabbit_status import MANAGEMENT_ENV
from lab.rabbitmq import management
from lab.run_vhost import run_vhost
from lab.urls import URL_ENV

import pytest
import redis
from click.testing import CliRunner, Result

from benchmarks import e10_bench
from conftest import ROOT, RedisServer, free_port, lab_env, need_redis_server

WITH_SCENARIO = [e.name for e in experiments.all_experiments() if e.has_scenario]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="python -m lab")


def test_list_reads_every_experiment_from_its_module():
    result = invoke("list")
    assert result.exit_code == 0
    files = sorted(p.stem for p in experiments.ROOT.glob("e[0-9][0-9]_*.py"))
    assert len(files) >= 4 and [e.name for e in experiments.all_experiments()] == files
    for exp in experiments.all_experiments():
        assert exp.number in result.output and exp.short_title in result.output


def test_list_reads_each_title_and_goal_from_the_docstring_python_sees(tmp_path):
    # Given every experiment, and modules whose first token is not a plain docstring
    for path in experiments.ROOT.glob("e[0-9][0-9]_*.py"):
        # Then the quick reader (first tokens only) gives what a full parse gives
        assert experiments._docstring(path) == ast.get_docstring(ast.parse(path.read_text())), path
    odd = {"comment_first.py": '#!/usr/bin/env python\n# why\n"""  Title.\n\n    Goal: g.\n"""\nx = 1\n',
           "code_first.py": 'x = 1\n"""not a docstring"""\n', "fstring.py": 'f"""{1}"""\n', "empty.py": ""}
    for name, text in odd.items():
        (tmp_path / name).write_text(text)
        assert experiments._docstring(tmp_path / name) == ast.get_docstring(ast.parse(text)), name


def test_every_experiment_has_a_scenario_and_a_test_file():
    for exp in experiments.all_experiments():
        assert exp.has_scenario, f"scenarios/{exp.name}.py is missing"
        assert (ROOT / "tests" / f"test_{exp.name}.py").exists(), f"tests/test_{exp.name}.py is missing"


def reads_e05_crashes(monkeypatch: pytest.MonkeyPatch, crashes: SimpleNamespace) -> None:
    """Make e05's scenario check the crashes its tests observe (conftest's ``e05_crashes``: play_crashes on a
    private redis-server, once per test run) instead of playing them a second time (about 8 s)."""
    load_scenario = experiments.load_scenario

    def load(experiment: experiments.Experiment) -> ModuleType:
        scenario = load_scenario(experiment)  # reloaded: patched after
        monkeypatch.setattr(scenario, "play_crashes", lambda url, namespace: crashes)
        return scenario

    monkeypatch.setattr(experiments, "load_scenario", load)


def reads_e10_tiny_run(monkeypatch: pytest.MonkeyPatch, report: dict) -> None:
    """Make e10's scenario check the report of the benchmark's run that e10's tests observe on redis-server
    (conftest's ``e10_tiny``: the tiny plan, a superset of the scenario's, once per test run) instead of
    measuring a second time (about 5 s); the scenario's own plan still runs on fakeredis, in `run all`."""
    monkeypatch.setattr(e10_bench, "measure", lambda module, url, plan, namespace: report)


# Scenario phases that an experiment's own tests also play on redis-server: there, the scenario reads them.
SHARED_RUNS = {"e05_crash_recovery": (reads_e05_crashes, "e05_crashes"),
               "e10_throughput": (reads_e10_tiny_run, "e10_tiny")}


# On the embedded broker (test_run_all_plays_every_scenario_in_one_process) these scenarios skip lessons that
# need a real redis-server (that test checks the list), or read runs the experiment's tests play there: every run
# of the suite replays them on redis-server. The others held every lesson on the embedded broker, and their
# experiments' own tests prove each of those lessons on redis-server too: their replay there (about 35 s of a
# worker's time and 7 s of CPU, over the 100 s budget) runs in CI, after the suite, with LAB_REPLAYS=1 (.ci/run).
REPLAYED = {"e05_crash_recovery", "e07_scheduling", "e10_throughput", "e11_testing", "e12_async_and_middleware",
            "e13_rabbitmq"}
REPLAYS_ENV = "LAB_REPLAYS"
REPLAYS = [name if name in REPLAYED else pytest.param(name, marks=pytest.mark.skipif(
    not os.environ.get(REPLAYS_ENV), reason=f"held every lesson on the embedded broker; {REPLAYS_ENV}=1 replays it "
                                            "on redis-server (CI does)")) for name in WITH_SCENARIO]


@pytest.mark.parametrize("name", REPLAYS)
def test_every_scenario_holds_every_lesson(real_redis_url, name, request, monkeypatch):
    # Given one experiment's scenario, when `python -m lab run` plays it on a real redis-server
    # (test_run_all_plays_every_scenario_in_one_process plays them all on fakeredis)
    if name in SHARED_RUNS:
        reads, fixture = SHARED_RUNS[name]
        reads(monkeypatch, request.getfixturevalue(fixture))
    result = invoke("run", name, "--redis", real_redis_url, "--json")
    # then every lesson it checks held, and each check prints a lesson of README.rst, cited by its test
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.output)["runs"]
    not_held = [c for c in run["lessons"] if c["held"] is False]
    assert run["lessons"] and not_held == [], not_held
    for check in run["lessons"]:
        assert check["lesson"] == lesson_for(check["test"]).headline


@pytest.mark.parametrize("name", ["e07_scheduling", "e09_rate_limits"])
def test_a_scenario_that_holds_on_both_brokers_holds_on_rabbitmq(name, rabbitmq_server, rabbitmq_url, real_redis_url,
                                                                 monkeypatch):
    # Given RabbitMQ and its management API, with a Redis beside it for e09's limiters (two scenarios whose waits
    # and dead letters read RabbitMQ's own queues: the rest are the same code; tests/test_rabbitmq_lessons.py
    # proves their lessons)
    monkeypatch.setenv(URL_ENV, real_redis_url)
    monkeypatch.setenv(MANAGEMENT_ENV, rabbitmq_server.management_url)
    played_in: list[tuple[str, str | None]] = []

    @contextmanager
    def seen(url: str, name: str) -> Iterator[tuple[str, str | None]]:
        with run_vhost(url, name) as made:
            played_in.append(made)
            yield made

    monkeypatch.setattr(lab.cli, "run_vhost", seen)
    # when `python -m lab run` plays the scenario there
    result = invoke("run", name, "--broker", rabbitmq_url, "--json")
    # then every lesson it checks held, in a vhost of the run's own, deleted after it (nothing in the URL's)
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.output)["runs"]
    assert run["lessons"] and [c for c in run["lessons"] if c["held"] is False] == []
    [(url, why)] = played_in
    vhost = url.rsplit("/", 1)[1]
    assert why is None and re.fullmatch(r"lab-run-[0-9a-f]{8}", vhost) and result.stderr == "", result.stderr
    with pytest.raises(urllib.error.HTTPError, match="404"):
        management(rabbitmq_server.management_url, "GET", f"/api/vhosts/{vhost}")
    assert management(rabbitmq_server.management_url, "GET", f"/api/queues/{rabbitmq_url.rsplit('/', 1)[1]}") == []


@pytest.mark.parametrize("name", ["e03", "e05", "e10"])
def test_a_redis_only_scenario_on_rabbitmq_says_so_in_one_line_and_exits_2(name, rabbitmq_url):
    # Given a scenario that reads Redis's own keys or timing, when it is asked to play on RabbitMQ
    result = invoke("run", name, "--broker", rabbitmq_url)
    # then it plays nothing: one line that says why and where to look, exit 2
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{name}'s scenario runs on Redis only: " in result.output and "Experiment 13" in result.output


def test_run_all_plays_every_scenario_in_one_process():
    result = invoke("run", "all")
    assert result.exit_code == 0, result.output
    assert "NOT HELD" not in result.output
    for exp in experiments.all_experiments():
        assert exp.title in result.output
    assert re.search(r"(\d+) of \1 lessons held in \d+ experiment\(s\)", result.output), result.output[-300:]
    # and the experiments that skipped a lesson here are those the suite always replays on redis-server
    by_number = {exp.number: exp.name for exp in experiments.all_experiments()}
    skipping, section = set(), None
    for line in result.output.splitlines():
        if title := re.search(r"─ Experiment (\d+): ", line):
            section = by_number[f"e{title.group(1)}"]
        elif line.startswith("skipped "):
            skipping.add(section)
    assert skipping and skipping <= REPLAYED, skipping - REPLAYED

    # and it teaches in one screen an experiment: off a terminal, 100 columns, 20 lines an experiment on
    # average, each lesson once
    lines = result.output.splitlines()
    lesson_lines = [line for line in lines if re.match(r"(held|NOT HELD|skipped) ", line)]
    most = 20 * len(experiments.all_experiments())
    assert len(lines) <= most and max(map(len, lines)) <= 100, f"{len(lines)} lines"
    assert len(lesson_lines) == len(set(lesson_lines)), "a lesson printed twice"


def test_run_json_reports_what_was_observed():
    result = invoke("run", "e01", "--json")
    assert result.exit_code == 0
    [run] = json.loads(result.output)["runs"]
    assert [a["actor"] for a in run["attempts"]] == ["count_to", "count_to"]
    assert {a["outcome"] for a in run["attempts"]} == {"ok"} and run["all_held"] is True


def test_run_exits_1_when_a_lesson_does_not_hold(tmp_path, monkeypatch):
    (tmp_path / "e99_broken.py").write_text(
        '"""Experiment 99: broken\n\nGoal: fail on purpose."""\n'
        "import dramatiq, lab\n"
        "broker = lab.setup_broker()\n"
        "@dramatiq.actor(queue_name='e99')\n"
        "def noop():\n    pass\n"
    )
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "e99_broken.py").write_text(
        "import e99_broken as e99\n"
        "def scenario(run):\n"
        "    run.start_worker(threads=1)\n"
        "    e99.noop.send()\n"
        "    run.settle('e99', timeout=5)\n"
        "    run.check('tests/test_e01_hello_world.py::test_an_actor_is_still_a_function',\n"
        "              len(run.attempts('noop')) == 2, 'noop ran once')\n"
    )
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("run", "e99")
    assert result.exit_code == 1, result.output
    assert "NOT HELD" in result.output and "0 of 1 lessons held" in result.output


def test_run_on_redis_uses_its_own_namespace_and_leaves_nothing(real_redis_url):
    client = redis.Redis.from_url(real_redis_url)
    client.rpush("dramatiq:e04", "someone-elses-message")  # a message a terminal worker would own
    assert invoke("run", "e04", "--redis", real_redis_url).exit_code == 0  # e04 stores results too
    left = sorted(k.decode() for k in client.keys("*") if not k.startswith(b"dramatiq:"))
    # All that stays: group barriers, which Dramatiq keys by a bare uuid (they expire after barrier_ttl).
    assert left and all(re.fullmatch(r"[0-9a-f-]{36}(@events)?", k) for k in left), left
    assert client.lrange("dramatiq:e04", 0, -1) == [b"someone-elses-message"]


@pytest.mark.parametrize(("key", "says"), [
    ("e77", "no experiment 'e77'"),
    ("²", "no experiment '²'"),  # "²".isdigit() is true, int("²") is not
    ("", "no experiment ''"),
])
def test_an_unknown_experiment_is_a_one_line_usage_error(key, says):
    result = invoke("run", key)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and says in result.output, result.output


@pytest.mark.parametrize("key", ["e02", "02", "2", "e02_error_handling", "e02_error_handling.py"])
def test_an_experiment_is_found_by_number_or_name(key):
    assert experiments.find(key).name == "e02_error_handling"


def test_a_url_that_is_not_redis_is_a_usage_error():
    result = invoke("run", "e01", "--redis", "http://user:hunter2@example.invalid")
    assert result.exit_code == 2 and "is not a valid Redis URL" in result.output and "hunter2" not in result.output


def test_unreachable_redis_is_one_line_and_exit_3():
    result = invoke("run", "e01", "--redis", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert result.exit_code == lab.EXIT_UNREACHABLE
    assert result.output.count("\n") == 1 and ":***@" in result.output and "hunter2" not in result.output


@pytest.fixture
def run_in_a_process(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    """Start ``python -m lab run ARGS --redis URL`` with its stderr in a file; the process and the file.
    Whatever the test's outcome, the process is gone at teardown."""
    started: list[subprocess.Popen] = []

    def start(*args: str, url: str) -> tuple[subprocess.Popen, Path]:
        stderr = tmp_path / f"stderr-{len(started)}"
        with stderr.open("w") as sink:
            started.append(subprocess.Popen([sys.executable, "-m", "lab", "run", *args, "--redis", url], cwd=ROOT,
                                            env=lab_env(url), stdout=subprocess.DEVNULL, stderr=sink, text=True))
        return started[-1], stderr

    yield start
    for process in started:
        process.kill()
        process.wait()


CLEANUP_SKIPPED = r"cleanup skipped: Redis did not answer; the run's keys \(lab-run-[0-9a-f]{8}\*\) may remain"


@pytest.mark.e2e
@pytest.mark.parametrize("log", [[], ["--log"]], ids=["quiet", "log"])
def test_redis_dying_during_a_run_is_one_line_and_exit_3_and_the_cleanup_says_so(run_in_a_process, log):
    need_redis_server()
    with RedisServer() as server:
        # Given a run of e03 (about 5 s) on a real Redis, when that Redis dies while the run's worker holds
        # delayed messages in memory (its consumer threads see it too, and one may be enqueueing a due one)
        run, stderr = run_in_a_process("e03", *log, url=server.url)
        client = redis.Redis.from_url(server.url)
        holding = lambda: run.poll() is not None or client.keys("lab-run-*:__acks__.*.e03.DQ")  # noqa: E731
        assert lab.wait_until(holding, timeout=30) and run.poll() is None, stderr.read_text()
        client.close()
        server.stop(signal.SIGKILL)
        assert run.wait(timeout=30) == lab.EXIT_UNREACHABLE, stderr.read_text()
    # then stderr is a note that the cleanup was skipped, then the one line; with --log, the worker's log
    # comes first (what its threads saw, without a traceback)
    text = stderr.read_text()
    lines = text.splitlines()
    assert len(lines) >= 2 and re.fullmatch(CLEANUP_SKIPPED, lines[-2]), text
    assert lines[-1] == f"python -m lab: {how_to_get_redis(server.url)}", text
    assert len(lines) == 2 or log, text
    assert "Traceback" not in text and "Exception in thread" not in text, text


WORKER_THREADS_LOSING_REDIS = """
import logging, sys, threading
import redis
from lab.scenario import worker_log

with worker_log(shown=sys.argv[1:] == ["--log"]):
    lost = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")
    try:
        raise lost
    except redis.ConnectionError:
        logging.getLogger("dramatiq.worker.ConsumerThread(e03)").critical(
            "Consumer encountered an unexpected error.", exc_info=True)

    def fail(error):
        raise error

    for error in (lost, ValueError("a bug")):
        thread = threading.Thread(target=fail, args=(error,), name=type(error).__name__)
        thread.start()
        thread.join()
"""


@pytest.mark.parametrize("log", [[], ["--log"]], ids=["quiet", "log"])
def test_during_a_run_a_lost_redis_is_one_log_line_and_a_bug_keeps_its_traceback(log):
    # Given what a run's worker threads do when Redis dies: Dramatiq's consumer logs a CRITICAL record with
    # the ConnectionError's traceback, and a thread whose cleanup fails too dies of it
    result = subprocess.run([sys.executable, "-c", WORKER_THREADS_LOSING_REDIS, *log], cwd=ROOT, env=lab_env(""),
                            capture_output=True, text=True, timeout=30)
    lines = result.stderr.splitlines()
    bug = lines.index("Exception in thread ValueError:")
    # then each is one line in the worker's log (--log), nothing otherwise; while a bug keeps its traceback
    assert lines[:bug] == ([] if not log else [
        "[MainThread] [dramatiq.worker.ConsumerThread(e03)] [CRITICAL] Consumer encountered an unexpected error. "
        "(ConnectionError: Error 111 connecting to 127.0.0.1:6399. Connection refused.)",
        "[ConnectionError] [lab] [WARNING] ConnectionError ended: ConnectionError: Error 111 connecting to "
        "127.0.0.1:6399. Connection refused.",
    ]), result.stderr
    assert lines[bug + 1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: a bug", result.stderr


@pytest.mark.e2e
def test_ctrl_c_during_a_run_exits_130_in_one_line(run_in_a_process):
    run, stderr = run_in_a_process("e03", "--log", url=lab.MEMORY_URL)
    assert lab.wait_until(lambda: "ms late" in stderr.read_text(), timeout=15), stderr.read_text()
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == lab.EXIT_INTERRUPTED == 130
    assert stderr.read_text().splitlines()[-1] == "python -m lab: interrupted (Ctrl-C)"
    assert "Traceback" not in stderr.read_text()
