"""Bad input, swept across every entry point: one line, its exit code, no traceback, no password.

The entry points are the senders (``python eNN_*.py ...``), every ``python -m
lab`` command, and a ``dramatiq`` worker. The inputs are the ones a new user
types: wrong types, numbers out of range, unknown names, URLs that cannot
work, passwords in the user part and in the query, a refused or missing
password, a database the server does not have, something that is not Redis
at the URL, and a port that never answers.

The senders and the lab's commands run in this process, as ``python
script.py ARGS`` would run them (``runpy`` with ``__main__``, the same
``sys.exit``); the worker runs as a real ``dramatiq`` process.
"""

from __future__ import annotations

import runpy
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import lab
from conftest import RedisServer, WorkerProcess, free_port, need_redis_server
from lab.cli import cli

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
    (["e10_throughput.py", "--runs", "2"], "Invalid value for '--runs': 2 is not in the range 3<=x<=10."),
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
    (["e12_async_and_middleware.py", "switch", "maybe"], "'maybe' is not a valid boolean."),
    (["e12_async_and_middleware.py", "switch"], "Missing argument 'on|off'."),
    (["e12_async_and_middleware.py", "switch", "off", "--name", "emails"], "'emails' is not 'reports'."),
    (["-m lab", "run", "e77"], "no experiment 'e77'"),
    (["-m lab", "run", "²"], "no experiment '²'"),
    (["-m lab", "nosuch"], "No such command 'nosuch'."),
    (["-m lab", "status", "--interval", "0.1"], "0.1 is not in the range x>=0.2."),
    (["-m lab", "status", "--redis", "memory://"], "memory:// lives inside one process"),
    (["-m lab", "serve", "--port", "70000"], "70000 is not in the range 0<=x<=65535."),
]


@pytest.mark.parametrize(("argv", "says"), ARGUMENTS, ids=[" ".join(a) for a, _ in ARGUMENTS])
def test_every_bad_argument_is_a_one_line_usage_error(argv, says, monkeypatch, capsys):
    outcome = run(argv, lab.MEMORY_URL, monkeypatch, capsys)
    assert_one_line(outcome, USAGE, says)


def test_purge_of_an_unknown_queue_is_a_one_line_usage_error(real_redis_url, monkeypatch, capsys):
    outcome = run(["-m lab", "purge", "nosuch", "--yes", "--redis", real_redis_url], real_redis_url,
                  monkeypatch, capsys)
    assert_one_line(outcome, USAGE, "no queue 'nosuch'")


WORKER_URLS = [u for u in URLS if u[0] in ("unparsable", "password-in-query", "wrong-password",
                                            "database-out-of-range")]


@pytest.mark.e2e
def test_a_worker_fails_at_boot_with_its_exit_code_and_one_error_line(servers):
    # The four workers boot side by side: each takes about a second to import and fail.
    command = ["--processes", "1", "e01_hello_world"]
    workers = {name: (WorkerProcess(command, url=url_for(template, servers)), code, says)
               for name, template, code, says in WORKER_URLS}
    try:
        for name, (worker, code, says) in workers.items():
            assert worker.wait(timeout=20) == code, f"{name}: {worker.output}"
            ours = [line for line in worker.output.splitlines() if says in line]
            assert len(ours) == 1, f"{name}: {worker.output}"
            assert "Traceback" not in worker.output and SECRET not in worker.output, f"{name}: {worker.output}"
    finally:
        for worker, _, _ in workers.values():
            worker.close(kill=True)
