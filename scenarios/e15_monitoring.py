"""`python -m lab run e15`: Dramatiq's Prometheus middleware, counted against what was sent.

In this process: the exposition server's defaults, read from Dramatiq's module, and what the middleware
does under a plain ``dramatiq.Worker`` (no ``process_boot``: it fails on every message).

With real ``dramatiq`` processes, side by side, each in a namespace, on a port and with a metrics
directory (``dramatiq_prom_db``, a temporary directory) of its own, on any broker (on ``memory://`` the
workers reach this run's data through the embedded server): the known mix, scraped; a restart on the
same directory; and e15 loaded as a worker's second module.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lab
from lab.processes import WorkerProcess, free_port

import dramatiq.middleware.prometheus
from dramatiq.middleware.prometheus import Prometheus

import e15_monitoring as e15

WORKER = "e15_monitoring"
PROMETHEUS_ENV = ("dramatiq_prom_host", "dramatiq_prom_port", "dramatiq_prom_db")
Sample = tuple[str, dict, float]  # (name, labels, value), as e15.scrape gives them
SCRAPE_ERRORS: list[str] = []  # scrapes that failed while a phase waited, in this process

# Not yet played on RabbitMQ by `python -m lab run`: there, hold never showed in progress in 15 s (not understood yet).
# The metrics on RabbitMQ are proven by tests/test_e15_monitoring.py, through the same mix().
REDIS_ONLY = "not yet on RabbitMQ, where its metrics are proven by tests/test_e15_monitoring.py"


def must(held: bool, what: str) -> None:
    """Stop the scenario with TimeoutError, saying what did not happen in time."""
    if not held:
        raise TimeoutError(f"e15: {what}")


def scenario(run: lab.Run) -> None:
    check_defaults(run, prometheus_defaults())
    check_in_process(run)
    check_workers(run, play(run.shared_url(), run.broker.namespace))


# -- in this process ------------------------------------------------------------------------------------------------


def prometheus_defaults() -> dict[str, object]:
    """Where Dramatiq's exposition server listens, and keeps its files, with none of its variables set:
    its module, loaded afresh as a new process would load it (this process's copy read the environment
    once, when it was imported)."""
    saved = {name: os.environ.pop(name, None) for name in PROMETHEUS_ENV}
    try:
        source = dramatiq.middleware.prometheus.__file__
        spec = importlib.util.spec_from_file_location("dramatiq.middleware.fresh_prometheus", source)
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})
    return {"host": fresh.HTTP_HOST, "port": fresh.HTTP_PORT, "db": fresh.DB_PATH,
            "tmp": tempfile.gettempdir()}


def check_defaults(run: lab.Run, defaults: dict) -> None:
    default = [m.__name__ for m in dramatiq.middleware.default_middleware]
    added = [m for m in run.broker.middleware if isinstance(m, Prometheus)]
    run.check("test_prometheus_is_not_in_the_default_middleware_and_needs_the_extra",
              "Prometheus" not in default and len(added) == 1,
              f"the default middleware: {', '.join(default)}; e15 added {len(added)} Prometheus")
    run.check("test_unset_the_exposition_server_listens_on_every_interface_on_9191",
              (defaults["host"], defaults["port"]) == ("0.0.0.0", 9191)
              and defaults["db"] == f"{defaults['tmp']}/dramatiq-prometheus",
              f"none of {', '.join(PROMETHEUS_ENV)} set: {defaults['host']}:{defaults['port']}, "
              f"files in {defaults['db']}")


class Criticals(logging.Handler):
    """Keeps the CRITICAL records of Dramatiq's loggers: what a middleware's failing hook logs."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def in_process_failures(run: lab.Run) -> tuple[list[str], list[str]]:
    """One ``succeed`` through a plain ``dramatiq.Worker`` with Prometheus on the broker: its outcomes, and
    the hooks that failed (``hook: error``). Then Prometheus leaves this process's broker: here it only sends."""
    [prometheus] = [m for m in run.broker.middleware if isinstance(m, Prometheus)]
    criticals, dramatiq_log = Criticals(), logging.getLogger("dramatiq")
    dramatiq_log.addHandler(criticals)
    try:
        run.start_worker(threads=1, queues={e15.QUEUE})
        message = e15.succeed.send()
        must(run.wait_until(lambda: [a for a in run.attempts("succeed") if a.message_id == message.message_id
                                     and a.ended], timeout=10), "succeed did not run in this process")
        run.stop_worker()
    finally:
        dramatiq_log.removeHandler(criticals)
        run.broker.middleware.remove(prometheus)
    outcomes = [a.outcome for a in run.attempts("succeed") if a.message_id == message.message_id]
    failed = [f"{r.getMessage().split(' of ')[0].removeprefix('Unexpected failure in ')}: {r.exc_info[1]}"
              for r in criticals.records if r.exc_info and "Prometheus" in r.getMessage()]
    return outcomes, failed


