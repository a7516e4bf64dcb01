"""Fixtures: a broker on fakeredis *and* on a real redis-server, workers, subprocesses.

Every test that asks for ``broker`` runs twice: once on a RedisBroker over
fakeredis (the same Lua scripts, in memory) and once on a real
``redis-server`` that this file starts on a free port. Without redis-server
the second run skips, except in CI (``CI=true``), where it fails.

The rule for every test that README.rst cites for a lesson: it fails when the
lesson becomes false. Assert the value, the order, the count, the log level;
not only that something happened.

Experiment modules bind their actors to the broker that is current when they
are imported, so ``load`` imports (or reloads) them after the broker is set.

Nothing a test starts outlives the test run: servers and workers are stopped
by the fixtures' teardown, which runs on Ctrl-C too, and whatever a crash or a
``kill -9`` of a pytest process leaves is killed by that process's backstop
(``lab.processes.backstop``, started below, in every pytest process).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import lab
from lab import experiments
from lab.processes import (  # noqa: F401 (re-exported)
    RabbitServer,
    RedisServer,
    WorkerProcess,
    backstop,
    free_port,
    lab_env,
)
from lab.rabbitmq_share import close_share, delete_vhost, new_vhost, open_share, shared_rabbit
from lab.server import EmbeddedRedis

import dramatiq
import pytest
import redis

ROOT = experiments.ROOT
IN_CI = os.environ.get("CI", "").lower() == "true"

# Before any test starts a process, in the controller and in each xdist worker: every process
# started from here on, by a fixture or by a test's own subprocess call, dies with this one.
backstop()


def need_redis_server() -> None:
    """Skip the test when redis-server is not installed; in CI, fail it instead."""
    try:
        RedisServer.executable_path()
    except FileNotFoundError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def need_rabbitmq_server() -> None:
    """Skip the test when rabbitmq-server is not installed; in CI, fail it instead."""
    try:
        RabbitServer.executable_path()
    except FileNotFoundError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def pytest_configure(config: pytest.Config) -> None:
    # The run's first process owns the RabbitMQ its tests share (started by the first test that needs it,
    # in whichever xdist worker): the workers it starts inherit the share's directory from its environment.
    if not hasattr(config, "workerinput"):
        config.lab_rabbitmq_share = open_share()
        if config.getoption("numprocesses", None):
            warm_bytecode(config)


def warm_bytecode(config: pytest.Config) -> None:
    """Compile, once and before the xdist workers start, what each of them would otherwise compile at once.

    On a fresh clone every worker rewrote every test module's asserts (pytest's own bytecode cache) and compiled
    the lab, all five together: collection took 3.4 s of CPU in each where 1.7 s is usual, and the whole run
    about 7 s longer (91.9 against 84.8 s, measured once each in one clone). Here it costs 1.7 s once; with
    the caches written, a few milliseconds. It uses pytest's rewriting itself (private, but what the workers
    run), so the cache it writes is the one they read; should that ever change, the workers simply compile.
    """
    if sys.dont_write_bytecode:  # PYTHONDONTWRITEBYTECODE: nothing may be written (README.rst says to unset it)
        return
    import compileall

    compileall.compile_dir(ROOT, maxlevels=0, quiet=2)  # the experiments
    for package in ("lab", "scenarios", "benchmarks", "e14_web_app_site"):
        compileall.compile_dir(ROOT / package, quiet=2)
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        (ROOT / "tests" / "__pycache__").mkdir(exist_ok=True)
        for test in sorted((ROOT / "tests").glob("*.py")):
            if test.name == "conftest.py" or test.name.startswith("test_"):  # what pytest rewrites here
                pyc = ROOT / "tests" / "__pycache__" / (test.name[:-3] + rewrite.PYC_TAIL)
                if rewrite._read_pyc(test, pyc) is None:
                    source_hash, code = rewrite._rewrite_test(test, config)
                    rewrite._write_pyc(state, code, source_hash, pyc)
    except (ImportError, AttributeError, KeyError, TypeError, OSError):
        pass  # another pytest: the workers rewrite for themselves, as they would without this


def pytest_collection_finish(session: pytest.Session) -> None:
    # The run's RabbitMQ takes 7 to 9 s of a core to start: start it now, in the background, if a collected test
    # will need it, rather than when the first one asks. (Each xdist worker collects everything and asks; the
    # share's lock lets one start it. A failure is the fixture's to report, to the test that asks.)
    if any("rabbitmq_server" in getattr(item, "fixturenames", ()) for item in session.items):
        with contextlib.suppress(FileNotFoundError):
            RabbitServer.executable_path()
            threading.Thread(target=_start_shared_rabbit, name="lab-rabbitmq-warm-up", daemon=True).start()


def _start_shared_rabbit() -> None:
    with contextlib.suppress(Exception):
        shared_rabbit()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # The shared RabbitMQ is `python -m lab rabbitmq`, as a learner starts it: Ctrl-C must stop it with exit
    # code 0, its last line, and nothing left. If not, the run fails, saying why.
    share, session.config.lab_rabbitmq_share = getattr(session.config, "lab_rabbitmq_share", None), None
    problem = close_share(share) if share else None
    if problem:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(f"FAILED at the end of the run: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    if getattr(config, "lab_rabbitmq_share", None):  # the session did not finish: still nothing left
        close_share(config.lab_rabbitmq_share)


# The tests that take longest (5 to 35 s on 2 cores), longest first. pytest-xdist's worksteal hands each worker
# an equal slice of the collection at the start and steals only from a slice's tail: a long test deep in a
# slice starts late and ends the run late. So each of these starts a slice (the rest keep their order).
LONG_POLES = [
    "tests/test_lab_run.py::test_run_all_plays_every_scenario_in_one_process",
    # a RabbitMQ of its own, started then restarted
    "tests/test_e13_private_servers.py::test_a_task_longer_than_consumer_timeout_is_delivered_again_and_runs_twice",
    "tests/test_e10_throughput.py::test_a_tiny_run_ran_every_message_it_sent_exactly_once",  # e10_tiny
    "tests/test_bad_input.py::test_ctrl_c_while_a_command_waits_ends_it_in_one_line_and_leaves_nothing_behind",
    # (not e05_crashes: its first phase wants its worker's two children to boot about together, which they
    # may not while the first tests above start some 20 processes)
    "tests/test_e07_scheduling.py::test_each_scheduler_process_sends_once_per_fire_time_and_stops_cleanly",
    "tests/test_e02_error_handling.py::test_worker_cli_retries_dead_letters_and_stops_cleanly",
    "tests/test_e01_hello_world.py::test_watch_reloads_the_worker_when_a_watched_file_changes",
    "tests/test_e01_hello_world.py::test_one_worker_runs_two_experiments",
    # the scenarios on redis-server and on RabbitMQ, mostly waiting: they fill the cores' gaps early rather than
    # end the run late (last in the collection, five of them once ran one after another, the last 4.4 s alone);
    # not e05's (see above) nor the replays LAB_REPLAYS=1 runs (the suite skips those)
    *(f"tests/test_lab_run.py::test_every_scenario_holds_every_lesson[{name}]" for name in (
        "e12_async_and_middleware", "e07_scheduling")),
    *(f"tests/test_lab_run.py::test_a_scenario_that_holds_on_both_brokers_holds_on_rabbitmq[{name}]" for name in (
        "e09_rate_limits", "e07_scheduling")),
]


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))  # set in each xdist worker, which collects
    long = [item for name in LONG_POLES for item in items if item.nodeid == name]
    if workers < 2 or not long:
        return
    rest = [item for item in items if item not in long]
    slices: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for index, item in enumerate(long):
        slices[index % workers].append(item)
    ordered, left = [], len(items)
    for number, chunk in enumerate(slices):  # the sizes worksteal gives: what is left over the workers left
        size = left // (workers - number)
        take = max(size - len(chunk), 0)
        ordered += chunk + rest[:take]
        rest, left = rest[take:], left - len(chunk) - take
    items[:] = ordered + rest


@pytest.fixture(scope="session")
def once(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Callable[..., Any]:
    """``once(name, make, object_hook=None)``: what ``make()`` returned, through JSON, made once for the whole run.

    For a run of real processes that several test files assert on (say e05's crashes: its own tests and
    its scenario's run in test_lab_run.py). Under pytest-xdist the first process to ask makes it, under a
    file lock in the run's shared temporary directory, and the others wait and read it (the pattern
    pytest-xdist documents for a fixture that must run once). A failure is not saved: each asker fails.
    """
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared

    def get(name: str, make: Callable[[], Any], object_hook: Callable[[dict], Any] | None = None) -> Any:
        saved = shared / f"once-{name}.json"
        with open(shared / f"once-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not saved.exists():
                saved.write_text(json.dumps(make()))
        return json.loads(saved.read_text(), object_hook=object_hook)

    return get


@pytest.fixture(scope="session")
def e05_crashes(once) -> SimpleNamespace:
    """e05's phases with real processes and signals (``scenarios/e05_crash_recovery.play_crashes``), played
    once per test run on a private redis-server: e05's tests and its scenario in test_lab_run.py read them."""
    need_redis_server()

    def play() -> dict:
        scene = importlib.import_module("scenarios.e05_crash_recovery")
        with RedisServer() as server:
            return asdict(scene.play_crashes(server.url, "e05-tests"))

    # attributes where the keys are names (kills.kills[0].held), a dict where they are words (counts["ran twice"])
    return once("e05-crashes", play,
                object_hook=lambda d: SimpleNamespace(**d) if all(k.isidentifier() for k in d) else d)


