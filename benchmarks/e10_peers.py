"""Dramatiq beside RQ, Huey and Celery: the same jobs, on the same redis-server, in one run, alternating.

Optional: the peers are pinned in ``benchmarks/requirements-peers.txt`` (``pip install -r`` it);
without them the report says what to install. For each library, job (``e10_peer_jobs``) and setup:
its own enqueue API puts ``count`` jobs in a queue of their own, from a process of their own (timed:
the enqueue rate); then its workers start, in one of two setups:

- **defaults**: the library's own command with no option of processes or threads (``DEFAULTS`` says
  what each then runs, as its installed source decides: ``tests/test_e10_peers.py`` checks it);
- **matched**: 2 processes of 8 threads each where the library has threads (Dramatiq ``-p 2 -t 8``,
  Huey ``-w 8 -k thread`` twice, Celery ``--pool threads -c 8`` twice; RQ has no threads: 2
  ``rq worker`` processes, each forking a child per job, its default).

Only the concurrency differs between the two: both keep the logs quiet, and Celery's gossip, mingle
and heartbeat (chatter between workers) off. The drain rate comes from the jobs' own stamps (first
start to last start), so no worker's boot counts; the CPU of the worker processes and Redis's
commands are read from the first stamp on.

``python -m benchmarks.e10_peers enqueue KIND COUNT MS`` is the enqueuing process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.processes import lab_env

import redis

from benchmarks.e10_common import ROOT, Ledger, figure

LIBRARIES = ("dramatiq", "rq", "huey", "celery")
SETUPS = ("defaults", "matched")
INSTALL = "pip install -r benchmarks/requirements-peers.txt"
CORES = os.cpu_count() or 1
#: What each library runs when its worker command gets no option of processes or threads.
DEFAULTS = {
    "dramatiq": f"{CORES} processes (one per core) x 8 threads",  # dramatiq/cli.py: --processes, --threads
    "rq": "1 process, forking a child per job",  # rq worker: --worker-class rq.Worker, whose execute_job forks
    "huey": "1 process x 1 thread",  # huey/consumer_options.py: workers 1, worker_type "thread"
    "celery": f"1 process, a prefork pool of {CORES} children (one per core)",  # worker_pool, worker_concurrency
}
MATCHED = {"dramatiq": "2 processes x 8 threads", "rq": "2 processes, each forking a child per job",
           "huey": "2 processes x 8 threads", "celery": "2 processes x 8 threads"}


def missing() -> list[str]:
    """The peers that are not installed."""
    return [name for name in LIBRARIES[1:] if importlib.util.find_spec(name) is None]


def workers(library: str, queue: str, url: str, setup: str = "matched") -> list[list[str]]:
    """The worker commands for ``library``: its defaults, or 2 processes with 8 threads each where it has threads."""
    py, jobs, matched = sys.executable, "benchmarks.e10_peer_jobs", setup == "matched"
    celery = [py, "-m", "celery", "-A", jobs, "worker", "-Q", queue, "-l", "warning", "--without-gossip",
              "--without-mingle", "--without-heartbeat"]
    return {
        "dramatiq": [[py, "-m", "dramatiq", jobs, *(["--processes", "2", "--threads", "8"] if matched else []),
                      "--queues", queue]],
        "rq": [[py, "-m", "rq.cli", "worker", "--url", url, "--quiet", queue]] * (2 if matched else 1),
        "huey": [[py, "-m", "huey.bin.huey_consumer", f"{jobs}.huey", *(["-w", "8", "-k", "thread"] if matched
                                                                        else []), "-q"]] * (2 if matched else 1),
        "celery": [[*celery, *(["--pool", "threads", "-c", "8"] if matched else []), "-n", f"w{i}@{queue}"]
                   for i in range(2 if matched else 1)],
    }[library]


def tree_cpu(root_pids: list[int]) -> float:
    """CPU seconds of ``root_pids`` and their descendants, including children they have reaped (RQ's forks)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, list(root_pids)
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += sum(int(f) for f in stats[pid][11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
        todo += children.get(pid, [])
    return total


def commands(client: redis.Redis) -> int:
    return sum(v["calls"] for k, v in client.info("commandstats").items() if k.startswith("cmdstat_"))


def measure(url: str, namespace: str, library: str, kind: str, count: int, ms: int, client: redis.Redis,
            ledger: Ledger, setup: str = "matched") -> dict[str, Any]:
    """One library draining ``count`` jobs of ``kind``: its rates, CPU and commands a job, whether each ran once."""
    queue = f"{namespace}-{setup}-{library}-{kind}"
    env = lab_env(url, E10_PEER=library, E10_PEER_URL=url, E10_PEER_QUEUE=queue)
    done = f"{queue}:done"
    enqueued = subprocess.run([sys.executable, "-m", "benchmarks.e10_peers", "enqueue", kind, str(count), str(ms)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if enqueued.returncode != 0:
        raise RuntimeError(f"{library}: enqueue failed: {enqueued.stderr.strip()[-300:]}")
    processes = [subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for cmd in workers(library, queue, url, setup)]
    try:
        deadline = time.monotonic() + 60 + count * ms / 1000
        while not client.llen(done) and time.monotonic() < deadline:
            time.sleep(0.005)
        cpu, calls = tree_cpu([p.pid for p in processes]), commands(client)
        while client.llen(done) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu, calls = tree_cpu([p.pid for p in processes]) - cpu, commands(client) - calls
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    stamps = sorted((float(t), int(i)) for i, t in (s.split() for s in client.lrange(done, 0, -1)))
    ran = sorted(i for _, i in stamps)
    if ran != list(range(count)):
        ledger.problems.append(f"{library} {kind} ({setup}): {len(ran)} jobs ran of {count}, {len(set(ran))} "
                               "distinct")
    for name in client.scan_iter(f"*{queue}*", count=1000):
        client.delete(name)
    client.srem("rq:queues", f"rq:queue:{queue}")  # RQ's list of queues (a key shared with your own RQ queues)
    took = max(stamps[-1][0] - stamps[0][0], 1e-6) if len(stamps) > 1 else 1e-6
    return {"enqueue": float(enqueued.stdout.split()[0]), "rate": (len(stamps) - 1) / took,
            "cpu_ms_per_job": cpu * 1000 / count, "commands_per_job": calls / count, "ran": len(ran),
            "ran_once": ran == list(range(count))}


def compare(url: str, namespace: str, runs: int, counts: dict[str, int], ms: int, client: redis.Redis,
            ledger: Ledger, step: Any = lambda what: None, setups: tuple[str, ...] = SETUPS) -> dict[str, Any]:
    """Every library, job and setup ``runs`` times, the libraries alternating within each run and setup."""
    if absent := missing():
        return {"available": False, "missing": absent,
                "note": f"RQ, Huey and Celery beside Dramatiq: not measured, {', '.join(absent)} not installed "
                        f"({INSTALL})."}
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in range(runs):
        for kind, count in counts.items():
            for setup in setups:
                for library in LIBRARIES:
                    step(f"peers: {library} at {setup}, {kind}, {count} jobs, run {run + 1}")
                    results.setdefault((library, kind, setup), []).append(
                        measure(url, f"{namespace}-{run}", library, kind, count, ms, client, ledger, setup))
    rows = [{"library": library, "version": importlib.metadata.version(library), "kind": kind, "setup": setup,
             "workers": (DEFAULTS if setup == "defaults" else MATCHED)[library],
             "jobs": counts[kind], "ms": ms if kind == "sleeps" else 0,
             "ran_once": all(r["ran_once"] for r in rs),
             **{name: figure([r[name] for r in rs]) for name in ("rate", "enqueue", "cpu_ms_per_job",
                                                                 "commands_per_job")}}
            for (library, kind, setup), rs in results.items()]
    return {"available": True, "rows": rows, "note": ""}


def enqueue_main(kind: str, count: int, ms: int) -> None:
    from benchmarks import e10_peer_jobs as jobs

    args = [(i,) if kind == "noop" else (i, ms) for i in range(count)]
    started = time.perf_counter()
    for a in args:
        jobs.enqueue(kind, *a)
    print(count / (time.perf_counter() - started))


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    enqueue_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