def check_in_process(run: lab.Run) -> None:
    outcomes, failed = in_process_failures(run)
    run.check("test_under_a_plain_worker_every_hook_fails_and_the_message_still_runs",
              outcomes == ["ok"] and failed == [
                  "before_process_message: 'Prometheus' object has no attribute 'inprogress_messages'",
                  "after_process_message: 'Prometheus' object has no attribute 'message_durations'"],
              f"succeed() ran: {', '.join(outcomes)}; logged at CRITICAL: {'; '.join(failed)}")


# -- with real processes --------------------------------------------------------------------------------------------


class Bench(lab.Run):
    """A run of its own on ``url`` and ``namespace``, its workers' metrics in a temporary directory."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(WORKER, lab.make_broker(url, namespace=namespace), lab.Recorder())
        self.dirs: list[str] = []

    def close(self) -> None:
        for worker in self.processes:
            worker.kill()
        super().close()
        self.broker.close()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)

    def new_dir(self) -> str:
        self.dirs.append(tempfile.mkdtemp(prefix="lab-e15-prom-"))
        return self.dirs[-1]

    def spawn(self, *modules: str, db: str, processes: int = 2) -> tuple[WorkerProcess, str]:
        """A worker with Prometheus on 127.0.0.1, a free port, and ``db``; once its exposition server
        answers, the worker and that server's URL."""
        port = free_port()
        worker = self.spawn_worker(*(modules or [WORKER]), processes=processes, dramatiq_prom_host="127.0.0.1",
                                   dramatiq_prom_port=str(port), dramatiq_prom_db=db)
        worker.wait_for("Fork process 'dramatiq.middleware.prometheus:_run_exposition_server' is ready")
        url = f"http://127.0.0.1:{port}/metrics"
        scraped(url)
        return worker, url

    def send(self, *messages: dramatiq.Message, delay: int | None = None) -> None:
        for message in messages:
            self.broker.enqueue(message, delay=delay)

    def three_one(self) -> None:
        """What the upstream report sent per start: 3 messages, 1 of them failing (no retry)."""
        self.send(e15.succeed.message(), e15.succeed.message(), e15.fail.message_with_options(max_retries=0))


def worker_pids(worker: WorkerProcess) -> list[int]:
    """The pids of its worker processes (its fork process, the exposition server, says it is ready too)."""
    return [int(pid) for pid in re.findall(r"\[PID (\d+)\][^\n]*Worker process is ready", worker.output)]


def ours(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s[0].startswith("dramatiq_")]


