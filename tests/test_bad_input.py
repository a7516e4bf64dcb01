"""Bad input, swept across every entry point: one line, its exit code, no traceback, no password.

The entry points are the senders (``python eNN_*.py ...``), every ``python -m
lab`` command, and a ``dramatiq`` worker. The inputs are the ones a new user
types, or has in the environment:

- URLs that cannot work; passwords in the user part and in the query; a user
  name without a password (often a password in the wrong place); a refused or
  missing password; a database the server does not have; something that is not
  Redis at the URL; a port that never answers;
- every option and argument of every command, found by walking the click
  commands: wrong types, values ``str.isdigit()`` accepts and ``int()`` refuses
  (``²``), empty strings, numbers out of range, 5,000 digits, ``nan``; and, by
  hand, what only a command's body can check (two options that exclude each other);
- the settings read from the environment: each experiment's own (found by
  recording what it asks ``lab.settings`` for) and Dramatiq's (``lab.settings.DRAMATIQ``);
- Ctrl-C while a command waits.

The senders and the lab's commands run in this process where they can, as
``python script.py ARGS`` would run them (``runpy`` with ``__main__``, the same
``sys.exit``). What needs a process of its own runs as one: a ``dramatiq``
worker, the check of Dramatiq's settings (it must run before ``import
dramatiq``), and Ctrl-C.
"""

from __future__ import annotations

import os
import re
import runpy
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lab
from lab.cli import cli
from lab.processes import carrying
from lab.settings import DRAMATIQ, check_dramatiq_environment

import click
import dramatiq
import pytest
import redis

from conftest import ROOT, RedisServer, WorkerProcess, free_port, lab_env, need_redis_server

SECRET = "hunter2-secret"
USAGE, UNREACHABLE, AUTH = lab.EXIT_USAGE, lab.EXIT_UNREACHABLE, lab.EXIT_AUTH

# Entry points that talk to Redis, with arguments that get them there.
SENDERS = {
    "e01": ["e01_hello_world.py", "5"],
    "e02": ["e02_error_handling.py", "handled", "3"],
    "e02 dead-letters": ["e02_error_handling.py", "dead-letters"],
    "e03": ["e03_delays.py", "send", "100"],
    "e03 measure": ["e03_delays.py", "measure", "--count", "1"],
    "e04": ["e04_pipelines.py", "pipeline", "3", "--timeout", "1"],
    "e05": ["e05_crash_recovery.py", "deposit", "1"],
    "e05 count": ["e05_crash_recovery.py", "count"],
    "e06": ["e06_priorities.py", "flood", "3"],
    "e06 measure": ["e06_priorities.py", "measure", "--sleeps", "1"],
    "e07 scheduler": ["e07_scheduling.py", "scheduler", "--every", "1"],
    "e08": ["e08_time_limits.py", "spin", "10"],
    "e09": ["e09_rate_limits.py", "send", "free", "2"],
    "e09 report": ["e09_rate_limits.py", "report"],
    "e10": ["e10_throughput.py", "--quick"],
    "e11": ["e11_testing.py", "receipt", "3"],
    "e11 remind": ["e11_testing.py", "remind", "ada@example.com", "--in", "100"],
    "e12": ["e12_async_and_middleware.py", "report", "1"],
    "e12 switch": ["e12_async_and_middleware.py", "switch", "off"],
    "e13": ["e13_rabbitmq.py", "work", "1"],
    "e13 greet": ["e13_rabbitmq.py", "greet", "--priority", "9"],
    "e14 runserver": ["e14_web_app.py", "runserver", "8014"],
    "e14 rundramatiq": ["e14_web_app.py", "rundramatiq", "-p", "1"],
    "e15": ["e15_monitoring.py", "mix"],
    "e15 release": ["e15_monitoring.py", "release"],
    "lab run": ["-m lab", "run", "e01", "--redis", "{url}"],
    "lab status": ["-m lab", "status", "--redis", "{url}"],
    "lab purge": ["-m lab", "purge", "e01", "--yes", "--redis", "{url}"],
}


@dataclass
class Servers:
    """What the URLs point at: a Redis with a password, a port where HTTP answers, one that never does."""

    locked: str  # redis://127.0.0.1:PORT/0, without its password
    http: int
    silent: int


class NotRedis(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    need_redis_server()
    with RedisServer(password=SECRET) as locked, \
            socketserver.TCPServer(("127.0.0.1", 0), NotRedis) as http, socket.socket() as silent:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel does), never answers
        yield Servers(f"redis://127.0.0.1:{locked.port}/0", http.server_address[1], silent.getsockname()[1])
        http.shutdown()


