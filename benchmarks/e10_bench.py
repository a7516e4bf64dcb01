"""Experiment 10's run, in order, and the checks that every count adds up.

``python e10_throughput.py`` runs it (see that file); ``measure(module, url, plan)`` is what the tests
and ``python -m lab run e10`` call with a tiny plan. Nothing here asserts a speed: the report
carries the figures, each a median, a range and (from 5 runs) an interval over repeated runs, and
``report["consistency"]`` says whether every message sent was run exactly once and nothing was left.

For each worker setup the run alternates, ``runs`` times: redis-benchmark at the setup's clients,
the dispatch script's own limit at the setup's processes, threads and prefetch (``e10_ceilings``),
and the workers' drain (``e10_drains``). Each drain of the no-op actor is then a fraction of the
limit measured just before it. The rooms import from ``e10_common`` and never this file; nothing
here imports ``e10_throughput``: its module is passed in.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

import lab
from lab.processes import lab_env

import dramatiq
import redis

from benchmarks import e10_latency, e10_peers, e10_pool
from benchmarks.e10_ceilings import Limits, benchmark_report, redis_benchmark
from benchmarks.e10_common import (  # noqa: F401
    KINDS,
    MEMORY_URL,
    PLANS,
    QUEUE,
    Config,
    Ledger,
    Plan,
    Workers,
    alive,
    conditions,
    figure,
    idle_since,
    missing_fields,
    reachable,
)
from benchmarks.e10_drains import Drains, poll_cost, row
from benchmarks.e10_findings import recommended, trap
from benchmarks.e10_latency import Latency
from benchmarks.e10_senders import Senders


class Bench:
    def __init__(self, module: ModuleType, url: str, plan: Plan, namespace: str,
                 step: Callable[[str], None] = lambda what: None) -> None:
        self.e10, self.url, self.plan, self.ns, self.step = module, url, plan, namespace, step
        self.broker = lab.make_broker(url, namespace=namespace)  # the drains' and latencies' namespace
        self.client = self.broker.client
        self.actors = {name: dramatiq.actor(getattr(module, name).fn, actor_name=name, queue_name=QUEUE,
                                            broker=self.broker)
                       for name in (*KINDS.values(), "notes_its_latency")}
        self.ledger = Ledger()
        self.workers = Workers(url)
        self.drains = Drains(self.client, namespace, plan, self.actors, self.ledger, step)
        self.senders = Senders(url, namespace, plan, self.client, self.ledger, step)
        self.latency = Latency(url, namespace, plan, self.client, self.actors["notes_its_latency"], self.senders,
                               self.ledger, step, module.IDLE_QUEUES)

    def measure_config(self, config: Config, worker: Any, limits: Limits,
                       real: bool) -> tuple[list[dict], dict[str, Any]]:
        """The setup's drains, each of its no-op runs just after redis-benchmark and the dispatch limit."""
        pids, rows, limit = worker.worker_pids(), [], {}
        try:
            limits.ready()
            for kind in config.kinds:
                count = self.drains.size(config, kind, pids)
                if kind == "noop":
                    limits.run(count, real)  # its warm-up, untimed
                runs, limit_runs, benchmarks = [], [], []
                for run in range(self.plan.runs):
                    if kind == "noop":
                        self.step(f"{config.label}: redis-benchmark and the dispatch limit, run {run + 1}")
                        if real and run < (self.plan.bench_runs or self.plan.runs):
                            benchmarks.append(redis_benchmark(self.url, self.client, self.broker.scripts["dispatch"],
                                                              f"{self.ns}-rb", config.clients, self.plan))
                        limit_runs.append(limits.run(count, real, self.drains.server_us_per_poll))
                    self.step(f"{config.label}: {KINDS[kind]}, {count} messages, run {run + 1}")
                    runs.append(self.drains.drain(kind, count, f"{config.label}/{kind}/{run}", pids))
                rows.append(row(config, kind, count, runs))
                if kind == "noop":
                    ratios = [d["rate"] / m["rate"] for d, m in zip(runs, limit_runs, strict=True)]
                    rows[-1]["of_limit"] = figure(ratios)
                    limit = {"config": config.label, "clients": config.clients, "prefetch": config.effective_prefetch,
                             "processes": config.processes, "threads": config.threads, "messages": count,
                             "of_limit": figure(ratios),
                             "redis_benchmark": benchmark_report(benchmarks) if real else
                             {"available": False, "why": "not redis-server"},
                             **{name: figure([r[name] for r in limit_runs]) if limit_runs[0][name] is not None
                                else None for name in ("rate", "cpu_ms_per_message", "server_cpu_ms_per_message",
                                                       "server_cpu_ms_per_message_with_polls", "timing_error",
                                                       "dispatch_per_message", "bench_core_share")}}
        finally:
            limits.stop()
        return rows, limit

    def run(self) -> dict[str, Any]:
        plan, started = self.plan, time.monotonic()
        report: dict[str, Any] = {"plan": plan.name, "runs": plan.runs}
        report["conditions"] = conditions(self.url)
        real = self.drains.real = report["conditions"]["real_redis"]
        report["polling"] = poll_cost(self.client, real)  # what one poll of a drain costs the bench and the server
        self.drains.server_us_per_poll = report["polling"]["server_us"] or 0.0
        report["enqueue"] = {"one_sender": self.senders.one_sender()}
        self.senders.start()
        rows, limits, latency, probes = [], [], {}, {}
        try:
            previous = None
            for index, config in enumerate(plan.configs):
                self.step(f"{config.label}: starting {config.processes} worker process(es)")
                env = {"dramatiq_worker_timeout": "100"}
                if config.prefetch:
                    env["dramatiq_queue_prefetch"] = str(config.prefetch)
                worker = self.workers.start(config.label, self.ns, config.processes, config.threads, (QUEUE,), **env)
                if "recommended" in config.roles:  # the idle probes boot with it; idle through its runs
                    probes = {timeout: self.workers.start(f"idle probe, worker_timeout {timeout}",
                                                          f"{self.ns}-idle{timeout}", 1, 1, self.e10.IDLE_QUEUES,
                                                          dramatiq_worker_timeout=str(timeout))
                              for timeout in plan.idle_wait_s}
                # the limit's drivers boot beside it, in a namespace of their own
                limits_of = Limits(self.url, f"{self.ns}-limit", config, plan, self.client, self.ledger, lab_env)
                if previous is not None:
                    self.workers.stop(previous)  # while the next one boots
                worker.ready(config.processes, timeout=60)
                if index == 0:  # while this one idles: senders measured now, not beside a busy worker
                    report["enqueue"]["senders"] = self.senders.enqueue()
                config_rows, limit = self.measure_config(config, worker, limits_of, real)
                rows += config_rows
                limits.append(limit)
                if "recommended" in config.roles:
                    # The probes have been idle since they booted, beside this setup's drains: measure now,
                    # with this worker quiet, then let them stop while the latency runs go on.
                    self.latency.idle_pickup(probes, {t: idle_since(probe) for t, probe in probes.items()})
                    for probe in probes.values():
                        self.workers.terminate(probe)
                    io = next(r for r in rows if r["config"] == config.label and r["kind"] == "io")
                    latency = self.latency.under_load(io["rate"]["median"])
                    report["end_to_end"] = {"config": config.label, **self.latency.end_to_end()}
                previous = worker
            self.senders.stop()
        finally:
            for sender in self.senders.processes:
                e10_pool.kill(sender)
            self.workers.stop_all()
            self.latency.close()
        report["limits"] = limits
        report["peers"] = self.peers(limits)
        report["processing"] = rows
        report["latency"] = e10_latency.report(self.client, self.ns, latency, probes)
        report["trap"] = trap(report)
        report["recommended"] = recommended(report)
        report["consistency"] = self.consistency(probes)
        report["conditions"]["load_average"].append(round(os.getloadavg()[0], 2))  # 1-minute, at the start and end
        report["elapsed_s"] = time.monotonic() - started
        return report

    def peers(self, limits: list[dict[str, Any]]) -> dict[str, Any]:
        """RQ, Huey and Celery beside Dramatiq, with Dramatiq's workers stopped; each over one Redis limit."""
        if not self.plan.peer_runs:
            return {"available": False, "note": ""}
        peers = e10_peers.compare(self.url, f"{self.ns}-peers", self.plan.peer_runs, self.plan.peer_jobs,
                                  self.plan.io_ms, self.client, self.ledger, self.step)
        widest = max(limits, key=lambda m: m["clients"], default=None)
        bench = widest["redis_benchmark"] if widest else {}
        if peers["available"] and bench.get("available"):
            peers["redis_limit"] = {"what": f"redis-benchmark LPUSH, {widest['clients']} clients, one at a time",
                                    "rate": bench["LPUSH"]["single"]["median"]}
            for peer in peers["rows"]:
                peer["of_redis"] = peer["rate"]["median"] / peers["redis_limit"]["rate"]
        return peers

    def consistency(self, probes: dict[int, Any]) -> dict[str, Any]:
        ran, _ = e10_latency.tallies(self.client, self.ns)
        for timeout in probes:
            ns = f"{self.ns}-idle{timeout}"
            ran.update({f"{ns}|{batch}": count for batch, count in e10_latency.tallies(self.client, ns)[0].items()})
        sent = self.ledger.sent
        wrong = {batch: (n, ran.get(batch, 0)) for batch, n in sent.items() if ran.get(batch, 0) != n}
        extra = sorted(set(ran) - set(sent))
        left = {}
        for ns in (self.ns, f"{self.ns}-send", f"{self.ns}-limit", *(f"{self.ns}-idle{t}" for t in probes)):
            left.update(self.leftovers(ns))
        workers = self.workers.stopped
        not_stopped = [w["label"] for w in workers if w["exit_code"] != 0 or w["still_alive"]]
        problems = list(self.ledger.problems)
        problems += [f"{batch}: sent {s}, ran {r}" for batch, (s, r) in wrong.items()]
        problems += [f"{batch}: ran but never sent" for batch in extra]
        problems += [f"left in Redis: {name} holds {size}" for name, size in left.items()]
        problems += [f"worker not stopped cleanly: {label}" for label in not_stopped]
        if problems:
            problems.append("the workers' logs are kept: " + ", ".join(w["log"] for w in workers))
        else:
            self.workers.delete_logs()
        return {"sent": sum(sent.values()), "processed": sum(ran.values()), "batches": len(sent),
                "left": left, "workers": workers, "ok": not problems, "problems": problems}

    def leftovers(self, namespace: str) -> dict[str, int]:
        """Whatever is still in Redis for the queues: ready, stored, delayed, dead, unacked."""
        left, queues = {}, (QUEUE, *self.e10.IDLE_QUEUES)
        for queue in queues:
            for suffix in ("", ".msgs", ".DQ", ".DQ.msgs", ".XQ"):
                name = f"{namespace}:{queue}{suffix}"
                size = {b"list": self.client.llen, b"hash": self.client.hlen, b"zset": self.client.zcard}.get(
                    self.client.type(name), lambda _: 0)(name)
                if size:
                    left[name] = size
        acks = f"{namespace}:__acks__."
        for name in self.client.scan_iter(f"{acks}*"):  # <ns>:__acks__.<broker id>.<queue>[.DQ]
            queue = name.decode().removeprefix(acks).partition(".")[2].removesuffix(".DQ")
            if queue in queues and (size := self.client.scard(name)):
                left[name.decode()] = size
        return left


