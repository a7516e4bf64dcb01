"""What every room of Experiment 10's bench shares: the plans, a figure, the conditions, the worker processes.

The rooms, one job each, import from here and never from each other's callers; nothing in
``benchmarks/`` imports ``e10_throughput``: the experiment passes its module in.

- ``e10_ceilings``: redis-benchmark, and Dramatiq's dispatch script driven with no actor and no worker;
- ``e10_drains``: a batch drained by real ``dramatiq`` workers;
- ``e10_senders`` and ``e10_latency``: sender processes, enqueue, latency, end to end;
- ``e10_bench``: the run, in order, and its checks; ``e10_report``: the report, for people.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, benchmarks/ comes first on the path, not the lab
    sys.path.insert(0, str(ROOT))

from lab.processes import WorkerProcess  # noqa: E402
from lab.server import EmbeddedRedis  # noqa: E402
from lab.urls import MEMORY_URL, NAMESPACE_ENV, mask_url  # noqa: E402

MODULE = "e10_throughput"  # what the `dramatiq` workers import: a name, so this package never imports it
QUEUE = "e10"
KINDS = {"noop": "does_nothing", "io": "waits_on_io", "cpu": "burns_cpu"}


@dataclass(frozen=True)
class Config:
    """One worker setup of the processing grid: ``dramatiq --processes P --threads T``."""

    label: str
    processes: int
    threads: int
    prefetch: int | None = None  # dramatiq_queue_prefetch; None: Dramatiq's default, 2 x threads
    kinds: tuple[str, ...] = ("noop",)
    roles: tuple[str, ...] = ()  # "trap" (1 thread, default prefetch), "raised" (same, prefetch set), "recommended"

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or min(2 * self.threads, 65535)  # Worker.queue_prefetch (dramatiq/worker.py)

    @property
    def clients(self) -> int:
        """Redis connections the workers use at once: a consumer and ``threads`` ackers per process."""
        return self.processes * (self.threads + 1)


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int = 5
    drain_s: float = 1.0  # how long one timed drain should last; sizes the batches
    poll_s: float = 0.02  # the bench's poll of a drain, once the first message is fetched
    warmup: int = 40  # messages of the untimed drain that sizes the next ones
    min_messages: int = 60
    max_messages: int = 30_000
    configs: tuple[Config, ...] = ()
    bench_requests: int = 20_000  # redis-benchmark -n, one command at a time
    bench_pipelined: int = 100_000  # ... with -P 16
    bench_runs: int | None = None  # how many of the runs start with redis-benchmark; None: all
    enqueue_count: int = 1500  # messages per one-sender run
    senders: int = 4  # sender processes
    sender_count: int = 500  # messages per sender process per run (enqueue, and end to end)
    light_rate: int = 100  # latency at light load: messages per second, sent evenly
    light_s: float = 1.0
    saturation: float = 0.8  # near saturation: this fraction of the recommended setup's drain rate of waits_on_io
    saturation_s: float = 1.0
    idle_wait_s: dict[int, float] = field(default_factory=lambda: {1000: 2.0, 100: 0.5})
    io_ms: int = 10
    cpu_loops: int = 20_000
    peer_runs: int = 3  # RQ, Huey and Celery beside Dramatiq, when installed
    peer_jobs: dict[str, int] = field(default_factory=lambda: {"noop": 400, "sleeps": 200})


RECOMMENDED = Config("2×8, prefetch 64", 2, 8, prefetch=64, kinds=("noop", "io", "cpu"), roles=("recommended",))

PLANS = {
    "full": Plan("full", configs=(
        Config("1×1", 1, 1, roles=("trap",)),
        Config("1×1, prefetch 64", 1, 1, prefetch=64, kinds=("noop", "io", "cpu"), roles=("raised",)),
        Config("1×8", 1, 8, kinds=("noop", "io", "cpu")),
        Config("2×8", 2, 8),
        RECOMMENDED,
    )),
    "quick": Plan("quick", drain_s=0.3, warmup=20, min_messages=40, bench_requests=5000, bench_pipelined=20_000,
                  enqueue_count=500, senders=2, sender_count=250, light_s=0.4, saturation_s=0.4,
                  idle_wait_s={1000: 1.6, 100: 0.4}, peer_runs=1, peer_jobs={"noop": 200, "sleeps": 100}, configs=(
                      Config("1×1", 1, 1, roles=("trap",)),
                      replace(RECOMMENDED, kinds=("noop", "io")),
                  )),
    # For the tests and `python -m lab run e10`: a few hundred messages, every field of the report.
    "tiny": Plan("tiny", runs=2, drain_s=0.05, poll_s=0.002, warmup=10, min_messages=30, max_messages=60,
                 bench_requests=500, bench_pipelined=2000, bench_runs=1, enqueue_count=60, senders=2, sender_count=20,
                 light_rate=50, light_s=0.15, saturation_s=0.15, idle_wait_s={1000: 0.3, 100: 0.1}, io_ms=2,
                 cpu_loops=2000, peer_runs=0, configs=(
                     Config("1×1", 1, 1, roles=("trap",)),
                     Config("1×2, prefetch 8", 1, 2, prefetch=8, kinds=("noop", "io", "cpu"),
                            roles=("raised", "recommended")),
                 )),
}
# For `python -m lab run e10`, which every test run of the lab plays twice: the fewest processes that still
# give every field (one setup in every role, one sender process, the two idle probes), each measured once.
PLANS["scenario"] = replace(PLANS["tiny"], name="scenario", runs=1, senders=1, configs=(
    Config("1×2, prefetch 8", 1, 2, prefetch=8, kinds=("noop", "io"), roles=("trap", "raised", "recommended")),))


#: The fields every report has, whatever the plan and the server (some more appear on redis-server).
FIELDS = {
    "conditions": ("python", "dramatiq", "redis_py", "server", "real_redis", "cores", "url", "load_average",
                   "note"),
    "enqueue": ("one_sender", "senders"),
    "latency": ("light", "saturated", "idle_1000", "idle_100"),
    "end_to_end": ("senders", "messages", "rate", "seconds"),
    "trap": ("sleep_ms", "sleep_range_ms", "one_thread", "raised"),
    "recommended": ("config", "processes", "threads", "prefetch", "rate", "limit", "of_limit", "why"),
    "consistency": ("sent", "processed", "batches", "left", "workers", "ok", "problems"),
}
ROW_FIELDS = ("config", "kind", "actor", "processes", "threads", "prefetch", "prefetch_set", "roles", "messages",
              "rate", "pickup_ms", "timing_error", "cpu_ms_per_message", "bench_cpu_ms_per_message", "bench_core_share")
LIMIT_FIELDS = ("config", "clients", "prefetch", "rate", "of_limit", "cpu_ms_per_message", "redis_benchmark")


def missing_fields(report: dict[str, Any]) -> list[str]:
    """The fields of FIELDS, ROW_FIELDS and LIMIT_FIELDS that ``report`` lacks (or holds None for)."""
    missing = [f"{section}.{name}" for section, names in FIELDS.items() for name in names
               if report.get(section, {}).get(name) is None]
    missing += [f"processing[{i}].{name}" for i, row in enumerate(report.get("processing") or [{}])
                for name in ROW_FIELDS if row.get(name) is None]
    missing += [f"limits[{i}].{name}" for i, row in enumerate(report.get("limits") or [{}])
                for name in LIMIT_FIELDS if row.get(name) is None]
    return missing + [name for name in ("plan", "runs", "elapsed_s") if report.get(name) is None]


@dataclass
class Ledger:
    """What a run sent to actors (batch -> messages) and what went wrong: every room writes here."""

    sent: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def median_interval(values: list[float]) -> dict[str, float] | None:
    """A distribution-free interval for the median: order statistics k and n+1-k, as wide as needed for
    at least 90 % confidence (binomial, p = 1/2). None under 5 runs. With 5 runs it is the range (94 %)."""
    n, ordered = len(values), sorted(values)
    if n < 5:
        return None
    best = None
    for k in range(1, n // 2 + 1):
        confidence = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
        if confidence < 0.9:
            break
        best = {"low": ordered[k - 1], "high": ordered[n - k], "confidence": round(confidence, 3)}
    return best


def figure(values: list[float]) -> dict[str, Any]:
    """A measured figure: median and range over its runs, an interval for the median, and the runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "interval": median_interval(values), "runs": list(values)}