@pytest.fixture(scope="session")
def e10_tiny(once, redis_server: str) -> dict[str, Any]:
    """The report of one run of e10's benchmark, its tiny plan (a few hundred messages, real `dramatiq`
    processes), on redis-server, once per test run: e10's tests and its scenario in test_lab_run.py read it."""

    def play() -> dict[str, Any]:
        from benchmarks import e10_bench  # here: only these tests need the benchmark

        broker = lab.use_broker(lab.make_broker(redis_server))
        e10 = experiments.load(experiments.find("e10"))
        try:
            report = e10_bench.measure(e10, redis_server, e10_bench.PLANS["tiny"], namespace="e10-test")
            report["keys_after"] = [k.decode() for k in broker.client.scan_iter("e10-test*")]
            return report
        finally:
            broker.close()

    return once("e10-tiny", play)


@pytest.fixture(scope="session")
def redis_server_process() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, persistence off, for the whole session."""
    need_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(redis_server_process: RedisServer) -> str:
    """The URL of the session's real redis-server."""
    return redis_server_process.url


@pytest.fixture
def real_redis_url(redis_server: str) -> str:
    """The real server's URL, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(scope="session")
def rabbitmq_server() -> lab.rabbitmq_share.SharedRabbit:
    """The run's private rabbitmq-server (management plugin on), started once for all xdist workers."""
    need_rabbitmq_server()
    return shared_rabbit()


