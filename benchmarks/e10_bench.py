"""Experiment 10's measuring code: ceiling, enqueue, drains, latency, and the checks that every count adds up.

``python e10_throughput.py`` runs it (see that file); ``measure(url, plan)`` is what the tests and
``python -m lab run e10`` call with a tiny plan. Nothing here asserts a speed: the report carries the
figures, each a median and a range over repeated runs, and ``report["consistency"]`` says whether
every message sent was run exactly once and nothing was left behind.

How a drain is timed. The worker processes start first and sit idle. The bench writes the batch's
messages into ``<ns>:e10.msgs`` (what Dramatiq's enqueue writes), then pushes all their ids onto the
list ``<ns>:e10`` in one RPUSH: the queue goes from empty to full at once. The clock starts when
the first id leaves the list (a worker fetched) and stops when ``e10.msgs`` is empty (every message
acked). Each actor counts what it ran in memory (``Tally``) and writes the counts when its worker
stops, so no Redis command is added per message.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import dramatiq
import redis
from dramatiq.common import compute_backoff

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lab  # noqa: E402
from lab.processes import WorkerProcess, lab_env  # noqa: E402
from lab.server import EmbeddedRedis  # noqa: E402
from lab.stats import percentile  # noqa: E402
from lab.urls import MEMORY_URL, NAMESPACE_ENV, mask_url  # noqa: E402

MODULE = "e10_throughput"
KINDS = {"noop": "does_nothing", "io": "waits_on_io", "cpu": "burns_cpu"}
TARGET = 0.6  # the goal: recommended settings reach 60 % of the single-client raw ceiling


# -- what one run measures -----------------------------------------------------------------------


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


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int = 3
    drain_s: float = 0.5  # how long one timed drain should last; sizes the batches
    warmup: int = 40  # messages of the untimed drain that sizes the next ones
    min_messages: int = 60
    max_messages: int = 20_000
    configs: tuple[Config, ...] = ()
    ceiling_pairs: int = 1500  # LPUSH+RPOP pairs per single-client run
    pipelined_pairs: int = 10_000  # ... per pipelined run, 100 pairs per round trip
    enqueue_count: int = 1500  # messages per one-sender run
    senders: int = 4  # sender processes
    sender_count: int = 500  # messages per sender process per run
    light_rate: int = 100  # latency at light load: messages per second, sent evenly
    light_s: float = 1.0
    saturation: float = 0.8  # near saturation: this fraction of the recommended setup's drain rate of
    # waits_on_io, offered by the sender processes together
    saturation_s: float = 1.0
    idle_wait_s: dict[int, float] = field(default_factory=lambda: {1000: 2.0, 100: 0.5})
    io_ms: int = 10
    cpu_loops: int = 20_000


RECOMMENDED = Config("2×8, prefetch 64", 2, 8, prefetch=64, kinds=("noop", "io", "cpu"), roles=("recommended",))

PLANS = {
    "full": Plan("full", configs=(
        Config("1×1", 1, 1, roles=("trap",)),
        Config("1×1, prefetch 64", 1, 1, prefetch=64, kinds=("noop", "io", "cpu"), roles=("raised",)),
        Config("1×8", 1, 8, kinds=("noop", "io", "cpu")),
        Config("2×8", 2, 8),
        RECOMMENDED,
    )),
    "quick": Plan("quick", drain_s=0.25, warmup=20, min_messages=40, ceiling_pairs=600, pipelined_pairs=3000,
                  enqueue_count=500, senders=2, sender_count=250, light_s=0.4, saturation_s=0.4,
                  idle_wait_s={1000: 1.6, 100: 0.4}, configs=(
                      Config("1×1", 1, 1, roles=("trap",)),
                      replace(RECOMMENDED, kinds=("noop", "io")),
                  )),
    # For the tests and `python -m lab run e10`: a few hundred messages, every field of the report.
    "tiny": Plan("tiny", drain_s=0.05, warmup=10, min_messages=30, max_messages=60, ceiling_pairs=100,
                 pipelined_pairs=200, enqueue_count=60, senders=2, sender_count=20, light_rate=50, light_s=0.2,
                 saturation_s=0.2, idle_wait_s={1000: 0.3, 100: 0.1}, io_ms=2, cpu_loops=2000, configs=(
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
    "ceiling": ("single", "pipelined", "unit", "round_trip_ms", "when"),
    "enqueue": ("one_sender", "senders"),
    "latency": ("light", "saturated", "idle_1000", "idle_100"),
    "trap": ("sleep_ms", "sleep_range_ms", "one_thread", "raised"),
    "recommended": ("config", "processes", "threads", "prefetch", "rate", "ceiling", "of_ceiling", "target", "met",
                    "why"),
    "consistency": ("sent", "processed", "batches", "left", "workers", "ok", "problems"),
}
ROW_FIELDS = ("config", "kind", "actor", "processes", "threads", "prefetch", "prefetch_set", "roles", "messages",
              "rate", "pickup_ms", "cpu_ms_per_message")


def missing_fields(report: dict[str, Any]) -> list[str]:
    """The fields of FIELDS and ROW_FIELDS that ``report`` lacks (or holds None for), as "section.field"."""
    missing = [f"{section}.{name}" for section, names in FIELDS.items() for name in names
               if report.get(section, {}).get(name) is None]
    missing += [f"processing[{i}].{name}" for i, row in enumerate(report.get("processing") or [{}])
                for name in ROW_FIELDS if row.get(name) is None]
    return missing + [name for name in ("plan", "runs", "elapsed_s") if report.get(name) is None]


def figure(values: list[float]) -> dict[str, Any]:
    """A measured figure: median and range over its runs, and the runs themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


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


