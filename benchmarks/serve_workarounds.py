"""Which of ``python -m lab serve``'s two workarounds does this fakeredis need? (README.rst, serve)

    python benchmarks/serve_workarounds.py [STARTS]     # 20 starts a row by default; about 3 minutes

Run it with the venv whose fakeredis you want to know about: the pinned one, or the
newest releases (``python -m lab canary --venv DIR``, then ``DIR/bin/python
benchmarks/serve_workarounds.py``). For each way of serving (plain fakeredis, scripts
preloaded only, connection kept only, both as ``serve`` does), it starts a fresh
server STARTS times; each time a 4-thread worker starts on it and a sender on a
second client sends 8 messages, watched for 1.5 s. It counts the starts where the
worker logged a connection error, where a send failed, and the error replies sent.
Nothing here is asserted: a race belongs in a report, not in a test that flakes.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import fakeredis
import redis
from fakeredis._clients import _tcp_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lab  # noqa: E402
from lab.server import EmbeddedRedis, dramatiq_scripts  # noqa: E402

ERROR_REPLIES: list[str] = []
_dump = _tcp_server.Writer.dump


def _counting_dump(self: _tcp_server.Writer, value: object) -> None:
    """Every reply goes out through Writer.dump, error replies too (2.40 and 2.41 alike): count those."""
    if isinstance(value, Exception):
        ERROR_REPLIES.append(f"{type(value).__name__}: {value}")
    _dump(self, value)


_tcp_server.Writer.dump = _counting_dump


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


Serving = Callable[[], tuple[str, Callable[[], None]]]  # starts a server: its URL, and how to stop it


def plain(preload: bool) -> Serving:
    def start() -> tuple[str, Callable[[], None]]:
        server = fakeredis.TcpFakeServer(("127.0.0.1", 0))
        server.daemon_threads = True
        if preload:
            client = fakeredis.FakeRedis(server=server.fake_server)
            for source in dramatiq_scripts().values():
                client.script_load(source)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"redis://127.0.0.1:{server.server_address[1]}/0", lambda: (server.shutdown(), server.server_close())
    return start


def embedded(preload: bool) -> Serving:
    def start() -> tuple[str, Callable[[], None]]:
        server = EmbeddedRedis(port=0).start()
        if not preload:
            redis.Redis.from_url(server.url).script_flush()
        return server.url, server.stop
    return start


def after_an_error_reply(start: Serving) -> bytes:
    """An unknown script's EVALSHA, then PING on the same connection: PING's reply, b"" if it was closed."""
    url, stop = start()
    try:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), timeout=5) as sock:
            sock.sendall(b"*3\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"0" * 40 + b"\r\n$1\r\n0\r\n")
            sock.recv(1024)
            try:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(1024)
            except ConnectionError:
                return b""
    finally:
        stop()


def one_start(start: Serving, warnings: Warnings) -> tuple[bool, bool, int]:
    """(the worker logged a connection error, a send failed, error replies sent) on a fresh server."""
    url, stop = start()
    warnings.lines.clear()
    ERROR_REPLIES.clear()
    broker = lab.make_broker(url)
    dramatiq.actor(lambda n: None, actor_name="job", queue_name="t_serve", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    send_failed = False
    try:
        sender = lab.make_broker(url)
        job = dramatiq.actor(lambda n: None, actor_name="job", queue_name="t_serve", broker=sender)
        watched_until = time.monotonic() + 1.5
        try:
            for n in range(8):
                job.send(n)
        except redis.RedisError:
            send_failed = True
        sender.close()
        time.sleep(max(0.0, watched_until - time.monotonic()))
    finally:
        lab.stop_worker(worker)
        broker.close()
        stop()
    return any("connection error" in line for line in warnings.lines), send_failed, len(ERROR_REPLIES)


def main(starts: int) -> None:
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)
    print(f"fakeredis {fakeredis.__version__}, redis-py {redis.__version__}, Dramatiq {dramatiq.__version__}; "
          f"{starts} fresh servers a row, one process")
    print(f"PING after an error reply on plain fakeredis: {after_an_error_reply(plain(False)) or 'connection closed'}")
    rows = {"neither (plain fakeredis)": plain(False), "scripts preloaded only": plain(True),
            "connection kept only": embedded(False), "both (serve)": embedded(True)}
    for name, start in rows.items():
        results = [one_start(start, warnings) for _ in range(starts)]
        replies = [r[2] for r in results]
        print(f"{name}: worker logged a connection error in {sum(r[0] for r in results)} of {starts}, "
              f"a send failed in {sum(r[1] for r in results)} of {starts}, "
              f"error replies {min(replies)} to {max(replies)} a start")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
