"""Experiment 10's ceilings: what Redis allows, and what Dramatiq's own protocol allows, at matched clients.

Two limits, each measured at the concurrency of the worker setup it is compared with:

- **Redis's own limit**: ``redis-benchmark`` (it ships with redis-server) against the same server, with
  as many clients as the setup has connections (a consumer and its threads per process), one command
  at a time and pipelined (16 per round trip): LPUSH and RPOP, and EVALSHA of Dramatiq's dispatch
  script doing an enqueue and an ack, the calls a message costs besides its share of a fetch.
- **Dramatiq's protocol limit**: the dispatch script driven with no actor and no worker, by as many
  processes as the setup, each with one fetching thread (``do_fetch`` of prefetch minus what it
  holds, as the consumer does) and as many acking threads (``do_ack``). Where a consumer holding its
  prefetch sleeps 5-9 ms, the driver waits for an ack instead. The batch and the clock are the
  drains' own (``e10_drains.release``). That is the most a Dramatiq worker could drain on this Redis.

``python -m benchmarks.e10_ceilings driver NAMESPACE PREFETCH THREADS`` is one driver process.
"""

from __future__ import annotations

import csv
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import lab

import dramatiq
import redis

from benchmarks import e10_pool
from benchmarks.e10_common import QUEUE, Config, Ledger, Plan, figure
from benchmarks.e10_drains import fill, release

#: EVALSHA dispatch arguments after the command: timestamp, queue, caller id, heartbeat timeout, dead TTL,
#: maintenance (0: never), the largest unpack; then the message id (random per call) and, to enqueue, its data.
DISPATCH_ARGS = ["{ts}", QUEUE, "redis-benchmark", "60000", "604800000", "0", "7999"]


def redis_benchmark(url: str, client: redis.Redis, script: Any, namespace: str, clients: int,
                    plan: Plan) -> dict[str, Any]:
    """redis-benchmark's requests/s at ``clients`` clients, one at a time and 16 per round trip."""
    executable = shutil.which("redis-benchmark")
    if executable is None:
        return {"available": False, "why": "redis-benchmark is not on the PATH (it ships with redis-server)"}
    where = urlparse(url)
    base = [executable, "-h", where.hostname or "127.0.0.1", "-p", str(where.port or 6379), "-c", str(clients),
            "--dbnum", (where.path or "/0").lstrip("/") or "0", "-r", "1000000", "-q", "--csv"]
    if where.password:
        base += ["-a", where.password, "--no-auth-warning"]
    sha = client.script_load(script.script)
    args = [a.format(ts=int(time.time() * 1000)) for a in DISPATCH_ARGS]
    tests = {"LPUSH, RPOP": ["-t", "lpush,rpop"],
             "EVALSHA dispatch enqueue": ["EVALSHA", sha, "1", namespace, "enqueue", *args, "m__rand_int__", "x" * 200],
             "EVALSHA dispatch ack": ["EVALSHA", sha, "1", namespace, "ack", *args, "m__rand_int__"]}
    out: dict[str, Any] = {"available": True, "clients": clients, "pipeline": 16}
    for label, test in tests.items():
        for pipelined in (False, True):
            n = plan.bench_pipelined if pipelined else plan.bench_requests
            result = subprocess.run([*base, "-n", str(n), *(["-P", "16"] if pipelined else []), *test],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                return {"available": False, "why": (result.stderr or result.stdout).strip()[-200:]}
            for line in list(csv.reader(result.stdout.splitlines()))[1:]:
                name = line[0].split()[0].upper() if not line[0].startswith(("LPUSH", "RPOP")) else line[0]
                name = label.replace("EVALSHA ", "") if name == "EVALSHA" else name
                out.setdefault(name, {})["pipelined" if pipelined else "single"] = float(line[1])
    for name in [k for k in client.scan_iter(f"{namespace}*")]:
        client.delete(name)
    client.delete("mylist")  # redis-benchmark's LPUSH/RPOP list (in --dbnum)
    return out


def benchmark_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """redis-benchmark's runs, each request rate a figure over them."""
    if not runs or not all(r["available"] for r in runs):
        return (runs or [{"available": False, "why": "not run"}])[-1]
    names = [k for k, v in runs[0].items() if isinstance(v, dict)]
    return {"available": True, "clients": runs[0]["clients"], "pipeline": runs[0]["pipeline"],
            **{name: {mode: figure([r[name][mode] for r in runs]) for mode in ("single", "pipelined")}
               for name in names}}


class Limits:
    """The dispatch-script drivers of one setup: started once, driven once per run, stopped at the end."""

    def __init__(self, url: str, namespace: str, config: Config, plan: Plan, client: redis.Redis,
                 ledger: Ledger, env: Callable[..., dict[str, str]]) -> None:
        self.url, self.ns, self.config, self.plan, self.client, self.ledger = url, namespace, config, plan, client, \
            ledger
        self.message = dramatiq.Message(queue_name=QUEUE, actor_name="does_nothing", args=("limit",), kwargs={},
                                        options={})
        self.drivers = e10_pool.start("benchmarks.e10_ceilings", ["driver", namespace,
                                      str(config.effective_prefetch), str(config.threads)], config.processes, env(url))

    def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.client.llen(f"{self.ns}:__e10__.drivers") < len(self.drivers):
            failed = [d for d in self.drivers if d.poll() is not None]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"dispatch drivers not ready: {failed[0].stderr.read()[-300:] if failed else ''}")
            time.sleep(0.01)

    def run(self, count: int, real: bool, server_us_per_poll: float = 0.0) -> dict[str, Any]:
        ids = fill(self.client, self.ns, [self.message] * count)
        pids = [d.pid for d in self.drivers]
        return release(self.client, self.ns, ids, pids, poll_s=self.plan.poll_s, real=real, ledger=self.ledger,
                       batch=f"limit {self.config.label}", server_us_per_poll=server_us_per_poll,
                       go=lambda: self.client.rpush(f"{self.ns}:__e10__.go", *["go"] * len(self.drivers)))

    def stop(self) -> None:
        self.client.rpush(f"{self.ns}:__e10__.go", *["stop"] * len(self.drivers))
        e10_pool.stop(self.drivers, self.ledger.problems, "a dispatch driver")