# -- the bench ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, module: ModuleType, url: str, plan: Plan, namespace: str,
                 step: Callable[[str], None] = lambda what: None) -> None:
        self.e10, self.url, self.plan, self.ns, self.step = module, url, plan, namespace, step
        self.broker = lab.make_broker(url, namespace=namespace)  # the drains' and latencies' namespace
        self.client = self.broker.client
        self.actors = {name: dramatiq.actor(getattr(module, name).fn, actor_name=name, queue_name=module.QUEUE,
                                            broker=self.broker)
                       for name in (*KINDS.values(), "notes_its_latency")}
        self.workers = Workers(url)
        self.sent: dict[str, int] = {}  # batch -> messages sent to a worker in namespace self.ns (or an idle one)
        self.problems: list[str] = []
        self.real = False
        self._probe_brokers: dict[str, Any] = {}
        self.raw: dict[str, list[float]] = {"single": [], "pipelined": []}

    def key(self, name: str, namespace: str | None = None) -> str:
        return f"{namespace or self.ns}:{name}"

    # The ceiling: what one client gets from this server, with nothing of Dramatiq in between.
    def ceiling(self, when: str) -> None:
        """``runs`` runs of raw LPUSH+RPOP pairs, one client, one command at a time and pipelined.

        Called at the start and at the end of the run: the ceiling's figures are over both, so that
        a machine whose load drifts meanwhile does not make the fractions of the ceiling lopsided.
        """
        scratch, payload = self.key("__e10__.ceiling"), "x" * 200  # about the size of an encoded message id + data
        for run in range(self.plan.runs):
            self.step(f"ceiling, at the {when}: raw LPUSH+RPOP, run {run + 1}")
            started = time.perf_counter()
            for _ in range(self.plan.ceiling_pairs):
                self.client.lpush(scratch, payload)
                self.client.rpop(scratch)
            self.raw["single"].append(self.plan.ceiling_pairs / (time.perf_counter() - started))
            started = time.perf_counter()
            with self.client.pipeline(transaction=False) as pipe:
                for _ in range(self.plan.pipelined_pairs // 100):
                    for _ in range(100):
                        pipe.lpush(scratch, payload)
                        pipe.rpop(scratch)
                    pipe.execute()
            self.raw["pipelined"].append(self.plan.pipelined_pairs / (time.perf_counter() - started))
        if self.client.llen(scratch):
            self.problems.append("the ceiling's scratch list is not empty")

    def ceiling_report(self) -> dict[str, Any]:
        single = self.raw["single"]
        return {"single": figure(single), "pipelined": figure(self.raw["pipelined"]), "unit": "LPUSH+RPOP pairs/s",
                "round_trip_ms": 1000 / (2 * statistics.median(single)), "when": "at the start and at the end"}

    # Enqueue: Dramatiq's send(), into a namespace no worker reads, so nothing is consumed meanwhile.
    def enqueue_one_sender(self) -> dict[str, Any]:
        ns = f"{self.ns}-send"
        send_broker = lab.make_broker(self.url, namespace=ns)
        actor = dramatiq.actor(self.e10.does_nothing.fn, actor_name="does_nothing", queue_name=self.e10.QUEUE,
                               broker=send_broker)
        rates, count = [], self.plan.enqueue_count
        try:
            actor.send("warm-up")
            for run in range(self.plan.runs):
                self.step(f"enqueue: one sender, run {run + 1}")
                started = time.perf_counter()
                for _ in range(count):
                    actor.send(f"send-{run}")
                rates.append(count / (time.perf_counter() - started))
                self._check_enqueued(ns, count + (run == 0))
        finally:
            send_broker.close()
        return {"rate": figure(rates), "messages": count}

    def _check_enqueued(self, ns: str, expected: int) -> None:
        found = self.client.llen(self.key(self.e10.QUEUE, ns))
        if found != expected:
            self.problems.append(f"enqueue: {found} messages in the queue, {expected} sent")
        self.client.delete(self.key(self.e10.QUEUE, ns), self.key(f"{self.e10.QUEUE}.msgs", ns))

    def start_senders(self) -> list[subprocess.Popen]:
        """The sender processes: they boot now, measure enqueue on a go signal, then send latency jobs."""
        ns = f"{self.ns}-send"
        return [subprocess.Popen([sys.executable, __file__, "sender", str(self.plan.sender_count), str(self.plan.runs),
                                  self.ns], cwd=ROOT, env=lab_env(self.url, **{NAMESPACE_ENV: ns}),
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for _ in range(self.plan.senders)]

    def enqueue_senders(self, senders: list[subprocess.Popen]) -> dict[str, Any]:
        """Sender processes sending at once, on one go signal: all messages / (last end - first start)."""
        ns, n = f"{self.ns}-send", len(senders)
        self._wait(lambda: self.client.llen(self.key("__e10__.ready", ns)) >= n, 60, "sender processes ready",
                   processes=senders)
        rates = []
        for run in range(self.plan.runs):
            self.step(f"enqueue: {n} sender processes, run {run + 1}")
            self.client.rpush(self.key(f"__e10__.go.{run}", ns), *range(n))
            times = self.key(f"__e10__.times.{run}", ns)
            self._wait(lambda: self.client.llen(times) >= n, 60, "sender processes done", processes=senders)  # noqa: B023
            spans = [tuple(map(float, t.split())) for t in self.client.lrange(times, 0, -1)]
            rates.append(n * self.plan.sender_count / (max(e for _, e in spans) - min(s for s, _ in spans)))
            self._check_enqueued(ns, n * self.plan.sender_count)
        return {"rate": figure(rates), "processes": n, "messages": n * self.plan.sender_count}

    def senders_pace(self, senders: list[subprocess.Popen], rate: float, seconds: float, batch: str,
                     sleep_ms: int) -> float:
        """Every sender process sends notes_its_latency at rate / n for ``seconds``; the rate they achieved together."""
        ns, n = f"{self.ns}-send", len(senders)
        job = json.dumps({"rate": rate / n, "seconds": seconds, "batch": batch, "ms": sleep_ms})
        self.client.rpush(self.key("__e10__.jobs", ns), *[job] * n)
        done = self.key(f"__e10__.done.{batch}", ns)
        self._wait(lambda: self.client.llen(done) >= n, 30 + 2 * seconds, f"{batch}: sender processes done",
                   processes=senders)
        counts, rates = zip(*(map(float, d.split()) for d in self.client.lrange(done, 0, -1)), strict=True)
        self.sent[batch] = int(sum(counts))
        return sum(rates)

    def stop_senders(self, senders: list[subprocess.Popen]) -> None:
        if senders and all(sender.poll() is None for sender in senders):
            self.client.rpush(self.key("__e10__.jobs", f"{self.ns}-send"), *["stop"] * len(senders))
        for sender in senders:
            try:
                if sender.wait(timeout=10) != 0:
                    self.problems.append(f"a sender process exited {sender.returncode}: {sender.stderr.read()[-300:]}")
            except subprocess.TimeoutExpired:
                self.problems.append("a sender process did not stop")
                os.killpg(sender.pid, signal.SIGKILL)
                sender.wait()
            sender.stderr.close()

    def _wait(self, condition: Callable[[], Any], timeout: float, what: str,
              processes: list[subprocess.Popen] = ()) -> None:
        """Wait for ``condition``; RuntimeError, with what a failed process said, at the deadline or if one fails."""
        def failed() -> list[subprocess.Popen]:
            return [p for p in processes if p.poll() not in (None, 0)]

        if not lab.wait_until(lambda: condition() or failed(), timeout=timeout, interval=0.005) or failed():
            said = "; ".join(p.stderr.read().strip().splitlines()[-1] for p in failed() if p.stderr) or "nothing"
            raise RuntimeError(f"gave up waiting for {what} after {timeout} s (a failed process said: {said})")

    # Drains: fill first, then release the whole batch at once and time until every message is acked.
    def drain(self, actor: str, args: tuple, count: int, batch: str, pids: list[int]) -> dict[str, float]:
        queue, msgs = self.key(self.e10.QUEUE), self.key(f"{self.e10.QUEUE}.msgs")
        ids = []
        with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                message = self.actors[actor].message(batch, *args)
                message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
                ids.append(message.options["redis_message_id"])
                pipe.hset(msgs, ids[-1], message.encode())
            pipe.execute()
        self.sent[batch] = count
        calls, cpu, server_cpu = self._dispatch_calls(), cpu_seconds(pids), self._server_cpu()
        released = time.time()
        self.client.rpush(queue, *ids)
        # Each moment is known to lie between two polls: the last that saw the old state and the first
        # that saw the new one. Take the middle.
        before, fetched, ended = released, None, None
        deadline = time.monotonic() + 30 + count * 0.02
        while ended is None:
            with self.client.pipeline(transaction=False) as pipe:
                waiting, stored = pipe.llen(queue).hlen(msgs).execute()
            now = time.time()
            if fetched is None and waiting < count:
                fetched = (before + now) / 2
            if stored == 0:
                ended = (before + now) / 2
            elif time.monotonic() > deadline:
                self.problems.append(f"{batch}: {stored} of {count} messages not done in time")
                ended = now
            before = now
            time.sleep(0.001)
        fetched = fetched or ended
        took = max(ended - fetched, 1e-3)
        return {"rate": count / took, "pickup_ms": (fetched - released) * 1000,
                "dispatch_per_message": (self._dispatch_calls() - calls) / count if calls is not None else None,
                "cpu_ms_per_message": (cpu_seconds(pids) - cpu) * 1000 / count,
                "server_cpu_ms_per_message": ((self._server_cpu() - server_cpu) * 1000 / count
                                              if server_cpu is not None else None)}

    def _dispatch_calls(self) -> int | None:
        """EVALSHA calls so far: every Dramatiq fetch, ack and enqueue is one (redis-server only)."""
        if not self.real:
            return None
        return self.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    def _server_cpu(self) -> float | None:
        if not self.real:
            return None
        info = self.client.info("cpu")
        return info["used_cpu_user"] + info["used_cpu_sys"]

    def measure_config(self, config: Config, worker: WorkerProcess) -> list[dict[str, Any]]:
        rows = []
        pids = worker.worker_pids()
        for kind in config.kinds:
            actor = KINDS[kind]
            args = {"noop": (), "io": (self.plan.io_ms,), "cpu": (self.plan.cpu_loops,)}[kind]
            prefix = f"{config.label}/{kind}"
            self.step(f"{config.label}: {actor}, warm-up")
            count = self.plan.warmup
            for warm_up in range(2):  # a first guess from a small batch, then a better one from a bigger batch
                rate = self.drain(actor, args, count, f"{prefix}/warm-up{warm_up}", pids)["rate"]
                count = int(max(self.plan.min_messages, min(self.plan.max_messages, rate * self.plan.drain_s / (
                    3 if warm_up == 0 else 1))))
            runs = []
            for run in range(self.plan.runs):
                self.step(f"{config.label}: {actor}, {count} messages, run {run + 1}")
                runs.append(self.drain(actor, args, count, f"{prefix}/{run}", pids))
            rows.append({
                "config": config.label, "kind": kind, "actor": actor, "processes": config.processes,
                "threads": config.threads, "prefetch": config.effective_prefetch,
                "prefetch_set": config.prefetch is not None, "roles": list(config.roles), "messages": count,
                **{name: figure([r[name] for r in runs]) if runs[0][name] is not None else None
                   for name in ("rate", "pickup_ms", "dispatch_per_message", "cpu_ms_per_message",
                                "server_cpu_ms_per_message")},
            })
        return rows

    # Latency: send evenly at a rate, to a worker that is running; each message notes when it started.
    def latency_under_load(self, senders: list[subprocess.Popen], io_rate: float) -> dict[str, Any]:
        """notes_its_latency, sleeping io_ms like waits_on_io: at a light rate, then at ``saturation`` x the
        drain rate of waits_on_io. An I/O-bound actor, so that the senders' CPU does not take the workers'."""
        loads = {"light": (self.plan.light_rate, self.plan.light_s),
                 "saturated": (io_rate * self.plan.saturation, self.plan.saturation_s)}
        out, sleep_ms = {}, self.plan.io_ms
        for load, (rate, seconds) in loads.items():
            achieved, batches = [], []
            for run in range(self.plan.runs):
                batches.append(batch := f"latency-{load}/{run}")
                if load == "light":
                    self.step(f"latency, light load ({rate:.0f}/s from this process), run {run + 1}")
                    count, got = pace(lambda: self.actors["notes_its_latency"].send(batch, sleep_ms),  # noqa: B023
                                      rate, seconds)
                    self.sent[batch] = count
                    achieved.append(got)
                else:
                    self.step(f"latency, near saturation ({rate:.0f}/s from {len(senders)} processes), run {run + 1}")
                    achieved.append(self.senders_pace(senders, rate, seconds, batch, sleep_ms))
                self._wait(lambda: self.client.hlen(self.key(f"{self.e10.QUEUE}.msgs")) == 0, 30, f"{batch} to run")
            out[load] = {"offered_rate": rate, "achieved_rate": figure(achieved), "actor_ms": sleep_ms,
                         "senders": 1 if load == "light" else len(senders), "batches": batches}
        return out

    def idle_pickup(self, probes: dict[int, WorkerProcess], idle_since: dict[int, float]) -> None:
        """One message to each queue of each idle probe worker at once; again once they are idle again."""
        rounds = -(-self.plan.runs // len(self.e10.IDLE_QUEUES))  # 3 samples a round: ceil(runs / 3) rounds
        for round_ in range(rounds):
            for timeout, since in idle_since.items():
                time.sleep(max(0.0, self.plan.idle_wait_s[timeout] - (time.monotonic() - since)))
            self.step(f"latency after idle, round {round_ + 1}")
            for timeout in probes:
                ns, batch = f"{self.ns}-idle{timeout}", f"idle-{timeout}/{round_}"
                if ns not in self._probe_brokers:
                    self._probe_brokers[ns] = lab.make_broker(self.url, namespace=ns)
                for queue in self.e10.IDLE_QUEUES:
                    message = self.actors["notes_its_latency"].message(batch).copy(queue_name=queue)
                    self._probe_brokers[ns].enqueue(message)
                self.sent[f"{ns}|{batch}"] = len(self.e10.IDLE_QUEUES)
            for timeout in probes:
                ns = f"{self.ns}-idle{timeout}"
                self._wait(lambda ns=ns: not any(self.client.hlen(self.key(f"{q}.msgs", ns))
                                                 for q in self.e10.IDLE_QUEUES), 10, "the idle probes to run")
                idle_since[timeout] = time.monotonic()

    def tallies(self, namespace: str) -> tuple[dict[str, int], dict[str, list[float]]]:
        ran = {k.decode(): int(v) for k, v in self.client.hgetall(self.key("__e10__.ran", namespace)).items()}
        prefix = self.key("__e10__.latency.", namespace)
        latencies = {k.decode().removeprefix(prefix): [float(v) for v in self.client.lrange(k, 0, -1)]
                     for k in self.client.scan_iter(f"{prefix}*")}
        return ran, latencies

    def leftovers(self, namespace: str) -> dict[str, int]:
        """Whatever is still in Redis for the queues: ready, stored, delayed, dead, unacked."""
        left, queues = {}, (self.e10.QUEUE, *self.e10.IDLE_QUEUES)
        for queue in queues:
            for suffix in ("", ".msgs", ".DQ", ".DQ.msgs", ".XQ"):
                name = self.key(queue + suffix, namespace)
                size = {b"list": self.client.llen, b"hash": self.client.hlen, b"zset": self.client.zcard}.get(
                    self.client.type(name), lambda _: 0)(name)
                if size:
                    left[name] = size
        acks = self.key("__acks__.", namespace)
        for name in self.client.scan_iter(f"{acks}*"):  # <ns>:__acks__.<broker id>.<queue>[.DQ]
            queue = name.decode().removeprefix(acks).partition(".")[2].removesuffix(".DQ")
            if queue in queues and (size := self.client.scard(name)):
                left[name.decode()] = size
        return left

    def run(self) -> dict[str, Any]:
        plan, started = self.plan, time.monotonic()
        report: dict[str, Any] = {"plan": plan.name, "runs": plan.runs}
        report["conditions"] = conditions(self.url)
        self.real = report["conditions"]["real_redis"]
        self.ceiling("start")
        report["enqueue"] = {"one_sender": self.enqueue_one_sender()}
        senders, rows, latency, probes = self.start_senders(), [], {}, {}
        try:
            previous = None
            for index, config in enumerate(plan.configs):
                self.step(f"{config.label}: starting {config.processes} worker process(es)")
                env = {"dramatiq_worker_timeout": "100"}
                if config.prefetch:
                    env["dramatiq_queue_prefetch"] = str(config.prefetch)
                worker = self.workers.start(config.label, self.ns, config.processes, config.threads,
                                            (self.e10.QUEUE,), **env)
                if "recommended" in config.roles:  # the idle probes boot with it; idle through its runs
                    probes = {timeout: self.workers.start(f"idle probe, worker_timeout {timeout}",
                                                          f"{self.ns}-idle{timeout}", 1, 1, self.e10.IDLE_QUEUES,
                                                          dramatiq_worker_timeout=str(timeout))
                              for timeout in plan.idle_wait_s}
                if previous is not None:
                    self.workers.stop(previous)  # while the next one boots
                worker.ready(config.processes, timeout=60)
                if index == 0:  # while this one idles: senders measured now, not beside a busy worker
                    report["enqueue"]["senders"] = self.enqueue_senders(senders)
                rows += self.measure_config(config, worker)
                if "recommended" in config.roles:
                    # The probes have been idle since they booted, beside this setup's drains: measure now,
                    # with this worker quiet, then let them stop while the latency runs go on.
                    self.idle_pickup(probes, {timeout: idle_since(probe) for timeout, probe in probes.items()})
                    for probe in probes.values():
                        self.workers.terminate(probe)
                    io = next(r for r in rows if r["config"] == config.label and r["kind"] == "io")
                    latency = self.latency_under_load(senders, io["rate"]["median"])
                previous = worker
            self.stop_senders(senders)
        finally:
            for sender in senders:
                if sender.poll() is None:
                    os.killpg(sender.pid, signal.SIGKILL)
                    sender.wait()
            self.workers.stop_all()
            for probe_broker in self._probe_brokers.values():
                probe_broker.close()
        self.ceiling("end")
        report["ceiling"] = self.ceiling_report()
        report["processing"] = rows
        report["latency"] = self.latency_report(latency, probes)
        report["trap"] = trap(report)
        report["recommended"] = recommended(report)
        report["consistency"] = self.consistency(probes)
        report["conditions"]["load_average"].append(round(os.getloadavg()[0], 2))  # 1-minute, at the start and end
        report["elapsed_s"] = time.monotonic() - started
        return report

    def latency_report(self, latency: dict[str, Any], probes: dict[int, WorkerProcess]) -> dict[str, Any]:
        _, values = self.tallies(self.ns)
        out = {}
        for load, info in latency.items():
            per_run = [values.get(batch, []) for batch in info.pop("batches")]
            out[load] = {**info, **{f"p{p}": figure([percentile(v, p) for v in per_run]) if all(per_run) else None
                                    for p in (50, 95, 99)}}
        for timeout in probes:
            _, probe_values = self.tallies(f"{self.ns}-idle{timeout}")
            samples = [v for batch, vs in sorted(probe_values.items()) for v in vs]
            out[f"idle_{timeout}"] = {"worker_timeout": timeout, "samples": len(samples),
                                      "ms": figure(samples) if samples else None}
        return out

    def consistency(self, probes: dict[int, WorkerProcess]) -> dict[str, Any]:
        ran, _ = self.tallies(self.ns)
        for timeout in probes:
            ns = f"{self.ns}-idle{timeout}"
            ran.update({f"{ns}|{batch}": count for batch, count in self.tallies(ns)[0].items()})
        wrong = {batch: (sent, ran.get(batch, 0)) for batch, sent in self.sent.items() if ran.get(batch, 0) != sent}
        extra = sorted(set(ran) - set(self.sent))
        left = {}
        for ns in (self.ns, f"{self.ns}-send", *(f"{self.ns}-idle{timeout}" for timeout in probes)):
            left.update(self.leftovers(ns))
        workers = self.workers.stopped
        not_stopped = [w["label"] for w in workers if w["exit_code"] != 0 or w["still_alive"]]
        problems = list(self.problems)
        problems += [f"{batch}: sent {s}, ran {r}" for batch, (s, r) in wrong.items()]
        problems += [f"{batch}: ran but never sent" for batch in extra]
        problems += [f"left in Redis: {name} holds {size}" for name, size in left.items()]
        problems += [f"worker not stopped cleanly: {label}" for label in not_stopped]
        if problems:
            problems.append("the workers' logs are kept: " + ", ".join(w["log"] for w in workers))
        else:
            self.workers.delete_logs()
        return {"sent": sum(self.sent.values()), "processed": sum(ran.values()), "batches": len(self.sent),
                "left": left, "workers": workers, "ok": not problems, "problems": problems}


def trap(report: dict[str, Any]) -> dict[str, Any]:
    """Why one thread with the default prefetch is slow, from this run's own numbers.

    The consumer fetches up to ``prefetch`` messages (2 x threads by default) and hands them to the
    worker threads. Until one of them is acked it may not fetch again, and instead of waiting for
    that ack it sleeps ``compute_backoff(misses)``: 5 to 10 ms after a fetch that found messages
    (``_RedisConsumer.__next__`` in dramatiq/brokers/redis.py). One thread runs its two messages in
    well under a millisecond and then waits for that sleep.
    """
    rows = {(r["config"], r["kind"]): r for r in report["processing"]}
    by_role = {role: r for r in report["processing"] if r["kind"] == "noop" for role in r["roles"]}
    one, raised = by_role.get("trap"), by_role.get("raised")
    sleeps = [compute_backoff(0, max_backoff=100)[1] for _ in range(20_000)]  # Dramatiq's own draw, in whole ms
    sleep_ms = statistics.fmean(sleeps)
    out: dict[str, Any] = {"sleep_ms": sleep_ms, "sleep_range_ms": [min(sleeps), max(sleeps)]}
    if one is not None:
        out["one_thread"] = {"rate": one["rate"]["median"], "prefetch": one["prefetch"],
                             "bound": one["prefetch"] / sleep_ms * 1000}
        dispatch = one["dispatch_per_message"]
        if dispatch is not None and dispatch["median"] > 1:
            # one ack per message; the rest are fetches (plus a few idle polls of the delay queue's consumer)
            out["one_thread"]["messages_per_fetch"] = 1 / (dispatch["median"] - 1)
            out["one_thread"]["ms_per_fetch"] = 1000 / one["rate"]["median"] / (dispatch["median"] - 1)
    eight = rows.get(("1×8", "noop"))
    if eight is not None:
        out["eight_threads"] = {"rate": eight["rate"]["median"], "prefetch": eight["prefetch"],
                                "bound": eight["prefetch"] / sleep_ms * 1000}
    if raised is not None:
        per_message_ms = 1000 / raised["rate"]["median"]
        out["raised"] = {"config": raised["config"], "prefetch": raised["prefetch"], "threads": raised["threads"],
                         "rate": raised["rate"]["median"], "per_message_ms": per_message_ms}
        if one is not None:  # a cycle: one sleep, then the prefetched messages one after another
            p = one["prefetch"]
            out["one_thread"]["model"] = p / (sleep_ms + p * per_message_ms) * 1000
    return out


def recommended(report: dict[str, Any]) -> dict[str, Any]:
    row = next((r for r in report["processing"] if "recommended" in r["roles"] and r["kind"] == "noop"), None)
    ceiling = report["ceiling"]["single"]["median"]
    if row is None:
        return {}
    fraction = row["rate"]["median"] / ceiling
    out = {"config": row["config"], "processes": row["processes"], "threads": row["threads"],
           "prefetch": row["prefetch"], "rate": row["rate"]["median"], "ceiling": ceiling,
           "of_ceiling": fraction, "target": TARGET, "met": fraction >= TARGET, "why": ""}
    if not out["met"]:
        cpu, server = row["cpu_ms_per_message"], row["server_cpu_ms_per_message"]
        parts = [f"{row['rate']['median']:.0f} msg/s is {fraction:.0%} of {ceiling:.0f} raw pairs/s"]
        if cpu:
            parts.append(f"each message cost the worker processes {cpu['median']:.2f} ms of CPU "
                         f"({report['conditions']['cores']} cores: at most "
                         f"{report['conditions']['cores'] * 1000 / cpu['median']:.0f} msg/s if they had every core)")
        if server:
            parts.append(f"and the server {server['median']:.3f} ms")
        if row["dispatch_per_message"]:
            parts.append(f"{row['dispatch_per_message']['median']:.2f} Lua dispatch calls per message, "
                         "each heavier than an LPUSH")
        out["why"] = "; ".join(parts)
    return out


# -- entry points ----------------------------------------------------------------------------------


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


def measure(module: ModuleType, url: str, plan: Plan, *, namespace: str | None = None,
            step: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    """Run ``plan`` against ``url`` and return the report. Deletes its keys (``<namespace>*``) after."""
    namespace = namespace or f"e10-{uuid.uuid4().hex[:8]}"
    with reachable(url) as (shared, embedded):
        lab.connect(shared).close()  # no Redis: one line and exit 3, before any process starts
        bench = Bench(module, shared, plan, namespace, step)
        try:
            report = bench.run()
            if embedded:
                report["conditions"]["note"] = ("NOT Redis figures: memory:// cannot be shared between processes, so "
                                                "this ran on the embedded server (fakeredis over TCP). "
                                                + report["conditions"]["note"].removeprefix("NOT Redis figures: "))
                report["conditions"]["url"] = f"{MEMORY_URL} (served at {shared})"
        finally:
            bench.broker.close()
            cleanup = redis.Redis.from_url(shared)
            for name in cleanup.scan_iter(f"{namespace}*", count=1000):
                cleanup.delete(name)
            cleanup.close()
    return report


def steps(plan: Plan) -> int:
    """How many times measure() calls ``step`` for ``plan``: the progress bar's total."""
    runs = plan.runs
    drains = sum(len(c.kinds) * (runs + 1) for c in plan.configs) + len(plan.configs)
    latency = 2 * runs if any("recommended" in c.roles for c in plan.configs) else 0
    return 2 * runs + 2 * runs + drains + latency + -(-runs // 3)


def measure_from_cli(module: ModuleType, url: str, *, quick: bool, runs: int) -> dict[str, Any]:
    """The command's run, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    plan = replace(PLANS["quick" if quick else "full"], runs=runs)
    if url != MEMORY_URL:
        lab.connect(url).close()  # no Redis: one line and exit 3, before anything is printed
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<58}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=steps(plan))

        def step(what: str) -> None:
            progress.update(task, description=what, advance=1)

        return measure(module, url, plan, step=step)


def pace(send: Callable[[], object], rate: float, seconds: float) -> tuple[int, float]:
    """Call ``send`` evenly, ``rate`` times a second for ``seconds``; (how many, the rate achieved)."""
    count = max(1, round(rate * seconds))
    started = time.perf_counter()
    for i in range(count):
        while (ahead := started + i / rate - time.perf_counter()) > 0:
            time.sleep(min(ahead, 0.002))
        send()
    took = time.perf_counter() - started
    return count, (count - 1) / took if count > 1 and took > 0 else rate


def next_item(client: redis.Redis, key: str, within: float) -> bytes | None:
    """BLPOP ``key`` for up to ``within`` seconds, 2 s at a time: redis-py 8 gives up on a socket after 5 s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (item := client.blpop([key], timeout=2)) is not None:
            return item[1]
    return None


def sender_main(count: int, rounds: int, latency_namespace: str) -> None:
    """A sender process: ``rounds`` enqueue runs of ``count`` messages on a go signal, then latency jobs."""
    import e10_throughput as e10

    client, ns = e10.broker.client, e10.broker.namespace
    e10.does_nothing.send("warm-up")
    client.delete(lab.key(e10.broker, e10.QUEUE), lab.key(e10.broker, f"{e10.QUEUE}.msgs"))  # see _check_enqueued
    client.rpush(f"{ns}:__e10__.ready", os.getpid())
    for run in range(rounds):
        if next_item(client, f"{ns}:__e10__.go.{run}", 120) is None:
            sys.exit("no go signal in 120 s")
        started = time.time()
        for _ in range(count):
            e10.does_nothing.send(f"send-{run}")
        client.rpush(f"{ns}:__e10__.times.{run}", f"{started} {time.time()}")
    # Latency jobs go to the namespace the measured workers read: a broker of its own for it.
    latency_broker = lab.make_broker(e10.broker.lab_url, namespace=latency_namespace)
    notes = dramatiq.actor(e10.notes_its_latency.fn, actor_name="notes_its_latency", queue_name=e10.QUEUE,
                           broker=latency_broker)
    while (job := next_item(client, f"{ns}:__e10__.jobs", 300)) not in (None, b"stop"):
        job = json.loads(job)
        sent, rate = pace(lambda: notes.send(job["batch"], job["ms"]), job["rate"], job["seconds"])  # noqa: B023
        client.rpush(f"{ns}:__e10__.done.{job['batch']}", f"{sent} {rate}")


if __name__ == "__main__" and sys.argv[1:2] == ["sender"]:
    sender_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