def scraped(url: str, until=lambda samples: True, what: str = "an answer") -> list[Sample]:
    """Scrape ``url`` until its samples satisfy ``until``; that scrape's dramatiq_* samples.

    A scrape that fails is asked again: the server closes the connection without a response when it
    fails to read a worker's file (seen once, at a load of 13 on 2 cores); each is noted in SCRAPE_ERRORS.
    """
    seen: list[Sample] = []

    def reached() -> bool:
        try:
            seen[:] = e15.scrape(url)
        except OSError as exc:
            SCRAPE_ERRORS.append(f"{type(exc).__name__}: {exc}")
            return False
        return until(seen)

    must(lab.wait_until(reached, timeout=15, interval=0.05), f"{url} gave no {what} in 15 s")
    return ours(seen)


def counted(url: str, name: str, expected: float, **labels: str) -> list[Sample]:
    """Scrape ``url`` until ``name`` (summed, with ``labels``) reaches ``expected``; that scrape's samples."""
    return scraped(url, lambda seen: e15.total(seen, name, **labels) >= expected, f"{name} {labels} >= {expected}")


def waiting(broker: dramatiq.Broker, queue: str) -> int:
    """Messages in ``queue`` that no worker has taken yet: a Redis list's length, or RabbitMQ's ready count."""
    if lab.broker.is_rabbitmq(broker):
        from lab.rabbit_status import amqp_counts  # pika only for who asks for RabbitMQ

        return amqp_counts(broker, [queue]).get(queue, {}).get("messages_ready", 0)
    return broker.client.llen(lab.key(broker, queue))


def counted_pair(url: str, expected: tuple[float, float]) -> list[Sample]:
    """Scrape ``url`` until both messages and errors reach ``expected``: after_process_message counts the message,
    then its error, so a scrape between the two would see the message without its error."""
    return scraped(url, lambda seen: all(n >= e for n, e in zip(pair(seen), expected, strict=True)),
                   f"messages/errors >= {expected}")


