"""``python -m lab serve``: an embedded Redis on loopback, for the two-terminal flow.

It is fakeredis's TCP server: a stand-in for learning that keeps everything
in this process's memory and forgets it when stopped. Two changes make
Dramatiq run on it as on a real Redis:

- Dramatiq's Lua scripts are loaded before the first client connects, so
  the first ``EVALSHA`` of each script does not get a ``NOSCRIPT`` reply;
- an error reply is sent and the connection stays open, as a real Redis
  does. fakeredis 2.40's TCP server (the pinned one) closes the connection
  after any error reply, so the client's next command on it fails with
  "Connection closed by server", which a worker logs as "Consumer
  encountered a connection error" and a sender reports as an unreachable
  Redis. fakeredis 2.41 keeps the connection itself; there the wrapper
  changes nothing but the printing.

Each error reply is still printed on stderr, so none goes unseen.
(README.rst, "What serve is", has which fakeredis needs which change, measured.)
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from types import TracebackType

import click
import fakeredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .failures import Failure
from .urls import DEFAULT_URL, URL_ENV

HOST = "127.0.0.1"  # loopback only: nothing outside this machine can reach it
DEFAULT_PORT = 6379
EXIT_CANNOT_LISTEN = 4

EXIT_CODES = (
    f"Exit codes: 0 stopped by Ctrl-C or SIGTERM; 2 bad arguments; "
    f"{EXIT_CANNOT_LISTEN} cannot listen (the port is in use, or not allowed)."
)


def dramatiq_scripts() -> dict[str, str]:
    """The Lua scripts Dramatiq's RedisBroker runs, read from the installed package."""
    folder = resources.files("dramatiq.brokers").joinpath("redis")
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }


class _ErrorRepliesKeepTheConnection:
    """A fakeredis connection whose error replies are returned instead of raised.

    The TCP handler writes whatever ``read_response`` returns to the client;
    what it raises, it writes and then closes the connection.
    """

    def __init__(self, connection, on_error: Callable[[redis.ResponseError], None]) -> None:
        self._connection = connection
        self._on_error = on_error

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def read_response(self, **kwargs):
        try:
            return self._connection.read_response(**kwargs)
        except redis.ResponseError as exc:
            self._on_error(exc)
            return exc  # encoded as an error reply, like the handler does before it disconnects


def _handler_keeping_connections(base: type, on_error: Callable[[tuple, redis.ResponseError], None]) -> type:
    """A subclass of fakeredis's request handler that keeps the connection after an error reply."""

    class Handler(base):
        # Answer at once: with Nagle's algorithm on, a WATCH/MULTI/EXEC transaction waited for
        # delayed ACKs, 42-48 ms instead of 0.6-0.8 ms (measured on loopback).
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            peer = self.client_address
            self.current_client = _ErrorRepliesKeepTheConnection(
                self.current_client, lambda exc: on_error(peer, exc)
            )

    return Handler


class EmbeddedRedis:
    """fakeredis's TCP server on 127.0.0.1, ready for Dramatiq.

    Binding happens in the constructor, so a port in use raises OSError
    there. ``port=0`` picks a free port; :attr:`url` says which. Given a
    ``fake_server``, it serves that one's data: ``python -m lab run`` uses it
    to let worker processes share its in-process ``memory://`` broker.
    Use it as a context manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, on_error_reply: Callable[[str], None] | None = None,
                 fake_server: fakeredis.FakeServer | None = None) -> None:
        self.server = fakeredis.TcpFakeServer((HOST, port))
        self.server.daemon_threads = True  # a stuck client must not keep the process alive
        if fake_server is not None:  # serve the data of an in-process fakeredis (memory://) over TCP
            self.server.fake_server = fake_server
        self.server.RequestHandlerClass = _handler_keeping_connections(
            self.server.RequestHandlerClass, self._error_reply
        )
        self.error_replies: list[str] = []
        self.on_error_reply = on_error_reply
        self.script_shas = self._load_scripts()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _load_scripts(self) -> dict[str, str]:
        """SCRIPT LOAD each of Dramatiq's scripts into the server; their SHA1s by file name."""
        client = fakeredis.FakeRedis(server=self.server.fake_server)
        try:
            return {name: client.script_load(source) for name, source in dramatiq_scripts().items()}
        finally:
            client.close()

    def _error_reply(self, peer: tuple, exc: redis.ResponseError) -> None:
        line = f"error reply to {peer[0]}:{peer[1]}: {type(exc).__name__}: {exc}"
        self.error_replies.append(line)
        if self.on_error_reply is not None:
            self.on_error_reply(line)

    def start(self) -> EmbeddedRedis:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="lab-serve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and the listening socket."""
        if self._thread is not None:
            self.server.shutdown()  # also tells fakeredis's connection handlers to end
            self._thread.join()
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def until_stopped() -> Iterator[Callable[[], None]]:
    """While the block runs, Ctrl-C and SIGTERM ask it to stop instead of interrupting it; the block calls the
    function it gets to wait for that. The handlers from before are put back at the end. For the commands that
    run until stopped and then exit 0: serve, dashboard, rabbitmq."""
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def wait() -> None:
        while not stopping.wait(0.2):
            pass

    try:
        yield wait
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _why_not_listening(port: int, exc: OSError) -> str:
    """One line: why ``port`` cannot be used, and what to do."""
    if exc.errno != errno.EADDRINUSE:
        return f"cannot listen on {HOST}:{port}: {exc.strerror or exc}"
    try:
        probe = redis.Redis(host=HOST, port=port, socket_timeout=0.2, socket_connect_timeout=0.2,
                            retry=Retry(NoBackoff(), 0))  # one try: whatever holds the port may never answer
        answers = probe.ping()
    except redis.RedisError:
        answers = False
    if answers:
        return (f"port {port} on {HOST} is in use by a Redis that answers: use it "
                f"({URL_ENV}=redis://{HOST}:{port}/0), or pick another port with --port N")
    return f"port {port} on {HOST} is in use by another program; pick another port with --port N"


def ready_line(server: EmbeddedRedis) -> str:
    """The line printed once the server accepts connections."""
    if server.port == DEFAULT_PORT:
        where = f"the lab's default ({DEFAULT_URL}), so workers and senders need no setting"
    else:
        where = f"point workers and senders at it with: export {URL_ENV}={server.url}"
    return (f"Embedded Redis (fakeredis, in memory) ready on {server.url}; {where}. "
            "Ctrl-C stops it, and its data is gone.")


@click.command(epilog=EXIT_CODES)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="TCP port on 127.0.0.1; 0 picks a free one.")
def serve(port: int) -> None:
    """Run an embedded Redis (fakeredis) on 127.0.0.1 until Ctrl-C.

    For learning on a machine without Redis: everything stays in this
    process's memory and is gone when it stops. Dramatiq's Lua scripts are
    loaded before it serves. Error replies are printed on stderr.
    """
    with until_stopped() as wait:  # from before its port answers: a Ctrl-C from then on is a clean stop
        try:
            server = EmbeddedRedis(port, on_error_reply=lambda line: click.echo(line, err=True))
        except OSError as exc:
            raise Failure(_why_not_listening(port, exc), EXIT_CANNOT_LISTEN) from None
        with server:
            click.echo(ready_line(server))
            wait()
    click.echo(f"Stopped; the data it held is gone ({len(server.error_replies)} error replies sent).")
