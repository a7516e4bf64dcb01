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

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import lab
from lab import experiments
from lab.processes import RedisServer, WorkerProcess, backstop, free_port, lab_env  # noqa: F401 (re-exported)
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
