"""One private RabbitMQ for a whole test run, shared by its pytest-xdist workers.

A RabbitMQ takes 5 to 8 s of a core to start: once per run, not once per worker. The run's
first process (the xdist controller, or pytest alone) calls :func:`open_share` in
``pytest_configure``: a directory, named in ``$LAB_RABBITMQ_SHARE`` for the workers it starts.
The first worker that needs RabbitMQ starts it under a file lock there and writes down its
ports (:func:`shared_rabbit`); the others read them. The controller stops it in
``pytest_unconfigure`` (:func:`close_share`); if the controller dies first, its backstop does.

Tests are kept apart by vhosts: each test gets a new one (:func:`new_vhost`, through the
management plugin's HTTP API, a few ms) and it is deleted after the test, queues and all.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .processes import RabbitServer, kill_rabbit_node
from .rabbitmq import management, quote_vhost

SHARE_ENV = "LAB_RABBITMQ_SHARE"


@dataclass(frozen=True)
class SharedRabbit:
    """Where the run's shared RabbitMQ listens."""

    port: int
    management_port: int
    node: str
    dir: str
    ready_seconds: float

    def url_for(self, vhost: str) -> str:
        """Its ``amqp://`` URL for ``vhost``, as guest."""
        return RabbitServer.url_of(self.port, vhost)

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"


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
                # An xdist worker's server must outlive it (the others use it too): the controller's backstop covers it.
                server = RabbitServer(management=True, shared=bool(os.environ.get("PYTEST_XDIST_WORKER")))
                said.write_text(json.dumps(asdict(SharedRabbit(server.port, server.management_port, server.node,
                                                                server.dir, server.ready_seconds))))
            except Exception as exc:
                said.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        info = json.loads(said.read_text())
    if "error" in info:
        raise RuntimeError(f"the shared rabbitmq-server did not start: {info['error']}")
    return SharedRabbit(**info)


def close_share(share: str) -> None:
    """Stop the run's shared RabbitMQ, if it was started, and delete its directories."""
    said = Path(share) / "server.json"
    info = json.loads(said.read_text()) if said.exists() else {}
    if "node" in info:
        kill_rabbit_node(info["node"])
        shutil.rmtree(info["dir"], ignore_errors=True)
    shutil.rmtree(share, ignore_errors=True)


def new_vhost(server: SharedRabbit, name: str) -> str:
    """Create the vhost ``name`` with every permission for guest; its URL."""
    management(server.management_url, "PUT", f"/api/vhosts/{quote_vhost(name)}")
    management(server.management_url, "PUT", f"/api/permissions/{quote_vhost(name)}/guest",
               {"configure": ".*", "write": ".*", "read": ".*"})
    return server.url_for(name)


def delete_vhost(server: SharedRabbit, name: str) -> None:
    """Delete the vhost ``name``, its queues and their messages."""
    management(server.management_url, "DELETE", f"/api/vhosts/{quote_vhost(name)}")