def conditions(url: str) -> dict[str, Any]:
    """Versions, cores, and which server answers at ``url`` (from HELLO: "redis", "fakeredis", "valkey"...)."""
    # A connection of its own: on fakeredis, HELLO leaves its connection in a protocol that redis-py's
    # next EVALSHA reply then waits for until the socket times out.
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        hello = client.execute_command("HELLO")
    hello = dict(zip(hello[::2], hello[1::2], strict=True)) if isinstance(hello, list) else hello
    server, version = (hello.get(k, hello.get(k.encode(), b"?")) for k in ("server", "version"))
    server = server.decode() if isinstance(server, bytes) else str(server)
    version = version.decode() if isinstance(version, bytes) else str(version)
    real = server == "redis"
    return {
        "python": platform.python_version(), "dramatiq": dramatiq.__version__, "redis_py": redis.__version__,
        "server": f"{'redis-server' if server == 'redis' else server} {version}", "real_redis": real,
        "cores": os.cpu_count(), "url": mask_url(url), "load_average": [round(os.getloadavg()[0], 2)],
        "note": "" if real else (f"NOT Redis figures: this is {server} {version}"
                                 + (" (the embedded server, fakeredis over TCP)" if server == "fakeredis" else "")
                                 + ", measured the same way, for comparison only."),
    }


