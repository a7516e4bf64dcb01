"""Re-measure the figures README.rst quotes for the lab itself and experiments 01-04.

    python benchmarks/lab_figures.py            # needs redis-server installed; about 2 minutes

Each figure is printed with its conditions (what, how many runs, the range over
the runs) and the versions and core count of this machine. Nothing here is
asserted: speeds belong in a report, not in a test that flakes.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402
from lab.processes import RedisServer, WorkerProcess, lab_env  # noqa: E402
from lab.server import EmbeddedRedis  # noqa: E402
from lab.stats import span  # noqa: E402
from lab.status import read_snapshot  # noqa: E402

RUNS = 3


def conditions() -> str:
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return (f"Python {platform.python_version()}, Dramatiq {dramatiq.__version__}, redis-py {redis.__version__}, "
            f"redis-server {server.removeprefix('v=')}, {os.cpu_count()} cores")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def report(name: str, values: list[float], unit: str, fmt: str = "{:.2f}") -> None:
    median = fmt.format(statistics.median(values))
    print(f"{name}: {span(values, fmt)} {unit} over {len(values)} runs (median {median})")


def send_latency(url: str, sends: int = 500) -> float:
    """Mean ms per send() of a one-argument message, one client, after one warm-up send."""
    broker = lab.make_broker(url)
    actor = dramatiq.actor(lambda n: None, actor_name="bench", queue_name="bench", broker=broker)
    actor.send(0)
    took = timed(lambda: [actor.send(i) for i in range(sends)])
    broker.client.flushall()
    broker.close()
    return took / sends * 1000


def silent_port_give_up() -> float:
    """Seconds until a sender gives up on a port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        return timed(lambda: subprocess.run([sys.executable, "e01_hello_world.py", "1"], cwd=ROOT,
                                            env=lab_env(url), capture_output=True))


def status_read(url: str, ready: int = 1000) -> float:
    """ms for one status snapshot of a queue holding ``ready`` messages (median of 5 reads)."""
    broker = lab.make_broker(url)
    actor = dramatiq.actor(lambda n: None, actor_name="bench", queue_name="bench", broker=broker)
    for i in range(ready):
        actor.send(i)
    reads = [timed(lambda: read_snapshot(broker)) * 1000 for _ in range(5)]
    broker.client.flushall()
    broker.close()
    return statistics.median(reads)


def lab_run(experiment: str, url: str) -> float:
    return timed(lambda: subprocess.run([sys.executable, "-m", "lab", "run", experiment, "--redis", url],
                                        cwd=ROOT, env=lab_env(url), capture_output=True, check=True))


def retry_lateness(url: str) -> list[float]:
    """ms past its 500 ms that a Retry(delay=500) ran, with a default worker_timeout (1000) worker."""
    worker = WorkerProcess(["--processes", "1", "--threads", "1", "e02_error_handling"], url=url)
    try:
        worker.ready()
        subprocess.run([sys.executable, "e02_error_handling.py", "postponed", "1"], cwd=ROOT, env=lab_env(url),
                       capture_output=True, check=True)
        output = worker.wait_for(r"trying 1 \(attempt 2", timeout=10)
    finally:
        worker.close()
    first, second = [float(s) for s in re.findall(r"attempt \d, [^,]+, ([\d.]+) s after", output)]
    return [(second - first) * 1000 - 500]


def sender_time(url: str, *args: str) -> float:
    return timed(lambda: subprocess.run([sys.executable, "e04_pipelines.py", *args], cwd=ROOT, env=lab_env(url),
                                        capture_output=True, check=True))


def idle_scripts(url: str, worker_timeout: int, seconds: float = 10) -> int:
    """EVALSHA calls an idle one-thread e03 worker makes in ``seconds`` (INFO commandstats)."""
    client = redis.Redis.from_url(url)
    worker = WorkerProcess(["--processes", "1", "--threads", "1", "e03_delays"], url=url,
                           dramatiq_worker_timeout=str(worker_timeout))
    try:
        worker.ready()
        time.sleep(2)  # let the consumers' backoff reach worker_timeout: the steady state is what is counted
        client.config_resetstat()
        time.sleep(seconds)
        calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    finally:
        worker.close()
    return calls


def main() -> None:
    print(conditions())
    with RedisServer() as server, EmbeddedRedis(port=0) as embedded:
        report("send() on redis-server", [send_latency(server.url) for _ in range(RUNS)], "ms per send, 500 sends")
        report("send() on the embedded server", [send_latency(embedded.url) for _ in range(RUNS)],
               "ms per send, 500 sends")
        report("status read, 1000 ready, redis-server", [status_read(server.url) for _ in range(RUNS)], "ms")
        report("status read, 1000 ready, embedded", [status_read(embedded.url) for _ in range(RUNS)], "ms")
        report("a sender's give-up on a silent port", [silent_port_give_up() for _ in range(RUNS)], "s")
        for experiment in ("e01", "e02", "e03", "e04"):
            for name, url in (("fakeredis", lab.MEMORY_URL), ("redis-server", server.url)):
                report(f"python -m lab run {experiment} on {name}", [lab_run(experiment, url) for _ in range(RUNS)],
                       "s (wall, with Python's start-up)")
        report("Retry(delay=500) lateness, worker_timeout 1000, redis-server",
               [v for _ in range(10) for v in retry_lateness(server.url)], "ms past the 500 ms", "{:.0f}")
        worker = WorkerProcess(["--processes", "1", "e04_pipelines"], url=server.url)
        try:
            worker.ready()
            for args in (["pipeline", "3"], ["group", "10"], ["group", "1000"]):
                report(f"e04_pipelines.py {' '.join(args)} (dramatiq CLI, 8 threads, redis-server)",
                       [sender_time(server.url, *args) for _ in range(RUNS)], "s (wall, with Python's start-up)")
        finally:
            worker.close()
        for wt in (1000, 100):
            print(f"idle e03 worker (1 process, 1 thread), worker_timeout {wt}: "
                  f"{idle_scripts(server.url, wt)} Lua dispatch calls in 10 s (redis-server INFO commandstats)")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