# (input, URL, expected exit code, what the one line says). {free} is a port nothing listens on.
URLS = [
    ("unparsable", "redis://[::1", USAGE, "is not a valid Redis URL"),
    ("port-over-65535", f"redis://:{SECRET}@127.0.0.1:99999/0", USAGE, "Port out of range 0-65535"),
    ("port-not-a-number", f"redis://:{SECRET}@127.0.0.1:abc/0", USAGE, "Port could not be cast to integer"),
    ("database-not-a-number", "redis://127.0.0.1:{free}/abc", USAGE, "the database 'abc' is not a number"),
    ("not-a-redis-url", f"http://user:{SECRET}@127.0.0.1/", USAGE, "it must start with redis://"),
    ("password-in-userinfo", f"redis://:{SECRET}@127.0.0.1:{{free}}/0", UNREACHABLE, "cannot reach Redis at redis://:***@"),
    ("password-in-query", f"redis://127.0.0.1:{{free}}/0?password={SECRET}", UNREACHABLE, "?password=***"),
    # a password where URL syntax puts a user name: the whole user part is masked
    ("user-without-password", f"redis://{SECRET}@127.0.0.1:{{free}}/0", UNREACHABLE, "cannot reach Redis at redis://***@"),
    ("user-without-password-refused", f"redis://{SECRET}@{{locked}}", AUTH,
     "refused the user name in the URL, which has no password"),
    ("user-and-password-ipv6", f"redis://default:{SECRET}@[::1]:{{free}}/0", UNREACHABLE, "redis://***:***@[::1]:"),
    ("wrong-password", "redis://:wrong-" + SECRET + "@{locked}", AUTH, "refused the password"),
    ("no-password", "redis://{locked}", AUTH, "wants a password"),
    ("database-out-of-range", f"redis://:{SECRET}@{{locked_db99}}", USAGE, "has no such database"),
    ("http-at-the-url", "redis://127.0.0.1:{http}/0", UNREACHABLE, "cannot reach Redis at"),
    ("silent-port", "redis://127.0.0.1:{silent}/0?socket_timeout=0.1&socket_connect_timeout=0.1", UNREACHABLE,
     "cannot reach Redis at"),
]


