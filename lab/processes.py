"""Real processes, started and stopped by their id: ``dramatiq`` CLI workers and ``redis-server``.

The scenarios of ``python -m lab run`` and the tests use them alike. Every
process started here is stopped by :meth:`stop` (SIGTERM, then SIGKILL after
a deadline), and the tests' fixtures call it even when an assertion fails or
Ctrl-C interrupts them (pytest turns SIGINT into KeyboardInterrupt, and the
fixtures' teardown runs).

Each runs in a session of its own, so a Ctrl-C at the terminal does not reach
it (its owner stops it), and one ``killpg`` reaches a worker's processes too.

The backstop, for an owner that dies without its teardown (``kill -9``, a
crash, an xdist worker killed by its controller): :func:`backstop` starts a
watchdog process that waits for its owner to die, then SIGKILLs every process
that carries the owner's token in its environment (``LAB_OWNERS``). Children
inherit the token, so this reaches grandchildren too (a worker's processes, a
sender's children), whatever their process group, including processes the
tests start with a plain ``subprocess.Popen``. Why not ``PR_SET_PDEATHSIG``:
it signals only the direct child, fires when the *thread* that started the
child ends (not the process), and needs ``preexec_fn``, which Python documents
as unsafe in a process with threads (a test process has many).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .recorder import wait_until
from .urls import URL_ENV

ROOT = Path(__file__).resolve().parent.parent

#: The tokens of the lab processes above this one, space-separated; see :func:`backstop`.
OWNERS_ENV = "LAB_OWNERS"

# The watchdog. It reads its stdin until EOF, which comes when its owner's end of the pipe closes, that is when
# the owner exits, however it exits. Meanwhile the owner writes "+PGID" for a process group it started and
# "-PGID" once it has stopped and reaped it. At EOF the watchdog SIGKILLs the groups still listed, then every
# process that carries the owner's token (twice more if it found some: one may have been starting). The token
# alone is not enough: redis-server writes its title over its environment. The watchdog ignores the terminal's
# signals (a Ctrl-C must not stop it before its owner is gone) and is in a session of its own.
WATCHDOG = r"""
import os, signal, sys
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
variable, token, groups = sys.argv[1].encode() + b"=", sys.argv[2].encode(), set()
for line in sys.stdin.buffer:
    (groups.add if line.startswith(b"+") else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
for _ in range(3):
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        owners = next((e.partition(b"=")[2] for e in environ if e.startswith(variable)), b"")
        if token in owners.split():
            try:
                os.kill(int(name), signal.SIGKILL)
                found += 1
            except OSError:
                pass
    if not found:
        break
"""

_backstop: tuple[int, str, subprocess.Popen, int] | None = None  # (owner pid, token, watchdog, pipe's write end)


def backstop() -> str:
    """Make sure that what this process starts from now on dies with it, however it dies; its token.

    Starts, once per process, a watchdog (see the module's docstring) and adds this
    process's token to ``os.environ[LAB_OWNERS]``, so every process started after,
    by whatever means, inherits it. The fixtures' and :meth:`RedisServer.stop`'s
    orderly stops come first; this catches what they could not reach.
    """
    global _backstop
    if _backstop is not None and _backstop[0] == os.getpid():
        return _backstop[1]
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    read, write = os.pipe()  # not inherited by other children (PEP 446): only this process holds the write end
    env = {k: v for k, v in os.environ.items() if k != OWNERS_ENV}  # the watchdog is nobody's: it outlives its owner
    try:
        watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, OWNERS_ENV, token], stdin=read, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read)
    _backstop = (os.getpid(), token, watchdog, write)
    os.environ[OWNERS_ENV] = " ".join([*os.environ.get(OWNERS_ENV, "").split(), token])
    return token


def _tell_watchdog(line: str) -> None:
    if _backstop is not None and _backstop[0] == os.getpid():
        try:
            os.write(_backstop[3], f"{line}\n".encode())
        except OSError:  # the watchdog is gone (someone killed it): nothing to tell
            pass


def guard(process: subprocess.Popen) -> subprocess.Popen:
    """Have the backstop SIGKILL ``process``'s group (it leads a session of its own) if this process dies first."""
    _tell_watchdog(f"+{process.pid}")
    return process


def release(process: subprocess.Popen) -> None:
    """Tell the backstop that ``process`` (guarded, now reaped) is no longer its to kill."""
    if process.returncode is not None:
        _tell_watchdog(f"-{process.pid}")


def carrying(variable: str, word: str) -> list[int]:
    """The pids of the processes whose environment's ``variable`` holds ``word`` (one of its space-separated
    words). ``carrying(OWNERS_ENV, token)`` lists what the backstop of ``token`` would kill; a test marks the
    processes it starts with a variable of its own and checks that none is left.

    A process that writes over its environment (redis-server sets its title there) is not found.
    """
    pids = []
    for name in os.listdir("/proc"):
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0") if name.isdigit() else []
        except OSError:
            continue
        value = next((e.partition(b"=")[2] for e in environ if e.startswith(variable.encode() + b"=")), b"")
        if word.encode() in value.split():
            pids.append(int(name))
    return pids


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
        backstop()
        self.process = guard(subprocess.Popen(
            [sys.executable, "-m", "dramatiq", *args], cwd=cwd, env=lab_env(url, **env),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        ))

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
        try:  # even when the master exited: a worker process it left behind goes too
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        release(self.process)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, as Ctrl-C or a process manager would; SIGKILL after ``timeout`` s. The exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.wait(timeout)
        self.kill()  # after a timeout; or a worker process the master left behind (killed master, say)
        return self.process.returncode

    def close(self, *, kill: bool = False) -> None:
        """Stop it (or, with ``kill``, SIGKILL it: faster, when a clean stop proves nothing) and delete its log."""
        self.kill() if kill else self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class PortTaken(OSError):
    """The port redis-server was given is in use."""


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
        try:
            for attempt in range(3):
                try:
                    self.start()
                    break
                except PortTaken:  # another process took the free port between our look and the server's bind
                    if port is not None or attempt == 2:
                        raise
                    self.port = free_port()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

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
        backstop()
        log = open(os.path.join(self.dir, "redis-server.log"), "ab")  # its own words, if it will not start
        self.process = guard(subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
        # No retries inside a ping (a host/port client retries 10 times): the loop below asks again itself.
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=1,
                             retry=Retry(NoBackoff(), 0))

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return self.process.poll() is not None  # it exited: stop waiting, say why below

        try:
            if not wait_until(answers, timeout=timeout, interval=0.02):
                raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout} s")
            if self.process.poll() is not None:
                said = Path(log.name).read_text(errors="replace")
                if "Address already in use" in said:
                    raise PortTaken(self.port)
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {said.strip()[-300:]}")
        except BaseException:  # Ctrl-C while it starts, too: no caller holds it yet to stop it
            self.stop(signal.SIGKILL)
            raise
        finally:
            client.close()
            log.close()
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
        if self.process is not None:
            release(self.process)
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
