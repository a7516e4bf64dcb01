"""`python -m lab list` and `python -m lab run`: scenarios, their lessons, and their failures."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

import lab
from conftest import ROOT, RedisServer, free_port, lab_env, need_redis_server
from lab import experiments
from lab.cli import cli
from lab.failures import how_to_get_redis
from lab.lessons import lesson_for

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


def test_every_experiment_has_a_scenario_and_a_test_file():
    for exp in experiments.all_experiments():
        assert exp.has_scenario, f"scenarios/{exp.name}.py is missing"
        assert (ROOT / "tests" / f"test_{exp.name}.py").exists(), f"tests/test_{exp.name}.py is missing"


@pytest.mark.parametrize("name", WITH_SCENARIO)
def test_every_scenario_holds_every_lesson(real_redis_url, name):
    # Given one experiment's scenario, when `python -m lab run` plays it on a real redis-server
    # (test_run_all_plays_every_scenario_in_one_process plays them all on fakeredis)
    result = invoke("run", name, "--redis", real_redis_url, "--json")
    # then every lesson it checks held, and each check prints a lesson of README.rst, cited by its test
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.output)["runs"]
    not_held = [c for c in run["lessons"] if c["held"] is False]
    assert run["lessons"] and not_held == [], not_held
    for check in run["lessons"]:
        assert check["lesson"] == lesson_for(check["test"]).headline


def test_run_all_plays_every_scenario_in_one_process():
    result = invoke("run", "all")
    assert result.exit_code == 0, result.output
    assert "NOT HELD" not in result.output
    for exp in experiments.all_experiments():
        assert exp.title in result.output
    assert re.search(r"(\d+) of \1 lessons held in \d+ experiment\(s\)", result.output), result.output[-300:]


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


def run_in_a_process(*args: str, url: str, log: Path) -> subprocess.Popen:
    """``python -m lab run ARGS --redis URL --log`` with its stderr in the file ``log``."""
    return subprocess.Popen([sys.executable, "-m", "lab", "run", *args, "--redis", url, "--log"], cwd=ROOT,
                            env=lab_env(url), stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)


@pytest.mark.e2e
def test_redis_dying_during_a_run_is_one_line_and_exit_3_and_the_cleanup_says_so(tmp_path):
    need_redis_server()
    log = tmp_path / "stderr"
    with RedisServer() as server:
        # Given a run of e03 (about 5 s) on a real Redis, when that Redis dies while its actor runs
        run = run_in_a_process("e03", url=server.url, log=log)
        assert lab.wait_until(lambda: "ms late" in log.read_text(), timeout=15), log.read_text()
        server.stop(signal.SIGKILL)
        assert run.wait(timeout=30) == lab.EXIT_UNREACHABLE, log.read_text()
    # then the last lines say the cleanup was skipped, then that Redis cannot be reached; no traceback
    lines = [line for line in log.read_text().splitlines() if line.startswith(("cleanup", "python -m lab"))]
    assert lines[-2].startswith("cleanup skipped: Redis did not answer; the run's keys (lab-run-"), lines
    assert lines[-1] == f"python -m lab: {how_to_get_redis(server.url)}"
    assert "Traceback" not in log.read_text()


@pytest.mark.e2e
def test_ctrl_c_during_a_run_exits_130_in_one_line(tmp_path):
    log = tmp_path / "stderr"
    run = run_in_a_process("e03", url=lab.MEMORY_URL, log=log)
    assert lab.wait_until(lambda: "ms late" in log.read_text(), timeout=15), log.read_text()
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == lab.EXIT_INTERRUPTED == 130
    assert log.read_text().splitlines()[-1] == "python -m lab: interrupted (Ctrl-C)"
    assert "Traceback" not in log.read_text()