# -- entry points ----------------------------------------------------------------------------------


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
    """About how many times measure() calls ``step`` for ``plan``: the progress bar's total."""
    runs = plan.runs
    drains = sum(len(c.kinds) * (runs + 1) + runs + 1 for c in plan.configs)
    latency = 2 * (runs + 1) + runs if any("recommended" in c.roles for c in plan.configs) else 0
    peers = (plan.peer_runs * len(plan.peer_jobs) * len(e10_peers.LIBRARIES) * len(e10_peers.SETUPS)
             if not e10_peers.missing() else 0)
    return 2 * runs + drains + latency + -(-runs // 3) + peers


def measure_from_cli(module: ModuleType, url: str, *, quick: bool, runs: int) -> dict[str, Any]:
    """The command's run, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    plan = replace(PLANS["quick" if quick else "full"], runs=runs)
    if url != MEMORY_URL:
        lab.connect(url).close()  # no Redis: one line and exit 3, before anything is printed
    console = Console(stderr=True)
    # Redrawn at each step only: refreshed 10 times a second on its own thread, the bar took 1.7 % of a core
    # from the workers it measures (counted in bench_core_share).
    with Progress(TextColumn("{task.description:<58}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
                  auto_refresh=False) as progress:
        task = progress.add_task("starting", total=steps(plan))

        def step(what: str) -> None:
            progress.update(task, description=what, advance=1, refresh=True)

        return measure(module, url, plan, step=step)