def listening(port: int) -> list[str]:
    """The addresses with a socket listening on TCP ``port`` on this machine, from /proc/net/tcp and tcp6."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:] if Path(table).exists() else []:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each word little-endian
                found.append(socket.inet_ntop(family, raw))
    return found


@dataclass
class Mix:
    sent: dict = field(default_factory=dict)
    listening: list = field(default_factory=list)  # the addresses its exposition server listens on
    before: list = field(default_factory=list)  # its dramatiq_* samples before anything was sent
    holding: float = 0.0  # dramatiq_messages_inprogress{actor_name="hold"} while one hold ran
    after: list = field(default_factory=list)  # every dramatiq_* sample once all was done
    pids: list = field(default_factory=list)  # of its two worker processes


def mix(url: str, namespace: str) -> Mix:
    """The known mix through ``dramatiq --processes 2``, on a fresh metrics directory, scraped."""
    bench, seen = Bench(url, namespace), Mix()
    try:
        worker, metrics = bench.spawn(db=bench.new_dir())
        seen.pids = worker_pids(worker)
        seen.listening = listening(int(metrics.split(":")[2].split("/")[0]))
        seen.before = scraped(metrics)
        bench.send(e15.hold.message(15))
        seen.holding = e15.total(counted(metrics, "dramatiq_messages_inprogress", 1, actor_name="hold"),
                                 "dramatiq_messages_inprogress", actor_name="hold")
        seen.sent = e15.send_mix(bench.broker)
        counted(metrics, "dramatiq_message_rejects_total", 2)  # fail and expire: the last of the mix to end
        must(lab.wait_until(lambda: not waiting(bench.broker, e15.QUEUE), timeout=10, interval=0.1),
             "e15 did not empty")
        bench.broker.client.rpush(e15.key("gate", bench.broker), "go")
        counted(metrics, "dramatiq_messages_total", sum(seen.sent.values()) + 2 + 1)  # fail: 3 tries; and hold
        # A scrape reads the processes' files one at a time, in the directory's order (glob), and
        # after_process_message observes the duration before it counts the message: the scrape that first
        # saw hold counted may have read the histogram's file before hold's observation. A scrape begun
        # after that one reads every file as it was once all had ended.
        seen.after = scraped(metrics)
        return seen
    finally:
        bench.close()


@dataclass
class Restart:
    first: list = field(default_factory=list)  # after 3 sent (1 failing) to the first worker
    at_restart: list = field(default_factory=list)  # the second worker, same directory, nothing sent yet
    second: list = field(default_factory=list)  # after 3 more sent (1 failing)
    stop_code: int | None = None  # of the first worker, stopped with SIGTERM
    files: list = field(default_factory=list)  # in the directory, at the end
    pids: list = field(default_factory=list)  # of the worker processes of both starts


def restart(url: str, namespace: str) -> Restart:
    """3 messages (1 failing) to a worker, a clean stop, a new worker on the same directory, 3 more."""
    bench, seen = Bench(url, namespace), Restart()
    db = bench.new_dir()
    try:
        worker, metrics = bench.spawn(db=db, processes=1)
        bench.three_one()
        seen.first = counted_pair(metrics, (3, 1))
        seen.pids = worker_pids(worker)
        seen.stop_code = worker.stop()
        worker, metrics = bench.spawn(db=db, processes=1)
        seen.pids += worker_pids(worker)
        seen.at_restart = scraped(metrics)
        bench.three_one()
        seen.second = counted_pair(metrics, (6, 2))
        seen.files = sorted(p.name for p in Path(db).iterdir())
        return seen
    finally:
        bench.close()


@dataclass
class Second:
    output: list = field(default_factory=list)  # the worker's log lines about Prometheus
    samples: list = field(default_factory=list)  # what its exposition server served after one succeed
    ran: bool = False


def second_module(url: str, namespace: str) -> Second:
    """``dramatiq e01_hello_world e15_monitoring``: e15 loaded after the CLI took the broker from e01."""
    bench, seen = Bench(url, namespace), Second()
    try:
        worker, metrics = bench.spawn("e01_hello_world", WORKER, db=bench.new_dir(), processes=1)
        bench.send(e15.succeed.message())
        seen.ran = lab.wait_until(lambda: "e15_monitoring.succeed] [INFO] done" in worker.output, timeout=10)
        worker.wait_for("Unexpected failure in after_process_message")
        seen.samples = scraped(metrics)
        seen.output = [line.split("] ", 4)[-1] for line in worker.output.splitlines()
                       if "Prometheus" in line or "AttributeError" in line]
        return seen
    finally:
        bench.close()


@dataclass
class Workers:
    mix: Mix
    restart: Restart
    second: Second
    scrape_errors: list = field(default_factory=list)  # scrapes that failed and were asked again


def play(url: str, namespace: str) -> Workers:
    """Every phase with real processes, side by side, on ``url`` in namespaces under ``namespace``."""
    SCRAPE_ERRORS.clear()
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(mix, url, f"{namespace}-mix"), pool.submit(restart, url, f"{namespace}-restart"),
                   pool.submit(second_module, url, f"{namespace}-second")]
        return Workers(*(future.result() for future in futures), list(SCRAPE_ERRORS))


def by_actor(samples: list[Sample], name: str) -> dict[str, float]:
    """``name``'s values summed by actor (over queues and pids), the actors with a non-zero sum."""
    sums: dict[str, float] = {}
    for n, labels, value in samples:
        if n == name:
            sums[labels["actor_name"]] = sums.get(labels["actor_name"], 0) + value
    return {actor: value for actor, value in sorted(sums.items()) if value}