@pytest.fixture
def rabbitmq_url(rabbitmq_server, request: pytest.FixtureRequest) -> Iterator[str]:
    """``amqp://`` URL of a new, empty vhost on the run's RabbitMQ, for this test only (deleted after it)."""
    vhost = f"test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.urandom(4).hex()}"
    url = new_vhost(rabbitmq_server, vhost)
    yield url
    delete_vhost(rabbitmq_server, vhost)


@pytest.fixture
def private_rabbitmq() -> Iterator[Callable[..., RabbitServer]]:
    """``private_rabbitmq(config=["consumer_timeout = 3000"], ...)``: a rabbitmq-server of this test's own
    (5 to 8 s to start), for a server setting the shared one does not have; stopped at teardown."""
    need_rabbitmq_server()
    started: list[RabbitServer] = []

    def start(**options: Any) -> RabbitServer:
        started.append(RabbitServer(**options))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture(params=["fakeredis", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """``memory://`` (fakeredis), then the real redis-server: each test runs on both."""
    if request.param == "fakeredis":
        return lab.MEMORY_URL
    return request.getfixturevalue("real_redis_url")


@pytest.fixture(params=["embedded", "redis"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis other processes can reach: the embedded server of ``python -m lab serve``
    (fakeredis over TCP, in a thread of this process), then the real redis-server (emptied)."""
    if request.param == "redis":
        yield request.getfixturevalue("real_redis_url")
        return
    with EmbeddedRedis(port=0) as server:
        yield server.url


@pytest.fixture
def broker(broker_url: str) -> Iterator[dramatiq.brokers.redis.RedisBroker]:
    """A fresh lab broker, made the process's broker for the test."""
    broker = lab.use_broker(lab.make_broker(broker_url))
    yield broker
    broker.close()


@pytest.fixture
def recorder(broker) -> lab.Recorder:
    """Records every attempt and enqueue on ``broker``."""
    return lab.Recorder.install(broker)


@pytest.fixture
def start_worker(broker) -> Iterator[Callable[..., dramatiq.Worker]]:
    """Start in-process workers on ``broker`` (``worker_timeout=100``); all stop at teardown."""
    workers: list[dramatiq.Worker] = []

    def start(threads: int = 2, worker_timeout: int = 100, *, queues: set[str] | None = None,
              prefetch: int | None = None) -> dramatiq.Worker:
        """A worker with ``threads`` threads, on ``queues`` (all, unless told), holding ``prefetch``
        messages a queue (what ``dramatiq_queue_prefetch`` sets; twice the threads unless told)."""
        worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=worker_timeout)
        worker.queue_prefetch = prefetch or worker.queue_prefetch
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        lab.stop_worker(worker)


@pytest.fixture
def load(broker) -> Callable[[str], ModuleType]:
    """Import an experiment module (``load("e02")``) bound to this test's broker."""
    return lambda key: experiments.load(experiments.find(key))


# -- subprocesses: the real `dramatiq` CLI and the senders, run as a user would ------------


@pytest.fixture
def dramatiq_worker() -> Iterator[Callable[..., WorkerProcess]]:
    """Start the real ``dramatiq`` CLI (``--processes 1`` unless told); every one is killed at teardown.

    Its worker_timeout is 100 ms (``dramatiq_worker_timeout``), so it notices new work quickly.
    """
    started: list[WorkerProcess] = []

    def start(*args: str, url: str, cwd: Path = ROOT, ready: bool = True, processes: int = 1,
              **env: str) -> WorkerProcess:
        worker = WorkerProcess(["--processes", str(processes), *args], url=url, cwd=cwd,
                               **{"dramatiq_worker_timeout": "100", **env})
        started.append(worker)
        if ready:
            worker.ready(processes)
        return worker

    yield start
    for worker in started:
        # A test that checks a clean stop calls worker.stop() itself; the rest need not wait the
        # 1-2 s a `dramatiq` process takes to stop (it checks its stop flag once a second).
        worker.close(kill=True)


@pytest.fixture
def sender() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python <script> <args>`` from the repository root, as a user would."""

    def run(script: str, *args: str, url: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, *args], cwd=ROOT, env=lab_env(url, **env),
            capture_output=True, text=True, timeout=timeout,
        )

    return run