def drive(broker: Any, prefetch: int, threads: int) -> None:
    """Fetch and ack until the queue is empty: the consumer's protocol with no sleep, no actor, no middleware."""
    work: queue.Queue[str | None] = queue.Queue()
    held, lock = [0], threading.Condition()

    def acker() -> None:
        while (message_id := work.get()) is not None:
            broker.do_ack(QUEUE, message_id)
            with lock:
                held[0] -= 1
                lock.notify()

    ackers = [threading.Thread(target=acker) for _ in range(threads)]
    for thread in ackers:
        thread.start()
    while True:
        with lock:
            lock.wait_for(lambda: held[0] < prefetch)
            wanted = prefetch - held[0]
        fetched = broker.do_fetch(QUEUE, wanted)
        if not fetched:
            break
        with lock:
            held[0] += len(fetched)
        for data in fetched:
            work.put(dramatiq.Message.decode(data).options["redis_message_id"])
    for _ in ackers:
        work.put(None)
    for thread in ackers:
        thread.join()


def driver_main(namespace: str, prefetch: int, threads: int) -> None:
    """One driver process: a drive on each "go", until "stop" (or an hour with neither: the bench is gone)."""
    broker = lab.make_broker(lab.redis_url(), namespace=namespace)
    client = broker.client
    client.rpush(f"{namespace}:__e10__.drivers", os.getpid())
    idle_until = time.monotonic() + 3600
    while time.monotonic() < idle_until:
        item = client.blpop([f"{namespace}:__e10__.go"], timeout=2)
        if item is None:
            continue
        idle_until = time.monotonic() + 3600
        if item[1] == b"stop":
            break
        drive(broker, prefetch, threads)
    broker.close()


if __name__ == "__main__" and sys.argv[1:2] == ["driver"]:
    driver_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
