"""`python -m lab list` and `python -m lab run`, through click's runner."""

from __future__ import annotations

import json
import re

import pytest
import redis
from click.testing import CliRunner

import lab
from conftest import free_port
from lab import experiments
from lab.cli import cli


def invoke(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_list_reads_every_experiment_from_its_module():
    result = invoke("list")
    assert result.exit_code == 0
    files = sorted(p.stem for p in experiments.ROOT.glob("e[0-9][0-9]_*.py"))
    assert len(files) >= 2
    for exp in experiments.all_experiments():
        assert exp.number in result.output and exp.short_title in result.output
    assert [e.name for e in experiments.all_experiments()] == files


def test_run_all_holds_every_lesson(broker_url):
    result = invoke("run", "all", "--redis", broker_url)
    assert result.exit_code == 0, result.output
    assert "NOT HELD" not in result.output
    for exp in experiments.all_experiments():
        assert f"{exp.number}: {exp.title}" in result.output


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
        "def scenario(run):\n"
        "    run.start_worker(threads=1)\n"
        "    noop.send()\n"
        "    run.settle('e99', timeout=5)\n"
        "    run.lesson('noop ran twice', len(run.attempts('noop')) == 2, 'it ran once')\n"
    )
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("run", "e99")
    assert result.exit_code == 1
    assert "NOT HELD" in result.output and "0 of 1 lessons held" in result.output


def test_run_on_redis_uses_its_own_namespace_and_leaves_nothing(real_redis_url):
    client = redis.Redis.from_url(real_redis_url)
    client.rpush("dramatiq:e04", "someone-elses-message")  # a message a terminal worker would own
    assert invoke("run", "e04", "--redis", real_redis_url).exit_code == 0  # e04 stores results too
    left = sorted(k.decode() for k in client.keys("*") if not k.startswith(b"dramatiq:"))
    # All that stays: group barriers, which Dramatiq keys by a bare uuid (they expire after barrier_ttl).
    assert left and all(re.fullmatch(r"[0-9a-f-]{36}(@events)?", k) for k in left), left
    assert client.lrange("dramatiq:e04", 0, -1) == [b"someone-elses-message"]


def test_unknown_experiment_is_a_usage_error():
    result = invoke("run", "e77")
    assert result.exit_code == 2 and "no experiment 'e77'" in result.output


def test_a_url_that_is_not_redis_is_a_usage_error():
    result = invoke("run", "e01", "--redis", "http://user:hunter2@example.invalid")
    assert result.exit_code == 2 and "is not a Redis URL" in result.output and "hunter2" not in result.output


def test_unreachable_redis_is_one_line_and_exit_3():
    result = invoke("run", "e01", "--redis", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert result.exit_code == lab.EXIT_UNREACHABLE
    assert result.output.count("\n") == 1 and ":***@" in result.output and "hunter2" not in result.output


@pytest.mark.parametrize("key", ["e02", "02", "2", "e02_error_handling"])
def test_an_experiment_is_found_by_number_or_name(key):
    assert experiments.find(key).name == "e02_error_handling"
