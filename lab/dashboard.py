"""``python -m lab dashboard``: the lab's Flower, in the browser.

One page (lab/dashboard.html, its script lab/dashboard.js) and one JSON endpoint, served by the
standard library's ``http.server``: no framework, no build step, nothing fetched from the internet.

- ``GET /api/status`` is the snapshot ``python -m lab status --json`` prints, read by the same code
  (lab/status.py): one source of counts. The page fetches it every ``--interval`` seconds and draws
  it, the chart included, so it updates without a reload.
- ``POST /api/requeue`` and ``POST /api/purge`` change data: each needs this run's token, which only
  the page carries (``X-Lab-Token``); without it, 403. A GET never changes anything.

It listens on 127.0.0.1 only, unless ``--host`` says otherwise; then anyone who can reach the port
can load the page, token included, and so requeue and purge.
"""

from __future__ import annotations

import errno
import hmac
import json
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import click
from dramatiq.brokers.redis import RedisBroker

from .broker import is_rabbitmq
from .failures import UNREACHABLE, Failure, how_to_get_redis
from .keys import purge_queue, queue_names, requeue_dead_letter
from .options import Seconds, redis_option
from .purge import describe
from .server import EXIT_CANNOT_LISTEN, until_stopped
from .status import open_broker, read_snapshot
from .urls import DEFAULT_URL, mask_url

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
HERE = Path(__file__).parent
TOKEN_HEADER = "X-Lab-Token"
MAX_BODY = 4096  # an action's body is a queue name and a message id

EXIT_CODES = (f"Exit codes: 0 stopped by Ctrl-C or SIGTERM; 2 bad arguments or URL, or memory://; 3 Redis "
              f"unreachable; {EXIT_CANNOT_LISTEN} cannot listen (the port is in use, or not allowed); "
              "5 Redis refused the password.")


class RedisSource:
    """What the page shows and what it may do, on the lab's Redis: status's snapshot, purge's purge.

    Another broker's source needs the same methods; the page draws whatever the snapshot holds.
    """

    gone = UNREACHABLE  # what the client raises when the broker went away while the dashboard runs

    def __init__(self, broker: RedisBroker, newest: int) -> None:
        self.broker = broker
        self.newest = newest
        self.where = mask_url(broker.lab_url)

    def snapshot(self) -> dict:
        return read_snapshot(self.broker, newest=self.newest).as_dict()

    def gone_line(self) -> str:
        return how_to_get_redis(self.broker.lab_url)

    def requeue(self, queue: str, message_id: str) -> str:
        message = requeue_dead_letter(self.broker, queue, message_id)
        return f"Requeued {message.actor_name} ({message_id}) to the end of {queue}."

    def purge(self, queue: str) -> str:
        if queue not in queue_names(self.broker):
            raise LookupError(f"no queue {queue!r} on {self.where}")
        found = purge_queue(self.broker, queue)  # what `python -m lab purge QUEUE --yes` does
        return f"Removed {found.ready + found.delayed} message(s) from {queue}: {describe(found, False)}."


class RabbitSource(RedisSource):
    """The same on RabbitMQ: status's snapshot (counts and consumers, no heartbeats, no dead letters listed),
    purge's ``queue.purge``. Requeue needs a listed dead letter, and RabbitMQ's are counted, not listed: 404."""

    def __init__(self, broker: RedisBroker, newest: int) -> None:
        from .rabbit_status import GONE  # pika only for who asks for RabbitMQ

        super().__init__(broker, newest)
        self.gone = UNREACHABLE + GONE

    def requeue(self, queue: str, message_id: str) -> str:
        raise LookupError(f"no dead letter {message_id} listed in {queue}: on RabbitMQ the dashboard counts dead "
                          "letters and cannot requeue them (yet)")

    def purge(self, queue: str) -> str:
        from .rabbit_status import purge_rabbit_queue, rabbit_queue_names

        if queue not in rabbit_queue_names(self.broker):
            raise LookupError(f"no queue {queue!r} on {self.where}")
        found = purge_rabbit_queue(self.broker, queue)  # what `python -m lab purge QUEUE --yes` does
        return f"Removed {found.ready + found.delayed} message(s) from {queue}: {describe(found, False)}."