def by_queue(samples: list[Sample], name: str, actor: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for n, labels, value in samples:
        if n == name and labels["actor_name"] == actor:
            sums[labels["queue_name"]] = sums.get(labels["queue_name"], 0) + value
    return sums


def pair(samples: list[Sample]) -> tuple[float, float]:
    """(dramatiq_messages_total, dramatiq_message_errors_total), summed: the upstream report's "3/1"."""
    return e15.total(samples, "dramatiq_messages_total"), e15.total(samples, "dramatiq_message_errors_total")


def check_workers(run: lab.Run, seen: Workers) -> None:
    m = seen.mix
    run.check("test_the_lab_s_exposition_server_listens_on_127_0_0_1_only",
              m.listening == ["127.0.0.1"], f"listening on {', '.join(m.listening) or 'nothing'} "
              f"(dramatiq_prom_host=127.0.0.1, a free port); {len(seen.scrape_errors)} scrape(s) asked again")

    total = by_actor(m.after, "dramatiq_messages_total")
    run.check("test_messages_total_counts_every_attempt_and_every_skip",
              m.before == [] and total == {"expire": 1, "fail": 3, "hold": 1, "later": 2, "succeed": 3},
              f"sent {m.sent} and 1 hold; counted {total} (nothing before the first message)")

    errors, rejects = by_actor(m.after, "dramatiq_message_errors_total"), by_actor(m.after,
                                                                                   "dramatiq_message_rejects_total")
    run.check("test_errors_count_failed_attempts_and_rejects_count_dead_letters",
              errors == {"fail": 3} and rejects == {"expire": 1, "fail": 1},
              f"errors {errors}; rejects {rejects} (fail: 3 attempts then the dead letters; expire: skipped there)")

    retries = by_queue(m.after, "dramatiq_message_retries_total", "fail")
    run.check("test_retries_total_counts_each_retry_twice",
              retries == {"e15.DQ": 2, "e15": 2},
              f"fail() retried 2 times; dramatiq_message_retries_total {retries}")

    durations = by_actor(m.after, "dramatiq_message_duration_milliseconds_count")
    expire_fast = e15.total(m.after, "dramatiq_message_duration_milliseconds_bucket", actor_name="expire", le="5.0")
    run.check("test_the_duration_histogram_observes_every_message_the_counter_counts",
              durations == total and expire_fast == 1,
              f"observations {durations}; expire's in the 5 ms bucket: {expire_fast:g}")

    inprogress = by_actor(m.after, "dramatiq_messages_inprogress")
    run.check("test_messages_inprogress_is_1_while_one_runs_and_a_skip_takes_it_below_0",
              m.holding == 1 and inprogress == {"expire": -1},
              f"while hold ran: {m.holding:g}; once all ended: {inprogress or 'all 0'}")

    delayed = [by_queue(m.after, "dramatiq_delayed_messages_inprogress", actor) for actor in ("later", "fail")]
    on_dq, on_queue = (sum(d.get(queue, 0) for d in delayed) for queue in ("e15.DQ", "e15"))
    run.check("test_the_delayed_gauge_never_comes_back_down",
              on_dq == 4 and -4 <= on_queue <= 0,
              f"2 delayed + 2 retries, all run: {on_dq:g} on queue_name=e15.DQ, {on_queue:g} on e15")

    r = seen.restart
    first, at_restart, second = pair(r.first), pair(r.at_restart), pair(r.second)
    old = {f"counter_{pid}.db" for pid in r.pids[:1]}
    run.check("test_counters_survive_a_restart_on_the_same_directory",
              (first, at_restart, second) == ((3, 1), (3, 1), (6, 2)) and r.stop_code == 0 and old <= set(r.files),
              f"3/1 sent to each start: {first[0]:g}/{first[1]:g}, after a clean stop and a restart "
              f"{at_restart[0]:g}/{at_restart[1]:g} before anything was sent, then {second[0]:g}/{second[1]:g}; "
              f"{len(r.files)} files left in dramatiq_prom_db")

    s = seen.second
    failures = [line for line in s.output if line.startswith("[CRITICAL] Unexpected failure in")]
    run.check("test_loaded_as_a_second_module_prometheus_never_sets_up_and_serves_nothing",
              s.ran and s.samples == [] and any("before_process_message" in line for line in failures),
              f"succeed ran: {s.ran}; the server served {len(s.samples)} dramatiq_* samples; "
              f"{len(failures)} CRITICAL hook failures")
