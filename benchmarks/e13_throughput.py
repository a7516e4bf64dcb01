"""Experiment 13's throughput: e10's drain on RabbitMQ beside Redis, each a fraction of its own broker's limit.

For each worker setup (e10's: P processes x T threads, a prefetch) and each broker, ``runs`` times:

- **the limit**: N messages published beforehand; then P driver processes (``benchmarks/e13_driver.py``)
  consume and ack them with no actor and no worker, at the setup's prefetch. On RabbitMQ: pika, one
  connection each, ``basic_qos`` at the prefetch, acking each delivery. On Redis: e10's limit
  (``e10_ceilings.drive``), Dramatiq's dispatch script with one fetching thread and T acking threads,
  waiting for an ack where the consumer would sleep.
- **the drain**: the same N published beforehand; then ``dramatiq benchmarks.e13_worker --processes P
  --threads T`` runs e10's no-op on them.

One clock for both: from the first message any process started to the last it finished, each process noting
its own times (time.time(), one machine). So a drain is a fraction of the limit measured just before it, on
the same broker, the same way. Every message is counted: the run checks each ran exactly once.

    python -m benchmarks.e13_throughput --rabbitmq amqp://... --redis redis://...   # or neither: private servers
    python -m benchmarks.e13_throughput --plan quick --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from lab.failures import EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE
from lab.processes import RabbitServer, RedisServer, WorkerProcess, backstop, guard, lab_env, release
from lab.urls import mask_url

import dramatiq
import pika
import redis

from benchmarks.e10_common import RECOMMENDED, ROOT, Config, figure
from benchmarks.e13_common import OUT_ENV, QUEUE, URL_ENV, make_broker

#: Setups and sizes: e10's configurations, smaller batches (a RabbitMQ drain is slower than Redis's).
PLAN_SETUPS = {
    "tiny": (1, 60, (Config("1×2, prefetch 8", 1, 2, prefetch=8),)),
    "quick": (3, 2000, (Config("1×1", 1, 1), RECOMMENDED)),
    "full": (5, 5000, (Config("1×1", 1, 1), Config("1×8", 1, 8), replace(RECOMMENDED, kinds=("noop",)))),
}


# -- the bench --------------------------------------------------------------------------------------


def publish(url: str, count: int, batch: str) -> set[str]:
    """``count`` e10 no-op messages on QUEUE, persistent on RabbitMQ; their ids."""
    broker = make_broker(url)
    ids = set()
    try:
        for _ in range(count):
            message = dramatiq.Message(queue_name=QUEUE, actor_name="does_nothing", args=(batch,), kwargs={},
                                       options={})
            broker.enqueue(message)
            ids.add(message.message_id)
    finally:
        broker.close() if hasattr(broker, "connections") else broker.client.close()
    return ids


def left_in_queue(url: str) -> int:
    if url.startswith("amqp"):
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            return connection.channel().queue_declare(QUEUE, durable=True, passive=True).method.message_count
        finally:
            connection.close()
    with redis.Redis.from_url(url) as client:
        return client.llen(f"dramatiq:{QUEUE}") + client.hlen(f"dramatiq:{QUEUE}.msgs")


def tallies(out: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in out.glob("*.json")]


def timed(out: Path, sent: set[str]) -> dict[str, Any]:
    """The run's rate by the processes' own clocks, and whether each message ran exactly once."""
    notes = tallies(out)
    ran = [i for note in notes for i in note["ids"]]
    firsts, lasts = [n["first"] for n in notes if n["first"]], [n["last"] for n in notes if n["last"]]
    took = max(max(lasts) - min(firsts), 1e-3) if firsts else None
    return {"rate": len(ran) / took if took else 0.0, "ran": len(ran), "once": sorted(ran) == sorted(sent)}


def wait_drained(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if left_in_queue(url) == 0:
            return True
        time.sleep(0.02)
    return False


def limit_run(url: str, config: Config, count: int) -> dict[str, Any]:
    sent = publish(url, count, f"limit-{uuid.uuid4().hex[:6]}")
    out = Path(tempfile.mkdtemp(prefix="e13-limit-"))
    backstop()
    drivers = [guard(subprocess.Popen(
        [sys.executable, "-m", "benchmarks.e13_driver", url, str(config.effective_prefetch),
         str(config.threads), str(out / f"driver-{n}.json")], cwd=ROOT, env=lab_env(url), start_new_session=True))
        for n in range(config.processes)]
    try:
        drained = wait_drained(url, time.monotonic() + 30 + count * 0.01)
        time.sleep(0.2)  # the last acks of what was delivered: the queue counts ready messages only
    finally:
        for driver in drivers:
            driver.send_signal(signal.SIGTERM)
        for driver in drivers:
            try:
                driver.wait(15)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()
            release(driver)
    result = {**timed(out, sent), "drained": drained}
    shutil.rmtree(out, ignore_errors=True)
    return result


def drain_run(url: str, config: Config, count: int) -> dict[str, Any]:
    sent = publish(url, count, f"drain-{uuid.uuid4().hex[:6]}")
    out = Path(tempfile.mkdtemp(prefix="e13-drain-"))
    worker = WorkerProcess(["benchmarks.e13_worker", "--processes", str(config.processes), "--threads",
                            str(config.threads), "--queues", QUEUE], url=url,
                           **{URL_ENV: url, OUT_ENV: str(out), "dramatiq_worker_timeout": "100",
                              "dramatiq_queue_prefetch": str(config.effective_prefetch)})
    try:
        drained = wait_drained(url, time.monotonic() + 60 + count * 0.01)
        time.sleep(0.2)
    finally:
        worker.close()
    result = {**timed(out, sent), "drained": drained}
    shutil.rmtree(out, ignore_errors=True)
    return result


def conditions(rabbitmq_url: str, redis_url: str, runs: int) -> str:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    props = connection._impl.server_properties
    connection.close()
    said = {key: value.decode() if isinstance(value, bytes) else str(value) for key, value in props.items()}
    rabbit = f"RabbitMQ {said.get('version', '?')} ({said.get('platform', '?')})"
    with redis.Redis.from_url(redis_url) as client:
        redis_version = client.info("server")["redis_version"]
    return (f"{rabbit}, redis-server {redis_version}, Dramatiq {dramatiq.__version__}, pika {pika.__version__}, "
            f"Python {platform.python_version()}, {os.cpu_count()} cores, {runs} run(s) each, load "
            f"{os.getloadavg()[0]:.1f}")


def broker_row(name: str, url: str, config: Config, runs: int, count: int) -> tuple[dict[str, Any], list[str]]:
    """One broker's row for one setup: ``runs`` limits, each followed by its drain; and what did not add up."""
    limits, drains = [], []
    for _ in range(runs):  # alternate: each drain right after its limit
        limits.append(limit_run(url, config, count))
        drains.append(drain_run(url, config, count))
    problems = [f"{name} {config.label} {what}: {r['ran']} of {count} ran, each once: {r['once']}"
                for what, results in (("limit", limits), ("drain", drains)) for r in results
                if not (r["once"] and r["drained"])]
    ratios = [d["rate"] / lim["rate"] if lim["rate"] else 0.0 for d, lim in zip(drains, limits, strict=True)]
    return {"broker": name, "config": config.label, "messages": count,
            "drain_rate": figure([d["rate"] for d in drains]), "limit_rate": figure([lim["rate"] for lim in limits]),
            "of_limit": figure(ratios)}, problems