@contextmanager
def reachable(url: str) -> Iterator[tuple[str, bool]]:
    """(a URL other processes can use, whether it is the embedded server this call started).

    memory:// lives inside one process, so worker processes cannot share it: serve it over TCP.
    """
    if url != MEMORY_URL:
        yield url, False
        return
    with EmbeddedRedis(port=0) as server:
        yield server.url, True


# -- processes ----------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far, from /proc (0 where it cannot be read)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def idle_since(worker: WorkerProcess) -> float:
    """When ``worker`` said it was ready (as a time.monotonic() value), from its log line's timestamp."""
    line = worker.ready(1, timeout=60).output.split("Worker process is ready for action")[0].rsplit("\n", 1)[-1]
    try:
        said = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return time.monotonic()
    return time.monotonic() - max(0.0, time.time() - said)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workers:
    """The `dramatiq` CLI processes this run starts: each one stopped, and checked stopped, by its id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: list[tuple[str, WorkerProcess]] = []
        self.stopped: list[dict[str, Any]] = []
        self.signalled: set[int] = set()

    def start(self, label: str, namespace: str, processes: int, threads: int, queues: tuple[str, ...],
              **env: str) -> WorkerProcess:
        args = [MODULE, "--processes", str(processes), "--threads", str(threads), "--queues", *queues]
        worker = WorkerProcess(args, url=self.url, **{NAMESPACE_ENV: namespace, **env})
        self.running.append((label, worker))
        return worker

    def stop(self, *workers: WorkerProcess) -> None:
        """SIGTERM each master once (a second one would kill its workers), then wait for all of them together."""
        pids = {worker: [worker.pid, *worker.worker_pids()] for worker in workers}
        for worker in workers:
            self.terminate(worker)
        for worker in workers:
            worker.wait(timeout=15)
            code = worker.stop(timeout=1)  # SIGKILL only if it is still running; removes what it left behind
            label = next(lb for lb, w in self.running if w is worker)
            self.running = [(lb, w) for lb, w in self.running if w is not worker]
            left = [pid for pid in pids[worker] if alive(pid)]
            self.stopped.append({"label": label, "exit_code": code, "pids": pids[worker], "still_alive": left,
                                 "log": worker.log.name})
            worker.log.close()

    def delete_logs(self) -> None:
        """Delete the workers' logs: done when every count added up (otherwise the report names them)."""
        for stopped in self.stopped:
            Path(stopped.pop("log")).unlink(missing_ok=True)

    def terminate(self, worker: WorkerProcess) -> None:
        """Ask ``worker`` to stop (SIGTERM, once), without waiting."""
        if worker.pid not in self.signalled and worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
            self.signalled.add(worker.pid)

    def stop_all(self) -> None:
        self.stop(*(worker for _, worker in self.running))
