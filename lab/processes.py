"""Real processes, started and stopped by their id: ``dramatiq`` CLI workers and ``redis-server``.

The scenarios of ``python -m lab run`` and the tests use them alike. Every
process started here is stopped by :meth:`stop` (SIGTERM, then SIGKILL after
a deadline), and the tests' fixtures call it even when an assertion fails.
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
from pathlib import Path

import redis

from .recorder import wait_until
from .urls import URL_ENV

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lab_env(url: str, **extra: str) -> dict[str, str]:
    """The environment for a process of the lab pointed at ``url`` (output unbuffered)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env[URL_ENV] = url
    return env


class WorkerProcess:
    """A ``dramatiq`` CLI process (``python -m dramatiq ARGS``) whose combined output goes to a file.

    It runs in a session of its own, so :meth:`kill` and :meth:`stop` reach its
    worker processes too.
    """

    def __init__(self, args: list[str], *, url: str, cwd: Path = ROOT, **env: str) -> None:
        self.args = args
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lab-worker-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", *args], cwd=cwd, env=lab_env(url, **env),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern: str, *, timeout: float = 15, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) appears ``count`` times in the output; return the output.

        Raises TimeoutError, with the output, if it does not.
        """
        if not wait_until(lambda: len(re.findall(pattern, self.output)) >= count, timeout=timeout):
            raise TimeoutError(f"no {pattern!r} x{count} in {timeout} s; worker output:\n{self.output}")
        return self.output

    def ready(self, processes: int = 1, timeout: float = 15) -> WorkerProcess:
        """Wait until each of its ``processes`` worker processes said it is ready."""
        self.wait_for("Worker process is ready for action", count=processes, timeout=timeout)
        return self

    def worker_pids(self) -> list[int]:
        """The pids of its worker processes (children of the master), from their "ready" lines."""
        return [int(pid) for pid in re.findall(r"\[PID (\d+)\][^\n]*ready for action", self.output)]

    def signal(self, sig: int, pid: int | None = None) -> None:
        os.kill(self.pid if pid is None else pid, sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, once the master exits within ``timeout`` seconds; None if it does not."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the master and every process of its session, as a crash would."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, as Ctrl-C or a process manager would; SIGKILL after ``timeout`` s. The exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        try:  # a worker process the master left behind (killed master, say) goes too
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.returncode

    def close(self, *, kill: bool = False) -> None:
        """Stop it (or, with ``kill``, SIGKILL it: faster, when a clean stop proves nothing) and delete its log."""
        self.kill() if kill else self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in a temporary directory of its own.

    Persistence is off unless ``appendonly=True``. :meth:`restart` keeps the port
    and the directory, so an AOF file survives it.
    """

    def __init__(self, *, appendonly: bool = False, port: int | None = None, password: str | None = None) -> None:
        self.executable = self.executable_path()
        self.appendonly = appendonly
        self.password = password
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="lab-redis-")
        self.process: subprocess.Popen | None = None
        self.start()

    @staticmethod
    def executable_path() -> str:
        """Where redis-server is; FileNotFoundError, saying how to install it, if it is not."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        return executable

    @property
    def url(self) -> str:
        """Its URL, with the password in it when it has one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            if not wait_until(answers, timeout=timeout, interval=0.02):
                self.stop()
                raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout} s")
        finally:
            client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, sig: int = signal.SIGTERM) -> RedisServer:
        self.stop(sig)
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
