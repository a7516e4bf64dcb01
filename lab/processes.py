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

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .recorder import wait_until
from .urls import BROKER_URL_ENV, URL_ENV, is_amqp

ROOT = Path(__file__).resolve().parent.parent

#: The private rabbitmq-server of :class:`RabbitServer`: the script Debian's package installs.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Set in a private RabbitMQ's processes (its node name), so that :meth:`RabbitServer.stop` finds them all.
RABBITMQ_MARK_ENV = "LAB_RABBITMQ_NODE"

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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral ports.

    The kernel hands ports of its ephemeral range (``ip_local_port_range``, 32768 to 60999 here) to
    outgoing connections and to ``bind(("127.0.0.1", 0))``, and never one below it. A server stopped
    and started again on its port (a restart lesson) finds a port below the range still free: in the
    range, a busy run's connections took a private RabbitMQ's port during its restart twice (PortTaken).
    Where the range leaves no room below it, any free port.
    """
    low = _ephemeral_low()
    for _ in range(50 if low > 11_000 else 0):
        port = 10_000 + secrets.randbelow(low - 10_000)
        if port not in _HANDED_OUT and _bindable(port):  # never the same twice in a process: a server's 4 ports
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    """The lowest of the kernel's ephemeral ports; 0 where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def lab_env(url: str, **extra: str) -> dict[str, str]:
    """The environment for a process of the lab pointed at ``url`` (output unbuffered).

    A Redis URL goes in ``DRAMATIQ_REDIS_URL`` (and an inherited ``DRAMATIQ_BROKER_URL``, which would
    win over it, is dropped); an ``amqp://`` one in ``DRAMATIQ_BROKER_URL``, beside whatever
    ``DRAMATIQ_REDIS_URL`` says (``extra`` may set it: the Redis for results).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    if is_amqp(url):
        env[BROKER_URL_ENV] = url
    else:
        env[URL_ENV] = url
        if BROKER_URL_ENV not in extra:
            env.pop(BROKER_URL_ENV, None)
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


class RabbitServer:
    """A private ``rabbitmq-server`` on free loopback ports, in a temporary directory of its own.

    Not the system service: it is started from :data:`RABBITMQ_SERVER` with the ``RABBITMQ_*``
    variables pointing at its own directory (data, logs, config, enabled plugins, and ``HOME``
    for the Erlang cookie), its own node name, its own AMQP and distribution ports, and its own
    epmd on a port of its own (never 4369, the system epmd's). The lab starts that epmd itself,
    in the foreground, before the server: otherwise Erlang would start one with ``-daemon``,
    which leaves the server's session and outlives it. Ready when pika connects.

    ``config`` lines are added to its ``rabbitmq.conf`` (``consumer_timeout = 3000``, say);
    ``advanced`` is its ``advanced.config`` (Erlang terms, for what rabbitmq.conf has no key for:
    ``[{rabbit, [{channel_tick_interval, 100}]}].``); ``vhosts`` are created at boot from a
    definitions file (``/`` always exists). ``management`` enables the management plugin (its HTTP
    API on :attr:`management_port`; about 0.6 s more to start, and a clean stop takes 6 s instead of 1).
    :meth:`restart` keeps the ports, the node name and the data: durable queues and persistent
    messages survive it.

    ``shared``: the server outlives this process (a test server that the first pytest-xdist worker
    starts for all of them): this process's backstop does not kill it, its parent's does, and
    :func:`kill_rabbit_node` stops it from any process.
    """

    def __init__(self, *, config: list[str] | tuple[str, ...] = (), advanced: str = "",
                 vhosts: list[str] | tuple[str, ...] = (), management: bool = False, shared: bool = False,
                 timeout: float = 60) -> None:
        self.executable = self.executable_path()
        self.config = list(config)
        self.advanced = advanced
        self.vhosts = list(vhosts)
        self.management = management
        self.shared = shared
        self.dir = tempfile.mkdtemp(prefix="lab-rabbitmq-")
        self.node = f"lab-{secrets.token_hex(4)}@localhost"
        self.process: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        self.ready_seconds: float | None = None
        try:
            for attempt in range(3):
                self._pick_ports()
                try:
                    self.start(timeout=timeout)
                    break
                except PortTaken:  # another process took a free port between our look and the server's bind
                    if attempt == 2:
                        raise
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @staticmethod
    def executable_path() -> str:
        """Where rabbitmq-server is; FileNotFoundError, saying how to install it, if it is not."""
        if not os.access(RABBITMQ_SERVER, os.X_OK) or shutil.which("epmd") is None:
            raise FileNotFoundError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        return RABBITMQ_SERVER

    def _pick_ports(self) -> None:
        self.port, self.dist_port, self.epmd_port, self.management_port = (free_port() for _ in range(4))

    @staticmethod
    def url_of(port: int, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """The ``amqp://`` URL of a private server on ``port``, for ``vhost`` (``/`` is written ``%2F``)."""
        return f"amqp://{user}:{password}@127.0.0.1:{port}/{quote(vhost, safe='')}"

    def url_for(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """Its ``amqp://`` URL for ``vhost``, as ``user``."""
        return self.url_of(self.port, vhost, user, password)

    @property
    def url(self) -> str:
        """Its URL for the default vhost ``/``, as user guest (allowed on loopback only, RabbitMQ's default)."""
        return self.url_for()

    def _write_config(self) -> dict[str, str]:
        home = Path(self.dir)
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        if self.management:
            lines.append(f"management.tcp.port = {self.management_port}")
            lines.append("management.tcp.ip = 127.0.0.1")
        if self.vhosts:  # a server that loads definitions at boot creates no guest user: they say it too
            vhosts = ["/", *self.vhosts]
            definitions = {
                "users": [{"name": "guest", "password_hash": _rabbitmq_password_hash("guest"),
                           "tags": ["administrator"],
                           "hashing_algorithm": "rabbit_password_hashing_sha256"}],
                "vhosts": [{"name": v} for v in vhosts],
                "permissions": [{"user": "guest", "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
                                for v in vhosts],
            }
            (home / "definitions.json").write_text(json.dumps(definitions))
            lines.append(f"load_definitions = {home / 'definitions.json'}")
        (home / "rabbitmq.conf").write_text("\n".join([*lines, *self.config]) + "\n")
        (home / "enabled_plugins").write_text("[rabbitmq_management]." if self.management else "[].")
        (home / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        if self.advanced:
            (home / "advanced.config").write_text(self.advanced)
        return {
            "HOME": str(home),  # the Erlang cookie goes there
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            RABBITMQ_MARK_ENV: self.node,  # how stop() finds anything of this server left behind
        }

    def start(self, timeout: float = 60) -> RabbitServer:
        """Start epmd, then the server; return once pika connects. Raises PortTaken, TimeoutError, RuntimeError."""
        import pika  # only the RabbitMQ side needs it

        token = backstop()
        env = dict(os.environ, **self._write_config())
        env.pop("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", None)
        guard_ = guard
        if self.shared:  # not this process's to kill when it exits: its parent's backstop covers it
            env[OWNERS_ENV] = " ".join(t for t in env.get(OWNERS_ENV, "").split() if t != token)
            guard_ = _unguarded
        out = open(os.path.join(self.dir, "rabbitmq-server.log"), "ab")  # its own words, if it will not start
        started = time.monotonic()
        self.epmd = guard_(subprocess.Popen([shutil.which("epmd"), "-port", str(self.epmd_port)], env=env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        parameters = pika.URLParameters(f"{self.url}?connection_attempts=1&socket_timeout=1")

        def answers() -> bool:
            if self.process is None:  # epmd first: the server would start a daemon epmd of its own without it
                if _listening(self.epmd_port):
                    self.process = guard_(subprocess.Popen([self.executable], env=env, cwd=self.dir, stdout=out,
                                                          stderr=subprocess.STDOUT, start_new_session=True))
                return self.epmd.poll() is not None
            try:
                pika.BlockingConnection(parameters).close()
                return True
            except pika.exceptions.AMQPError:
                return self.process.poll() is not None  # it exited: stop waiting, say why below

        try:
            if not wait_until(answers, timeout=timeout, interval=0.05):
                said = Path(out.name).read_text(errors="replace").strip()[-500:]
                raise TimeoutError(f"rabbitmq-server did not answer on port {self.port} within {timeout} s: {said}")
            if self.epmd.poll() is not None or self.process.poll() is not None:
                said = Path(out.name).read_text(errors="replace")
                if "eaddrinuse" in said or "Address already in use" in said:
                    raise PortTaken(self.port)
                raise RuntimeError(f"rabbitmq-server exited: {said.strip()[-500:]}")
        except BaseException:  # Ctrl-C while it starts, too: no caller holds it yet to stop it
            self.stop(signal.SIGKILL)
            raise
        finally:
            out.close()
        self.ready_seconds = time.monotonic() - started
        return self

    def pids(self) -> list[int]:
        """Every process of this server still alive: the server, its Erlang VM and helpers, its epmd."""
        return carrying(RABBITMQ_MARK_ENV, self.node)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop the server (SIGTERM: a clean shutdown; SIGKILL: a crash), then its epmd; leave nothing behind."""
        for process in (self.process, self.epmd):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(sig)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:  # its Erlang VM and helpers are in its session, and so in its process group
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
            release(process)
        for pid in self.pids():  # whatever left the groups (a daemon epmd, say): found by the mark
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A SIGKILL is sent, not done: the Erlang VM (a child of the script waited for above) can still hold its
        # ports for a moment, and a restart on the same ports then fails (eaddrinuse: seen once under load)
        wait_until(lambda: not self.pids(), timeout=10, interval=0.02)
        self.process = self.epmd = None

    def restart(self, sig: int = signal.SIGTERM) -> RabbitServer:
        """Stop and start again on the same ports, node name and data directory."""
        self.stop(sig)
        # what the VM held can take a moment to let go of its ports: start once they can be bound (bounded;
        # a port another process took stays taken, and start() says so: PortTaken)
        ports = (self.port, self.dist_port, self.epmd_port, *((self.management_port,) if self.management else ()))
        wait_until(lambda: all(_bindable(port) for port in ports), timeout=10)
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill_rabbit_node(node: str, timeout: float = 10) -> bool:
    """SIGKILL every process of the private RabbitMQ ``node`` (:attr:`RabbitServer.node`), from any process;
    whether none is left. For a shared test server, whose data nobody keeps: no need for a clean stop."""
    for _ in range(int(timeout / 0.1)):
        pids = carrying(RABBITMQ_MARK_ENV, node)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)  # a zombie keeps its environment until its parent reaps it; init does, soon
    return not carrying(RABBITMQ_MARK_ENV, node)


def _unguarded(process: subprocess.Popen) -> subprocess.Popen:
    return process


def _rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's SHA-256 password hash: base64 of a 4-byte salt and sha256(salt + password)."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 now (as a server would: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