class Dashboard(ThreadingHTTPServer):
    """The HTTP server: the source, this run's token, and the page with the token in it."""

    daemon_threads = True  # a browser's kept-alive connection must not keep the process alive

    def __init__(self, source: RedisSource, host: str, port: int, interval: float) -> None:
        self.source = source
        self.token = secrets.token_urlsafe(24)  # a new one every run: a page from an earlier run cannot act
        self.loopback = host in LOOPBACK_NAMES
        self.page = ((HERE / "dashboard.html").read_text(encoding="utf-8")
                     .replace("{{TOKEN}}", self.token)
                     .replace("{{INTERVAL_MS}}", str(round(interval * 1000)))
                     .replace("{{WHERE}}", source.where.replace("&", "&amp;").replace("<", "&lt;")))
        self.script = (HERE / "dashboard.js").read_bytes()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: Dashboard
    server_version = "lab-dashboard"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a request a second would bury the lines that matter."""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, data: dict, **headers: str) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", **headers)

    def _host_allowed(self) -> bool:
        """On loopback, only a loopback Host: a web page whose name was pointed at 127.0.0.1 (DNS
        rebinding) must not read the page, and with it the token."""
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or ""
        if self.server.loopback and host not in LOOPBACK_NAMES:
            self._json(HTTPStatus.FORBIDDEN, {"error": f"Host {host!r} is not this machine's loopback"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, self.server.page.encode(), "text/html; charset=utf-8")
        elif path == "/dashboard.js":
            self._send(HTTPStatus.OK, self.server.script, "text/javascript; charset=utf-8")
        elif path == "/api/status":
            try:
                self._json(HTTPStatus.OK, self.server.source.snapshot())
            except self.server.source.gone:  # the broker went away: say so; the page keeps asking
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": self.server.source.gone_line()})
        elif path in ACTIONS:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "changes data: POST only"}, Allow="POST")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {path}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_allowed():
            return
        action = ACTIONS.get(urlsplit(self.path).path)
        if action is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {self.path}"})
            return
        if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), self.server.token.encode()):
            self._json(HTTPStatus.FORBIDDEN, {"error": f"no valid {TOKEN_HEADER}: actions come from this run's page"})
            return
        name, fields = action
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length)) if 0 < length <= MAX_BODY else {}
            values = [body[field] for field in fields]
            if not all(isinstance(value, str) for value in values):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body must be JSON with {', '.join(fields)}: strings"})
            return
        try:
            self._json(HTTPStatus.OK, {"done": getattr(self.server.source, name)(*values)})
        except LookupError as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc).strip("'\"")})
        except self.server.source.gone:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": self.server.source.gone_line()})


#: What a POST may do: the source's method, and the strings its JSON body must hold.
ACTIONS = {
    "/api/requeue": ("requeue", ("queue", "message_id")),
    "/api/purge": ("purge", ("queue",)),
}


def listen(source: RedisSource, host: str, port: int, interval: float) -> Dashboard:
    """The dashboard, bound; a Failure (exit 4) saying why it cannot listen."""
    try:
        return Dashboard(source, host, port, interval)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            line = f"port {port} on {host} is in use by another program; pick another with --port N (0: any free one)"
        else:
            line = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise Failure(line, EXIT_CANNOT_LISTEN) from None


@click.command(epilog=EXIT_CODES, short_help="Queues, workers, dead letters and a rate chart, in the browser.")
@redis_option(DEFAULT_URL)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default="0: any free port",
              help="TCP port to listen on.")
@click.option("--host", default=LOOPBACK, show_default=True,
              help="Address to listen on. Anything but loopback lets other machines see the page, and act.")
@click.option("--interval", type=Seconds(0.2, 60), default=1.0, show_default=True, metavar="SECONDS",
              help="How often the page asks for a new snapshot.")
@click.option("--dead", "newest", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="How many of the newest dead letters to show.")
def dashboard(url: str, port: int, host: str, interval: float, newest: int) -> None:
    """Serve a page that shows what `status` shows, live: queues, workers, dead letters, a rate chart.

    From the page you may requeue a dead letter or purge a queue's ready and
    delayed messages; each asks first. It runs until Ctrl-C.
    """
    broker = open_broker(url)  # unreachable, refused, memory://: the lab's one line and exit code
    try:
        # Ctrl-C stops it cleanly from the moment its port answers (the socket listens before it serves)
        with until_stopped() as wait:
            server = listen((RabbitSource if is_rabbitmq(broker) else RedisSource)(broker, newest), host, port,
                            interval)
            if not server.loopback:
                click.echo(f"warning: listening on {host}, not loopback: whoever reaches port "
                           f"{server.server_address[1]} can see your queues and messages' arguments, and requeue "
                           "and purge.", err=True)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            try:
                click.echo(f"Dashboard of {mask_url(url)} on {server.url} (Ctrl-C stops it)")
                sys.stdout.flush()
                wait()
            finally:
                server.shutdown()
                thread.join()
                server.server_close()
        click.echo("Stopped.")
    finally:
        broker.close()
