"""One private RabbitMQ for a whole test run, shared by its pytest-xdist workers: ``python -m lab rabbitmq``.

A RabbitMQ takes 5 to 8 s of a core to start: once per run, not once per worker. And it is
started the way a learner starts one, with the lab's own command, so that every test run
proves that command too: it starts, prints its URLs, serves every RabbitMQ test, and stops on
Ctrl-C with exit code 0, leaving nothing behind.

The run's first process (the xdist controller, or pytest alone) calls :func:`open_share` in
``pytest_configure``: a directory, named in ``$LAB_RABBITMQ_SHARE`` for the workers it starts.
The first worker that needs RabbitMQ starts the command under a file lock there and writes
down its ports (:func:`shared_rabbit`); the others read them. At the run's end the controller
presses Ctrl-C (:func:`close_share`) and says what was wrong with the stop, if anything; if
the controller dies first, its backstop kills it all.

Tests are kept apart by vhosts: each test gets a new one (:func:`new_vhost`, through the
management plugin's HTTP API, a few ms) and it is deleted after the test, queues and all.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .processes import OWNERS_ENV, ROOT, RabbitServer, backstop, carrying
from .rabbitmq import management, quote_vhost
from .recorder import wait_until

SHARE_ENV = "LAB_RABBITMQ_SHARE"
MARK_ENV = "LAB_RABBITMQ_SHARED"  # carried by the command and everything it starts: what must be gone at the end
STOPPED = "Stopped; its data is gone."


@dataclass(frozen=True)
class SharedRabbit:
    """Where the run's shared RabbitMQ listens, and the command that runs it."""

    port: int
    management_port: int
    pid: int  # the command's wrapper, which leads the command's session and writes its exit code down
    mark: str  # MARK_ENV's value in its environment and its children's
    share: str
    ready_seconds: float

    def url_for(self, vhost: str) -> str:
        """Its ``amqp://`` URL for ``vhost``, as guest."""
        return RabbitServer.url_of(self.port, vhost)

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    @property
    def said(self) -> str:
        """What the command printed on its stdout so far."""
        return (Path(self.share) / "rabbitmq.out").read_text()


def open_share() -> str | None:
    """Make this process the owner of the run's shared RabbitMQ (its directory), unless an outer one is."""
    if os.environ.get(SHARE_ENV):
        return None
    os.environ[SHARE_ENV] = tempfile.mkdtemp(prefix="lab-rabbitmq-share-")
    return os.environ[SHARE_ENV]


def shared_rabbit() -> SharedRabbit:
    """The run's shared RabbitMQ, started by the first caller; RuntimeError (the same for every caller) if it
    could not start. Needs :func:`open_share` in an ancestor process (or this one)."""
    share = Path(os.environ.get(SHARE_ENV) or open_share())
    with open(share / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        said = share / "server.json"
        if not said.exists():
            try:
                said.write_text(json.dumps(asdict(_start(share))))
            except Exception as exc:
                said.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        info = json.loads(said.read_text())
    if "error" in info:
        raise RuntimeError(f"the shared rabbitmq-server did not start: {info['error']}")
    return SharedRabbit(**info)


def _start(share: Path, timeout: float = 120) -> SharedRabbit:
    """``python -m lab rabbitmq`` in a session of its own, under a shell that writes its exit code down."""
    mark = secrets.token_hex(4)
    env = dict(os.environ, **{MARK_ENV: mark})
    if os.environ.get("PYTEST_XDIST_WORKER"):  # it must outlive this worker: the controller's backstop covers it
        token = backstop()
        env[OWNERS_ENV] = " ".join(t for t in env.get(OWNERS_ENV, "").split() if t != token)
    out, err = share / "rabbitmq.out", share / "rabbitmq.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        wrapper = subprocess.Popen(["bash", "-c", '"$@"; echo $? > "$0"', str(share / "rabbitmq.exit"),
                                   sys.executable, "-m", "lab", "rabbitmq"], cwd=ROOT, env=env, stdout=stdout,
                                   stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
    urls = re.compile(r"^export DRAMATIQ_BROKER_URL=amqp://\S+:(\d+)/%2F\n"
                      r"export LAB_RABBITMQ_MANAGEMENT_URL=http://\S+:(\d+)$", re.MULTILINE)
    if not wait_until(lambda: urls.search(out.read_text()) or wrapper.poll() is not None, timeout=timeout):
        _kill(wrapper.pid, mark)
        raise TimeoutError(f"python -m lab rabbitmq printed no URL within {timeout} s: {err.read_text()[-300:]}")
    if wrapper.poll() is not None:
        raise RuntimeError(f"python -m lab rabbitmq exited {wrapper.returncode}: {err.read_text()[-300:]}")
    port, management_port = map(int, urls.search(out.read_text()).groups())
    ready = float(re.search(r" ready in ([\d.]+) s", out.read_text()).group(1))
    return SharedRabbit(port, management_port, wrapper.pid, mark, str(share), ready)


def _kill(group: int, mark: str) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in carrying(MARK_ENV, mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def close_share(share: str, timeout: float = 30) -> str | None:
    """Press Ctrl-C on the run's shared RabbitMQ, if it was started, and delete the share; what went wrong, if
    anything: an exit code other than 0, a last line other than :data:`STOPPED`, a traceback, a process left."""
    said = Path(share) / "server.json"
    info = json.loads(said.read_text()) if said.exists() else {}
    problem = None
    if "pid" in info:
        server = SharedRabbit(**info)
        exit_file = Path(share) / "rabbitmq.exit"
        try:
            os.killpg(server.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        except ProcessLookupError:
            pass
        stopped = wait_until(lambda: exit_file.exists() and exit_file.read_text().strip() != "", timeout=timeout)
        left = not wait_until(lambda: not carrying(MARK_ENV, server.mark), timeout=5)
        code = exit_file.read_text().strip() if stopped else None
        lines = server.said.strip().splitlines()
        errors = (Path(share) / "rabbitmq.err").read_text()
        if not stopped or left:
            _kill(server.pid, server.mark)
        if code != "0" or not lines or lines[-1] != STOPPED or "Traceback" in errors or left:
            problem = (f"python -m lab rabbitmq, the run's RabbitMQ, did not stop cleanly on Ctrl-C: exit code "
                       f"{code if stopped else f'none within {timeout} s'}, last line {lines[-1:]}, "
                       f"{'a traceback, ' if 'Traceback' in errors else ''}"
                       f"{'processes left' if left else 'nothing left'}; stderr: {errors[-300:]!r}")
    shutil.rmtree(share, ignore_errors=True)
    return problem


def new_vhost(server: SharedRabbit, name: str) -> str:
    """Create the vhost ``name`` with every permission for guest; its URL."""
    management(server.management_url, "PUT", f"/api/vhosts/{quote_vhost(name)}")
    management(server.management_url, "PUT", f"/api/permissions/{quote_vhost(name)}/guest",
               {"configure": ".*", "write": ".*", "read": ".*"})
    return server.url_for(name)


def delete_vhost(server: SharedRabbit, name: str) -> None:
    """Delete the vhost ``name``, its queues and their messages."""
    management(server.management_url, "DELETE", f"/api/vhosts/{quote_vhost(name)}")