def measure(rabbitmq_url: str, redis_url: str, plan: str = "tiny") -> dict[str, Any]:
    """The drains and the limits on both brokers; rows for the side-by-side table, and the counts.

    The tiny plan (a consistency check, for the tests: its figures mean nothing) plays both brokers at
    once; every other plan one broker at a time, so that neither slows the other's figures.
    """
    runs, count, setups = PLAN_SETUPS[plan]
    began = time.monotonic()
    rows, problems = [], []
    brokers = (("RabbitMQ", rabbitmq_url), ("Redis", redis_url))
    with ThreadPoolExecutor(2 if plan == "tiny" else 1) as pool:
        for config in setups:
            for row, wrong in pool.map(lambda broker, config=config: broker_row(*broker, config, runs, count), brokers):
                rows.append(row)
                problems += wrong
    return {"rows": rows, "columns": ["broker", "config", "messages", "drain_rate", "limit_rate", "of_limit"],
            "conditions": conditions(rabbitmq_url, redis_url, runs), "plan": plan, "ok": not problems,
            "problems": problems, "seconds": time.monotonic() - began}


def table(report: dict[str, Any]) -> str:
    """The side-by-side table, as reST."""
    def med(fig: dict[str, Any], fmt: str) -> str:
        spread = f" ({fmt.format(fig['min'])} to {fmt.format(fig['max'])})" if fig["min"] != fig["max"] else ""
        return fmt.format(fig["median"]) + spread

    body = [(r["broker"], r["config"], str(r["messages"]), med(r["drain_rate"], "{:,.0f}"),
             med(r["limit_rate"], "{:,.0f}"), med(r["of_limit"], "{:.0%}")) for r in report["rows"]]
    header = ("broker", "setup", "messages", "drain, msg/s", "limit, msg/s", "of limit")
    widths = [max(len(c) for c in column) for column in zip(header, *body, strict=True)]
    rule = "  ".join("=" * w for w in widths)
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([rule, line(header), rule, *map(line, body), rule, "", report["conditions"]])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rabbitmq", help="amqp:// URL (default: a private rabbitmq-server)")
    parser.add_argument("--redis", help="redis:// URL (default: a private redis-server)")
    parser.add_argument("--plan", choices=sorted(PLAN_SETUPS), default="quick")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for url, scheme in ((args.rabbitmq, "amqp"), (args.redis, "redis")):
        if url and not url.startswith(scheme):
            parser.exit(EXIT_USAGE, f"e13_throughput: error: not an {scheme}:// URL: {mask_url(url)}\n")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # a refused connection is said once, below
    try:
        with ExitStack() as stack:
            rabbitmq_url = args.rabbitmq or stack.enter_context(RabbitServer()).url
            redis_url = args.redis or stack.enter_context(RedisServer()).url
            report = measure(rabbitmq_url, redis_url, args.plan)
    except KeyboardInterrupt:
        print("e13_throughput: interrupted; every process it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (dramatiq.errors.BrokerConnectionError, pika.exceptions.AMQPError, redis.RedisError, OSError) as exc:
        where = " or ".join(mask_url(u) for u in (args.rabbitmq, args.redis) if u) or "a private server"
        print(f"e13_throughput: cannot use {where}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(report, indent=1) if args.json else table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
