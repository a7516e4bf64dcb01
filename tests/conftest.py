"""Fixtures: a broker on fakeredis *and* on a real redis-server, workers, subprocesses.

Every test that asks for ``broker`` runs twice: once on a RedisBroker over
fakeredis (the same Lua scripts, in memory) and once on a real
``redis-server`` that this file starts on a free port. Without redis-server
the second run skips, except in CI (``CI=true``), where it fails.

Experiment modules bind their actors to the broker that is current when they
are imported, so ``load`` imports (or reloads) them after the broker is set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import dramatiq
import pytest
import redis

import lab
from lab import experiments

ROOT = experiments.ROOT
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server on a free loopback port, persistence off; yields its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        if not lab.wait_until(answers, timeout=10):
            pytest.fail(f"redis-server did not answer on port {port} within 10 s")
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def real_redis_url(redis_server: str) -> str:
    """The real server's URL, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(params=["fakeredis", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """``memory://`` (fakeredis), then the real redis-server: each test runs on both."""
    if request.param == "fakeredis":
        return lab.MEMORY_URL
    return request.getfixturevalue("real_redis_url")


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

    def start(threads: int = 2, worker_timeout: int = 100) -> dramatiq.Worker:
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=worker_timeout)
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


def lab_env(url: str, **extra: str) -> dict[str, str]:
    """The environment for a subprocess of the lab pointed at ``url``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env[lab.URL_ENV] = url
    return env


class WorkerProcess:
    """A ``dramatiq`` CLI process whose combined output is read from a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", *args], cwd=cwd, env=env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float = 15, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) appears ``count`` times in the output; return the output."""
        found = lab.wait_until(lambda: len(re.findall(pattern, self.output)) >= count, timeout=timeout)
        assert found, f"no {pattern!r} x{count} in {timeout} s; worker output:\n{self.output}"
        return self.output

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, as Ctrl-C or a process manager would; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def dramatiq_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start the real ``dramatiq`` CLI (``--processes 1``); every one is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, url: str, cwd: Path = ROOT, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(["--processes", "1", *args], lab_env(url, dramatiq_worker_timeout="100"), cwd)
        started.append(worker)
        if ready:
            worker.wait_for("Worker process is ready for action")
        return worker

    yield start
    for worker in started:
        worker.stop()
        os.unlink(worker.log.name)


@pytest.fixture
def sender() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python <script> <args>`` from the repository root, as a user would."""

    def run(script: str, *args: str, url: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, *args], cwd=ROOT, env=lab_env(url),
            capture_output=True, text=True, timeout=timeout,
        )

    return run