def url_for(template: str, servers: Servers) -> str:
    locked = servers.locked.removeprefix("redis://")
    return template.format(free=free_port(), locked=locked, locked_db99=locked.replace("/0", "/99"),
                           http=servers.http, silent=servers.silent)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run(argv: list[str], url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Outcome:
    """``python ARGV`` with ``DRAMATIQ_REDIS_URL=url``, in this process; a traceback fails the test."""
    monkeypatch.setenv(lab.URL_ENV, url)
    monkeypatch.setattr(lab.broker, "_broker", None)  # a new process has no broker yet
    monkeypatch.setattr(lab.urls, "_in_use", None)
    argv = [arg.format(url=url) for arg in argv]
    try:
        if argv[0] == "-m lab":
            cli.main(argv[1:], prog_name="python -m lab")
        else:
            monkeypatch.setattr(sys, "argv", argv)
            runpy.run_path(str(lab.experiments.ROOT / argv[0]), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_one_line(outcome: Outcome, code: int, says: str, secret: str = SECRET) -> None:
    assert outcome.code == code, outcome
    assert outcome.err.count("\n") == 1 and says in outcome.err, outcome.err
    assert "Traceback" not in outcome.err and secret not in outcome.err + outcome.out, outcome


@pytest.mark.parametrize(("name", "template", "code", "says"), URLS, ids=[u[0] for u in URLS])
@pytest.mark.parametrize("entry", SENDERS, ids=list(SENDERS))
def test_every_entry_point_fails_in_one_line_with_its_exit_code(entry, name, template, code, says, servers,
                                                               monkeypatch, capsys):
    outcome = run(SENDERS[entry], url_for(template, servers), monkeypatch, capsys)
    assert_one_line(outcome, code, says)


# Their RabbitMQ twins. {rabbit} is the run's RabbitMQ (HOST:PORT), where guest may log in on the vhost /.
AMQP_URLS = [
    ("amqp-port-not-a-number", f"amqp://guest:{SECRET}@127.0.0.1:abc/%2F", USAGE, "is not a valid RabbitMQ URL"),
    ("amqp-bad-query-option", f"amqp://guest:{SECRET}@127.0.0.1:{{free}}/%2F?heartbeat=x", USAGE,
     "Invalid heartbeat value 'x'"),
    ("amqp-nothing-listening", f"amqp://guest:{SECRET}@127.0.0.1:{{free}}/%2F", UNREACHABLE,
     "cannot reach RabbitMQ at amqp://***:***@127.0.0.1:"),
    ("amqp-http-at-the-url", "amqp://127.0.0.1:{http}/%2F?stack_timeout=0.3", UNREACHABLE, "nothing answered in AMQP"),
    ("amqp-silent-port", "amqp://127.0.0.1:{silent}/%2F?stack_timeout=0.3", UNREACHABLE, "nothing answered in AMQP"),
    ("amqp-wrong-password", f"amqp://guest:wrong-{SECRET}@{{rabbit}}/%2F", AUTH, "refused the user or password"),
    ("amqp-user-without-password", f"amqp://{SECRET}@{{rabbit}}/%2F", USAGE, "'amqp://***@127.0.0.1:"),
    ("amqp-no-such-vhost", f"amqp://guest:{SECRET}x@{{rabbit}}/no-such-vhost", AUTH, "refused the user or password"),
    ("amqp-no-such-vhost-for-guest", "amqp://guest:guest@{rabbit}/no-such-vhost", USAGE,
     "has no vhost 'no-such-vhost'"),
]


def can_work(url: str) -> bool:
    try:
        return bool(lab.urls.check_url(url))
    except lab.urls.BadUrl:
        return False


# The entry points' plumbing is swept on Redis above; on RabbitMQ, a sender that only sends, one that waits for a
# result, one that keeps a counter in Redis (without a Redis beside RabbitMQ it says so: exit 2), and the lab's.
AMQP_SENDERS = ["e01", "e04", "e05 count", "e13", "lab run", "lab status", "lab purge"]
NEEDS_REDIS_BESIDE = {"e05 count"}


@pytest.mark.parametrize(("name", "template", "code", "says"), AMQP_URLS, ids=[u[0] for u in AMQP_URLS])
@pytest.mark.parametrize("entry", AMQP_SENDERS)
def test_every_entry_point_fails_in_one_line_with_its_exit_code_on_rabbitmq(entry, name, template, code, says,
                                                                           servers, rabbitmq_server, monkeypatch,
                                                                           capsys):
    url = url_for(template.replace("{rabbit}", f"127.0.0.1:{rabbitmq_server.port}"), servers)
    outcome = run(SENDERS[entry], url, monkeypatch, capsys)
    if entry in NEEDS_REDIS_BESIDE and can_work(url):  # the missing Redis comes before any connection
        code, says = USAGE, "this needs a Redis beside RabbitMQ (amqp://"
    assert_one_line(outcome, code, says)


ARGUMENTS = [
    (["e01_hello_world.py", "abc"], "Invalid value for 'N': 'abc' is not a valid integer range."),
    (["e01_hello_world.py", "-5"], "Invalid value for 'N': -5 is not in the range 0<=x<=10000."),
    (["e01_hello_world.py", "1000000000000"], "1000000000000 is not in the range 0<=x<=10000."),
    (["e01_hello_world.py"], "Missing argument 'N'."),
    (["e01_hello_world.py", "5", "--bogus"], "No such option '--bogus'."),
    (["e02_error_handling.py", "nosuch", "3"], "No such command 'nosuch'."),
    (["e02_error_handling.py", "unhandled", "-1"], "-1 is not in the range x>=0."),
    (["e02_error_handling.py", "unhandled", "3", "--max-retries", "x"], "'x' is not a valid integer range."),
    (["e02_error_handling.py", "unhandled", "3", "--min-backoff", "9000"], "9000 is above the max backoff"),
    (["e03_delays.py", "send", "-5"], "-5 is not in the range 0<=x<=604800000."),
    (["e03_delays.py", "send", "1.5"], "'1.5' is not a valid integer."),
    (["e03_delays.py", "at", "25:00"], "'25:00' does not match the formats"),
    (["e03_delays.py", "batch", "0"], "0 is not in the range 1<=x<=10000."),
    (["e03_delays.py", "measure", "--worker-timeout", "0"], "0 is not in the range 10<=x<=10000."),
    (["e04_pipelines.py", "pipeline", "-1"], "-1 is not in the range 0<=x<=1000000."),
    (["e04_pipelines.py", "group", "3", "--fail", "4"], "4 is not a member of a group of 3"),
    (["e04_pipelines.py", "group", "1001"], "1001 is not in the range 1<=x<=1000."),
    (["e05_crash_recovery.py", "deposit", "0"], "Invalid value for 'N': 0 is not in the range 1<=x<=10000."),
    (["e05_crash_recovery.py", "deposit", "x"], "Invalid value for 'N': 'x' is not a valid integer range."),
    (["e05_crash_recovery.py", "deposit", "3", "--amount", "1001"], "1001 is not in the range -1000<=x<=1000."),
    (["e05_crash_recovery.py", "deposit", "3", "--ms", "-1"], "-1 is not in the range 0<=x<=60000."),
    (["e05_crash_recovery.py", "poison", "--max-deliveries", "x"], "'x' is not a valid integer range."),
    (["e05_crash_recovery.py", "count", "--reset", "now"], "Got unexpected extra argument (now)."),
    (["e05_crash_recovery.py", "nosuch"], "No such command 'nosuch'."),
    (["e06_priorities.py", "flood", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=10000."),
    (["e06_priorities.py", "flood", "x"], "Invalid value for 'COUNT': 'x' is not a valid integer range."),
    (["e06_priorities.py", "flood", "3", "--ms", "-1"], "-1 is not in the range 0<=x<=60000."),
    (["e06_priorities.py", "crunch", "10001"], "10001 is not in the range 1<=x<=10000."),
    (["e06_priorities.py", "greet"], "Missing argument 'NAME'."),
    (["e06_priorities.py", "greet", "x" * 101], "Invalid value for 'NAME': 101 characters; a name has 1 to 100"),
    (["e06_priorities.py", "measure", "--ms", "0"], "0 is not in the range 1<=x<=1000."),
    (["e07_scheduling.py", "next", "61 * * * *"], "Invalid value for 'CRONTAB': Error validating expression '61'"),
    (["e07_scheduling.py", "next", "* * *"], "Invalid value for 'CRONTAB': 3 fields; a crontab has 5"),
    (["e07_scheduling.py", "next", "0 9 * * 8"], "day of week '8': from 0 to 7, Sunday being 0 and 7"),
    (["e07_scheduling.py", "next", "0 0 31 2 *"], "it never fires: no date matches all its fields"),
    (["e07_scheduling.py", "next", "0 9 * * *", "--tz", "Mars/Base"], "--tz: no time zone 'Mars/Base'"),
    (["e07_scheduling.py", "scheduler", "--every", "0"], "0 is not in the range 1<=x<=59."),
    (["e07_scheduling.py", "scheduler", "--cron", "every day"], "Invalid value for --cron: 2 fields; a crontab has 5"),
    (["e08_time_limits.py", "spin", "abc"], "Invalid value for 'MS': 'abc' is not a valid integer range."),
    (["e08_time_limits.py", "spin", "-5"], "-5 is not in the range 0<=x<=600000."),
    (["e08_time_limits.py", "nap", "10", "--limit", "0"], "'--limit': 0 is not in the range 1<=x<=600000."),
    (["e08_time_limits.py", "tidy", "10", "--max-age", "0"], "Invalid value for '--max-age': 0 is not in the range"),
    (["e08_time_limits.py", "flaky", "11"], "Invalid value for 'FAILURES': 11 is not in the range 0<=x<=10."),
    (["e08_time_limits.py", "spin", "10", "--delay", "-1"], "-1 is not in the range 0<=x<=604800000."),
    (["e08_time_limits.py", "sleep", "3"], "No such command 'sleep'."),
    (["e09_rate_limits.py", "send", "nosuch", "3"], "Invalid value for 'KIND': 'nosuch' is not one of"),
    (["e09_rate_limits.py", "send", "free", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=1000."),
    (["e09_rate_limits.py", "send", "free", "3", "--hold", "0"], "0 is not in the range 1<=x<=60000."),
    (["e09_rate_limits.py", "send", "patient", "3", "--limit", "101"], "101 is not in the range 1<=x<=100."),
    (["e09_rate_limits.py", "send", "free"], "Missing argument 'COUNT'."),
    (["e10_throughput.py", "--runs", "2"], "Invalid value for '--runs': 2 is not in the range"),
    (["e10_throughput.py", "--runs", "x"], "Invalid value for '--runs': 'x' is not a valid integer range."),
    (["e10_throughput.py", "--json", "--rst"], "--json and --rst each print the whole report: choose one."),
    (["e10_throughput.py", "--quick", "--bogus"], "No such option '--bogus'."),
    (["e10_throughput.py", "-5"], "Got unexpected extra argument (-5)"),
    (["e11_testing.py", "receipt", "0"], "Invalid value for 'COUNT': 0 is not in the range 1<=x<=100."),
    (["e11_testing.py", "receipt", "abc"], "'abc' is not a valid integer range."),
    (["e11_testing.py", "receipt", "2", "--product", "9"], "'9' is not one of '1', '2', '3'."),
    (["e11_testing.py", "remind", "ada@example.com", "--in", "-5"], "-5 is not in the range 0<=x<=604800000."),
    (["e11_testing.py", "remind"], "Missing argument 'EMAIL'."),
    (["e12_async_and_middleware.py", "nap", "0"], "0 is not in the range 1<=x<=100."),
    (["e12_async_and_middleware.py", "report", "1001"], "1001 is not in the range 1<=x<=1000."),
    (["e12_async_and_middleware.py", "switch", "maybe"], "'on|off': 'maybe' is not one of 'on', 'off'."),
    (["e12_async_and_middleware.py", "switch"], "Missing argument 'on|off'."),
    (["e12_async_and_middleware.py", "switch", "off", "--name", "emails"], "'emails' is not 'reports'."),
    (["e14_web_app.py", "runserver", "70000"], "Invalid value for '[PORT]': 70000 is not in the range 1<=x<=65535."),
    (["e14_web_app.py", "rundramatiq", "-t", "0"], "Invalid value for '--threads' / '-t': 0 is not in the range"),
    (["e14_web_app.py", "rundramatiq", "-Q", "default,email"],
     "Invalid value for --queues: 'default,email' is one queue name with commas in it; repeat -Q for each queue"),
    (["e14_web_app.py", "serve"], "No such command 'serve'."),
    (["e15_monitoring.py", "hold", "--timeout", "0"], "0 is not in the range 1<=x<=3600."),
    (["e15_monitoring.py", "mix", "3"], "Got unexpected extra argument (3)."),
    (["-m lab", "run", "e77"], "no experiment 'e77'"),
    (["-m lab", "run", "²"], "no experiment '²'"),
    (["-m lab", "nosuch"], "No such command 'nosuch'."),
    (["-m lab", "status", "--interval", "0.1"], "0.1 is not in the range 0.2<=x<=3600."),
    (["-m lab", "status", "--interval", "nan"], "'nan' is not a number of seconds from 0.2 to 3600."),
    (["-m lab", "status", "--interval", "inf"], "inf is not in the range 0.2<=x<=3600."),
    (["-m lab", "status", "--redis", ""], "'' is not a valid Redis URL"),
    (["-m lab", "run", "e01", "--redis", ""], "'' is not a valid Redis URL"),
    (["-m lab", "purge", "e01", "--redis", ""], "'' is not a valid Redis URL"),
    # What only a command's body can check: empty strings, and options that exclude each other
    (["e06_priorities.py", "greet", ""], "Invalid value for 'NAME': 0 characters; a name has 1 to 100"),
    (["e07_scheduling.py", "next", ""], "Invalid value for 'CRONTAB': 0 fields; a crontab has 5"),
    (["e07_scheduling.py", "next", "0 9 * * *", "--tz", ""], "Invalid value for --tz: no time zone ''"),
    (["e07_scheduling.py", "next", "0 9 * * *", "--tz", "../etc/passwd"], "no time zone '../etc/passwd'"),
    (["e07_scheduling.py", "scheduler", "--cron", ""], "Invalid value for --cron: 0 fields; a crontab has 5"),
    (["e07_scheduling.py", "scheduler", "--tz", "Nowhere/City"], "Invalid value for --tz: no time zone 'Nowhere/City'"),
    (["e07_scheduling.py", "scheduler", "--every", "1", "--tz", "Nowhere/City"], "no time zone 'Nowhere/City'"),
    (["e07_scheduling.py", "scheduler", "--every", "1", "--cron", "61 * * * *"],
     "--cron and --every exclude each other: choose one."),
    (["e07_scheduling.py", "scheduler", "--every", "1", "--cron", "* * * * *"],  # even a valid crontab
     "--cron and --every exclude each other: choose one."),
    (["-m lab", "status", "--redis", "memory://"], "memory:// lives inside one process"),
    (["-m lab", "serve", "--port", "70000"], "70000 is not in the range 0<=x<=65535."),
]


@pytest.mark.parametrize(("argv", "says"), ARGUMENTS, ids=[" ".join(a) for a, _ in ARGUMENTS])
def test_every_bad_argument_is_a_one_line_usage_error(argv, says, monkeypatch, capsys):
    # No Redis at the URL: a command that took the input would fail with 3, not send, run or wait.
    outcome = run(argv, f"redis://127.0.0.1:{free_port()}/0", monkeypatch, capsys)
    assert_one_line(outcome, USAGE, says)


def test_purge_of_an_unknown_queue_is_a_one_line_usage_error(real_redis_url, monkeypatch, capsys):
    outcome = run(["-m lab", "purge", "nosuch", "--yes", "--redis", real_redis_url], real_redis_url,
                  monkeypatch, capsys)
    assert_one_line(outcome, USAGE, "no queue 'nosuch'")


# -- every option and argument of every command, found by walking the click commands ----------------

EXPERIMENTS = sorted(path.name for path in ROOT.glob("e[0-9][0-9]_*.py"))

# For each command, arguments it accepts: the sweep swaps one of them, or adds one option, for a bad value.
VALID_ARGUMENTS = {
    ("e01_hello_world.py",): ["5"],
    **{("e02_error_handling.py", name): ["3"] for name in ("handled", "unhandled", "aborted", "postponed")},
    ("e02_error_handling.py", "dead-letters"): [],
    ("e03_delays.py", "send"): ["100"], ("e03_delays.py", "at"): ["12:00"], ("e03_delays.py", "batch"): ["3"],
    ("e03_delays.py", "measure"): [],
    ("e04_pipelines.py", "pipeline"): ["3"], ("e04_pipelines.py", "group"): ["3"],
    ("e05_crash_recovery.py", "deposit"): ["1"], ("e05_crash_recovery.py", "poison"): [],
    ("e05_crash_recovery.py", "count"): [],
    ("e06_priorities.py", "flood"): ["3"], ("e06_priorities.py", "crunch"): ["3"],
    ("e06_priorities.py", "greet"): ["ada"], ("e06_priorities.py", "measure"): [],
    ("e07_scheduling.py", "scheduler"): [], ("e07_scheduling.py", "next"): ["0 9 * * *"],
    **{("e08_time_limits.py", name): ["10"] for name in ("spin", "nap", "tidy", "spin_once")},
    ("e08_time_limits.py", "flaky"): ["1"],
    ("e09_rate_limits.py", "send"): ["free", "2"], ("e09_rate_limits.py", "report"): [],
    ("e09_rate_limits.py", "burst"): [],
    ("e10_throughput.py",): [],
    ("e11_testing.py", "demo"): [], ("e11_testing.py", "receipt"): ["2"], ("e11_testing.py", "remind"): ["a@b.c"],
    ("e12_async_and_middleware.py", "nap"): ["1"], ("e12_async_and_middleware.py", "whoami"): [],
    ("e12_async_and_middleware.py", "report"): ["1"], ("e12_async_and_middleware.py", "switch"): ["off"],
    ("e13_rabbitmq.py", "work"): ["1"], ("e13_rabbitmq.py", "greet"): [], ("e13_rabbitmq.py", "fail"): [],
    ("e14_web_app.py", "migrate"): [], ("e14_web_app.py", "runserver"): ["8014"], ("e14_web_app.py", "rundramatiq"): [],
    **{("e15_monitoring.py", name): [] for name in ("mix", "hold", "release", "scrape")},
    **{("-m lab", name): [] for name in ("serve", "status", "canary", "list", "dashboard", "rabbitmq")},
    ("-m lab", "purge"): ["e01"], ("-m lab", "run"): ["e01"],
}

LONG_NUMBER = "9" * 5000  # int() refuses it: Python's limit is 4,300 digits


def bad_values(param: click.Parameter) -> list[str]:
    """Values that ``param``'s type must refuse while click parses (strings and paths: their commands check)."""
    kind = param.type
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):  # with IntRange, FloatRange
        values = ["abc", "²", "", LONG_NUMBER, "1.5" if isinstance(kind, click.types.IntParamType) else "nan"]
        low, high = getattr(kind, "min", None), getattr(kind, "max", None)
        values += [str(low - 1)] if low is not None else []
        values += [str(high + 1), "inf"][:1 if isinstance(kind, click.types.IntParamType) else 2] if high else []
        return values
    if isinstance(kind, click.Choice):
        return ["nosuch", ""]
    if isinstance(kind, click.DateTime):
        return ["noon", ""]
    if isinstance(kind, click.types.BoolParamType) and not getattr(param, "is_flag", False):
        return ["maybe", ""]
    return []


def commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``command``, with the words that reach it."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))
    else:
        yield path, command


def load(script: str, url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``script``'s module (not its ``__main__``) as a new process would; its globals."""
    monkeypatch.setenv(lab.URL_ENV, url)
    monkeypatch.setattr(lab.broker, "_broker", None)
    monkeypatch.setattr(lab.urls, "_in_use", None)
    return runpy.run_path(str(ROOT / script), run_name="bad_input_sweep")


class Accepted(Exception):
    """Raised instead of running a command whose arguments click accepted."""


def accepted(**params: Any) -> None:
    """A command's stand-in: the sweep only wants to know whether click accepted its arguments."""
    raise Accepted(params)


@pytest.mark.parametrize("script", [*EXPERIMENTS, "-m lab"])
def test_every_option_and_argument_of_every_command_refuses_a_bad_value_in_one_line(script, monkeypatch, capsys):
    # Given every command of one entry point, its options and arguments found by walking its click commands,
    # and a command that never runs: if click accepts the arguments, the test learns it
    main = cli if script == "-m lab" else load(script, lab.MEMORY_URL, monkeypatch)["main"]
    prog = "python -m lab" if script == "-m lab" else script
    found, refused = [], []
    for path, command in commands(main):
        assert (script, *path) in VALID_ARGUMENTS, f"{script} {' '.join(path)}: add it to VALID_ARGUMENTS"
        valid = VALID_ARGUMENTS[(script, *path)]
        monkeypatch.setattr(command, "callback", accepted)
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        for param in command.params:
            hint = param.get_error_hint(click.Context(command))
            for value in bad_values(param):
                # when one of them gets a bad value (an argument swapped for it, or an option added with it)
                if isinstance(param, click.Argument):
                    argv = [*path, *valid[:arguments.index(param)], value, *valid[arguments.index(param) + 1:]]
                else:
                    argv = [*path, *valid, param.opts[0], value]
                found.append(argv)
                try:
                    main.main(argv, prog_name=prog)
                    code = 0
                except SystemExit as exc:
                    code = exc.code
                except Accepted:
                    code = "accepted"
                err = capsys.readouterr().err
                # then it is refused while click parses: exit 2, one short line that names it
                if not (code == USAGE and err.count("\n") == 1 and hint in err and len(err) < 300
                        and err.startswith(f"{prog}: ")):
                    refused.append(f"{' '.join(argv)[:60]!r}: {code}, {err[:200]!r}")
    assert found and refused == [], "\n".join(refused)


# -- settings read from the environment -----------------------------------------------------------

# Values int() refuses ("²" although "²".isdigit(), "" and 5,000 digits) or that are not whole numbers.
BAD_NUMBERS = ["abc", "²", "", "-1", "1.5", " 5", "0x10", LONG_NUMBER]
# int() takes "٣" (Arabic-Indic 3); the lab's settings want the digits 0 to 9.
NOT_ASCII = "٣"


def test_no_experiment_reads_the_environment_but_through_lab_settings():
    for script in EXPERIMENTS:
        source = (ROOT / script).read_text()
        assert not re.search(r"\bos\.(environ|getenv)\b|\bgetenv\(", source), f"{script}: use lab.settings"


def test_every_setting_an_experiment_reads_from_the_environment_refuses_a_bad_value_in_one_line(monkeypatch,
                                                                                                  capsys):
    # Given the settings each experiment asks lab.settings for when it is imported (found by recording them)
    asked: list[tuple[str, str, int, int]] = []
    whole_number = lab.settings.whole_number
    script = ""

    def recording(variable: str, low: int, high: int) -> int | None:
        asked.append((script, variable, low, high))
        return whole_number(variable, low, high)

    monkeypatch.setattr(lab.settings, "whole_number", recording)
    for script in EXPERIMENTS:
        load(script, lab.MEMORY_URL, monkeypatch)
    monkeypatch.setattr(lab.settings, "whole_number", whole_number)
    assert {(s, v) for s, v, _, _ in asked} >= {("e05_crash_recovery.py", "e05_heartbeat_timeout"),
                                               ("e05_crash_recovery.py", "e05_maintenance_chance")}, asked
    # when one is set to a value that is not a whole number in its range
    refused = []
    for script, variable, low, high in asked:
        for value in [*BAD_NUMBERS, NOT_ASCII, str(high + 1), *([str(low - 1)] if low > 0 else [])]:
            monkeypatch.setenv(variable, value)
            try:
                load(script, lab.MEMORY_URL, monkeypatch)
                code = 0 if value else USAGE  # empty: unset, as for DRAMATIQ_REDIS_URL
            except SystemExit as exc:
                code = exc.code
            err = capsys.readouterr().err
            # then the experiment does not start: one short line that names it and its range, exit 2
            says = f"{script}: {variable}=" if value else ""
            if code != USAGE or (value and not (err.count("\n") == 1 and err.startswith(says) and len(err) < 200
                                                and f"must be a whole number from {low} to {high}" in err)):
                refused.append(f"{variable}={value[:20]!r}: {code}, {err[:200]!r}")
        monkeypatch.delenv(variable)
    assert refused == [], "\n".join(refused)


def test_the_lab_checks_every_number_dramatiq_reads_from_the_environment():
    # Dramatiq 2.2.1 reads these with int() or its getenv_int(); the lab checks them all, those of the
    # RabbitMQ broker (e13) and of the Prometheus middleware (e15) included
    source = Path(dramatiq.__file__).parent
    read = {name for path in source.rglob("*.py")
            for name in re.findall(r"(?:int\(os\.getenv|getenv_int)\(\s*\"(dramatiq_\w+)\"", path.read_text())}
    barrier_ttl = "dramatiq_group_callback_barrier_ttl"  # read as a string, then int()
    assert read | {barrier_ttl} == set(DRAMATIQ)


def test_dramatiq_settings_are_refused_in_one_line_before_dramatiq_reads_them(monkeypatch, capsys):
    refused = []
    for variable, (low, high, _) in DRAMATIQ.items():
        for value in [*BAD_NUMBERS, NOT_ASCII, str(high + 1), *([str(low - 1)] if low > 0 else [])]:
            monkeypatch.setenv(variable, value)
            with pytest.raises(SystemExit) as exited:
                check_dramatiq_environment()
            err = capsys.readouterr().err
            if exited.value.code != USAGE or err.count("\n") != 1 or f" {variable}=" not in err or len(err) > 200:
                refused.append(f"{variable}={value[:20]!r}: {exited.value.code}, {err[:200]!r}")
        for value in (str(low), str(high)):  # the ends of the range pass
            monkeypatch.setenv(variable, value)
            check_dramatiq_environment()
        monkeypatch.delenv(variable)
    assert refused == [], "\n".join(refused)


@pytest.mark.e2e
def test_every_entry_point_checks_dramatiq_settings_before_it_imports_dramatiq():
    # Given a setting Dramatiq would die on at import (the README tells learners to set this one)
    env = lab_env(lab.MEMORY_URL, dramatiq_queue_prefetch="abc")
    # when each sender and `python -m lab` starts: `import lab` comes before `import dramatiq`
    entries = {script: [script, "--help"] for script in EXPERIMENTS} | {"python -m lab": ["-m", "lab", "list"]}
    started = {prog: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for prog, argv in entries.items()}
    for prog, process in started.items():
        out, err = process.communicate(timeout=30)
        # then it stops there: one line and exit 2, not Dramatiq's ValueError
        assert (process.returncode, out, err) == (USAGE, "", f"{prog}: dramatiq_queue_prefetch='abc' must be a whole "
                                                  "number from 0 to 65535; unset it for Dramatiq's default\n"), prog


# -- the worker -----------------------------------------------------------------------------------

# (what, module, URL, environment, exit code, its one error line, whether that line comes with a traceback)
WORKERS = [
    *((name, "e01_hello_world", template, {}, code, says, False) for name, template, code, says in URLS
      if name in ("unparsable", "password-in-query", "wrong-password", "database-out-of-range",
                  "user-without-password-refused")),
    ("e05-setting", "e05_crash_recovery", "redis://127.0.0.1:{free}/0", {"e05_heartbeat_timeout": "²"}, USAGE,
     "python -m dramatiq: e05_heartbeat_timeout='²' must be a whole number from 100 to 86400000", False),
    # read by Dramatiq's Prometheus middleware when e15 imports it, after e15 checked it
    ("prometheus-port", "e15_monitoring", "redis://127.0.0.1:{free}/0", {"dramatiq_prom_port": "9191x"}, USAGE,
     "python -m dramatiq: dramatiq_prom_port='9191x' must be a whole number from 1 to 65535", False),
    # read when dramatiq.brokers.redis is imported: by the experiment, after `import lab`
    ("dramatiq-setting-read-by-the-broker", "e01_hello_world", "redis://127.0.0.1:{free}/0",
     {"dramatiq_lua_max_stack": "x"}, USAGE, "python -m dramatiq: dramatiq_lua_max_stack='x' must be", False),
    # read when the dramatiq CLI imports dramatiq, before any of the lab's code: Dramatiq's own error
    ("dramatiq-setting-read-by-the-cli", "e01_hello_world", "redis://127.0.0.1:{free}/0",
     {"dramatiq_queue_prefetch": "abc"}, 1, "ValueError: invalid literal for int() with base 10: 'abc'", True),
]


@pytest.mark.e2e
def test_a_worker_fails_at_boot_with_its_exit_code_and_one_error_line(servers):
    # The workers boot side by side: each takes about a second to import and fail.
    workers = {name: (WorkerProcess(["--processes", "1", module], url=url_for(template, servers), **env), code, says,
                      traceback) for name, module, template, env, code, says, traceback in WORKERS}
    try:
        for name, (worker, code, says, traceback) in workers.items():
            assert worker.wait(timeout=20) == code, f"{name}: {worker.output}"
            ours = [line for line in worker.output.splitlines() if says in line]
            assert len(ours) == 1, f"{name}: {worker.output}"
            assert ("Traceback" in worker.output) == traceback, f"{name}: {worker.output}"
            assert SECRET not in worker.output, f"{name}: {worker.output}"
    finally:
        for worker, _, _, _ in workers.values():
            worker.close(kill=True)


# -- Ctrl-C while a command waits -------------------------------------------------------------------

# (entry point, arguments, what says it waits: a line of its output, a Redis key of its namespace (NS) or
# of a run, or a `dramatiq` worker it started; the exit code after Ctrl-C)
WAITING = [
    # (its message due in 30 s: it still waits when the slowest of these is ready, on a loaded machine too)
    ("e03 measure", ["e03_delays.py", "measure", "--count", "1", "--spread", "30000"], "key NS:*", 130),
    ("e04 pipeline", ["e04_pipelines.py", "pipeline", "2"], "out ^sent pipeline", 130),
    ("e04 group", ["e04_pipelines.py", "group", "2"], "out ^sent a group", 130),
    ("e06 flood --wait", ["e06_priorities.py", "flood", "2", "--wait"], "out ^sent 2 x sleepy", 130),
    ("e06 crunch --wait", ["e06_priorities.py", "crunch", "2", "--wait"], "out ^sent 2 x crunch", 130),
    ("e07 scheduler", ["e07_scheduling.py", "scheduler", "--every", "1"], "out ^scheduler pid", 130),
    ("e10", ["e10_throughput.py", "--quick"], "worker", 130),
    ("e12 whoami", ["e12_async_and_middleware.py", "whoami"], "out ^sent async_whoami", 130),
    # (all of them, 45 s: e03 alone, 5 s, had once ended when the slowest of these was ready)
    ("lab run", ["-m", "lab", "run", "all", "--redis", "{url}"], "key lab-run-*", 130),
    ("lab purge", ["-m", "lab", "purge", "e01", "--redis", "{url}"], r"out \[y/N\]", 130),
    # (off a terminal the live view draws nothing until it ends; --json prints each refresh)
    ("lab status --watch", ["-m", "lab", "status", "--watch", "--json", "--redis", "{url}"], "out ^[{]", 0),
    ("lab serve", ["-m", "lab", "serve", "--port", "0"], "out ready on", 0),
]
MARK = "LAB_SWEEP"  # each process started here, and what it starts in turn, carries its own value


@dataclass
class Waiting:
    name: str
    process: subprocess.Popen
    out: Path
    err: Path
    mark: str

    @property
    def prog(self) -> str:
        return "python -m lab" if self.process.args[1] == "-m" else self.process.args[1]


@pytest.fixture
def waiting_commands(real_redis_url, tmp_path) -> Iterator[list[Waiting]]:
    """Start every WAITING command, each in a session of its own as a terminal's job is; all gone at teardown."""
    started = []
    for number, (name, argv, _, _) in enumerate(WAITING):
        mark = secrets.token_hex(4)
        out, err = tmp_path / f"{number}.out", tmp_path / f"{number}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, *(a.format(url=real_redis_url) for a in argv)], cwd=ROOT, stdin=subprocess.PIPE,
                stdout=stdout, stderr=stderr, start_new_session=True,
                env=lab_env(real_redis_url, **{lab.urls.NAMESPACE_ENV: f"ctrl-c-{number}", MARK: mark}))
        started.append(Waiting(name, process, out, err, mark))
    yield started
    for command in started:
        if command.process.poll() is None:
            os.killpg(command.process.pid, signal.SIGKILL)
        command.process.wait()
        command.process.stdin.close()


@pytest.mark.e2e
def test_ctrl_c_while_a_command_waits_ends_it_in_one_line_and_leaves_nothing_behind(real_redis_url,
                                                                                   waiting_commands):
    # Given every command that waits, each waiting (purge at its question: there is a message to purge)
    client = redis.Redis.from_url(real_redis_url)
    purge_me = lab.make_broker(real_redis_url)
    purge_me.enqueue(dramatiq.Message(queue_name="e01", actor_name="count_to", args=(1,), kwargs={}, options={}))
    purge_me.close()

    def waits(command: Waiting, ready: str) -> bool:
        kind, _, what = ready.partition(" ")
        if command.process.poll() is not None:
            return True  # it ended: the assertions below say how
        if kind == "out":
            return re.search(what, command.out.read_text(), flags=re.MULTILINE) is not None
        if kind == "key":
            return bool(client.keys(what.replace("NS", f"ctrl-c-{waiting_commands.index(command)}")))
        return any(b"dramatiq" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in carrying(MARK, command.mark) if Path(f"/proc/{pid}").exists())

    readiness = dict(zip((c.name for c in waiting_commands), (ready for _, _, ready, _ in WAITING), strict=True))
    assert lab.wait_until(lambda: all(waits(c, readiness[c.name]) for c in waiting_commands), timeout=60), [
        (c.name, c.err.read_text()[-300:]) for c in waiting_commands if not waits(c, readiness[c.name])]
    # when the user presses Ctrl-C (SIGINT to its process group, as a terminal sends it)
    for command in waiting_commands:
        assert command.process.poll() is None, (command.name, command.err.read_text())
        os.killpg(command.process.pid, signal.SIGINT)
    # then each ends with its exit code (130, or 0 for those that run until stopped), its one line and no
    # traceback, and no process it started is left
    for command, (_, _, _, code) in zip(waiting_commands, WAITING, strict=True):
        assert command.process.wait(timeout=30) == code, (command.name, command.err.read_text())
        err = command.err.read_text()
        assert "Traceback" not in err, (command.name, err)
        assert code == 0 or err.splitlines()[-1] == f"{command.prog}: interrupted (Ctrl-C)", (command.name, err)
    for command in waiting_commands:
        assert lab.wait_until(lambda: not carrying(MARK, command.mark), timeout=10), (  # noqa: B023
            command.name, [Path(f"/proc/{pid}/cmdline").read_bytes()[:100] for pid in carrying(MARK, command.mark)])
    client.close()
