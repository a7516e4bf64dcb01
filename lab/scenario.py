"""Scripted runs: what ``python -m lab run`` plays, and how it checks the lessons.

Each experiment has a scenario, ``scenarios/eNN_name.py``, with a function
``scenario(run: lab.Run) -> None``. It sends messages, waits (bounded) for them
to settle, and checks each lesson with ``run.check(test, held, evidence)``:
``test`` names a test that a lesson (docs/eNN_*.rst) cites, so the run prints
the README's words, and ``held`` comes from what the :class:`Recorder` observed.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError

from .processes import WorkerProcess
from .recorder import Attempt, Enqueue, Recorder, wait_until
from .urls import MEMORY_URL, NAMESPACE_ENV

if TYPE_CHECKING:  # imported where used: every process that imports lab would load fakeredis (0.05 s)
    from .server import EmbeddedRedis

#: How often :meth:`Run.wait_until` asks Redis whether it is still there, in seconds.
PING_INTERVAL = 0.1

#: What a thread of Dramatiq raises when Redis is gone: redis-py's errors, and Dramatiq's wrapper of them.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, BrokerConnectionError)


def stop_worker(worker: dramatiq.Worker, timeout_ms: int = 10_000) -> None:
    """Stop ``worker`` (waiting ``timeout_ms`` at most for its threads) and detach it from its broker.

    The bound matters when Redis is gone: a worker thread then retries its ack
    every 5 s, forever, and ``Worker.stop()`` would wait 10 minutes by default.
    Connection errors while stopping are ignored: the threads are daemons.

    ``Worker.stop()`` also leaves the worker's own middleware on the broker (Dramatiq
    2.2). A queue declared later, say by the next experiment imported on the same
    broker, then starts a consumer for the stopped worker, which fetches messages
    that no thread will ever run. Removing that middleware prevents it.
    """
    try:
        worker.stop(timeout=timeout_ms)
    except redis.RedisError:
        pass
    finally:
        worker.broker.middleware[:] = [
            m for m in worker.broker.middleware if getattr(m, "worker", None) is not worker
        ]


@dataclass
class Check:
    """One lesson, checked: its words (from its page in docs/), its test, and what this run saw."""

    test: str  # "tests/<file>.py::<test>", cited by the lesson in README.rst
    lesson: str  # the lesson's first sentence in README.rst
    held: bool | None  # None: skipped, with the reason as evidence
    evidence: str = ""


@dataclass
class Run:
    """What a scenario works with: the broker, what was recorded, the lessons checked."""

    experiment: str  # the experiment's module name, e.g. "e02_error_handling"
    broker: RedisBroker
    recorder: Recorder
    checks: list[Check] = field(default_factory=list)
    worker: dramatiq.Worker | None = None
    processes: list[WorkerProcess] = field(default_factory=list)
    _embedded: EmbeddedRedis | None = None

    def start_worker(self, *, threads: int = 2, worker_timeout: int = 100, queues: set[str] | None = None,
                     prefetch: int | None = None) -> dramatiq.Worker:
        """Start a worker in this process (stopping the one before, if any), on ``queues`` (all,
        unless told), holding ``prefetch`` messages a queue (twice the threads, unless told)."""
        self.stop_worker()
        self.worker = dramatiq.Worker(self.broker, queues=queues, worker_threads=threads,
                                      worker_timeout=worker_timeout)
        self.worker.queue_prefetch = prefetch or self.worker.queue_prefetch
        self.worker.start()
        return self.worker

    def stop_worker(self, timeout_ms: int = 10_000) -> None:
        """Stop the run's worker, waiting ``timeout_ms`` at most, and less if Redis goes away.

        Redis gone, the worker's threads can neither ack nor requeue, and a consumer
        thread sleeps 3 s before it retries (``dramatiq_restart_delay``): waiting for
        them only delays the run's end. So the stop waits not at all if Redis is
        gone already, and if Redis dies while it waits (pinged every 0.1 s), the
        run stops there with redis.ConnectionError. The threads are daemons.
        """
        worker, self.worker = self.worker, None
        if worker is None:
            return
        try:
            self.broker.client.ping()
        except CONNECTION_ERRORS:
            return stop_worker(worker, timeout_ms=0)
        stopping = threading.Thread(target=stop_worker, args=(worker, timeout_ms), name="lab-stop-worker", daemon=True)
        stopping.start()
        stopping.join(PING_INTERVAL)
        while stopping.is_alive():
            self.broker.client.ping()  # raises if Redis went away meanwhile: the run ends here
            stopping.join(PING_INTERVAL)

    def shared_url(self) -> str:
        """A URL other processes can use to reach this run's Redis and its data.

        On ``memory://`` (an in-process fakeredis), that is a TCP server on a free
        loopback port that serves the same data, started once and stopped with the run.
        """
        if self.broker.lab_url != MEMORY_URL:
            return self.broker.lab_url
        if self._embedded is None:
            fake_server = self.broker.client.connection_pool.connection_kwargs["server"]
            from .server import EmbeddedRedis

            self._embedded = EmbeddedRedis(port=0, fake_server=fake_server).start()
        return self._embedded.url

    def spawn_worker(self, *args: str, processes: int = 1, ready: bool = True, **env: str) -> WorkerProcess:
        """A real ``dramatiq --processes N ARGS`` worker on this run's Redis and namespace.

        ``args`` are the CLI's (modules, ``--threads``, ``--queues`` ...); ``env`` is
        added to its environment (``dramatiq_worker_timeout="100"`` is the default).
        It is stopped when the run ends, if the scenario did not stop it first.
        """
        worker = WorkerProcess(["--processes", str(processes), *args], url=self.shared_url(),
                               **{NAMESPACE_ENV: self.broker.namespace, "dramatiq_worker_timeout": "100", **env})
        self.processes.append(worker)
        if ready:
            worker.ready(processes)
        return worker

    def close(self) -> None:
        """Stop what the run started: its worker, its worker processes, its TCP server."""
        self.stop_worker()
        for worker in self.processes:
            worker.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def attempts(self, actor: str | None = None, *args: Any) -> list[Attempt]:
        """Recorded attempts, of ``actor`` (and with exactly ``args``, when given)."""
        return self.recorder.attempts_of(actor, *args)

    def enqueues(self, actor: str | None = None) -> list[Enqueue]:
        return self.recorder.enqueues_of(actor)

    def wait_until(self, condition: Callable[[], Any], *, timeout: float) -> bool:
        """Poll ``condition`` until it is true or ``timeout`` seconds pass; say which.

        Redis is pinged every 0.1 s meanwhile: if it goes away, the run stops
        at once (redis.ConnectionError), not at the deadline.
        """
        pinged = time.monotonic()

        def check() -> Any:
            nonlocal pinged
            if time.monotonic() - pinged > PING_INTERVAL:
                self.broker.client.ping()
                pinged = time.monotonic()
            return condition()

        return wait_until(check, timeout=timeout)

    def settle(self, *queue_names: str, timeout: float = 30) -> bool:
        """Wait until the queues hold nothing ready, delayed or in flight (bounded)."""
        if not isinstance(self.broker, RedisBroker):
            return self._settle_rabbitmq(queue_names, timeout)
        try:
            for queue_name in queue_names:
                self.broker.join(queue_name, interval=20, timeout=int(timeout * 1000))
        except dramatiq.errors.QueueJoinTimeout:
            return False
        return True

    def _settle_rabbitmq(self, queue_names: tuple[str, ...], timeout: float) -> bool:
        """RabbitMQ's ``join`` counts ready messages only (Experiment 13): what the run's worker holds, prefetched
        or delayed, is counted from the worker itself. Settled once both are 0 at 5 checks in a row, 20 ms apart
        (a message on its way from the server to the worker is in neither count)."""
        quiet = 0

        def settled() -> bool:
            nonlocal quiet
            ready = sum(sum(self.broker.get_queue_message_counts(q)[:-1]) for q in queue_names)
            worker = self.worker
            held = worker is not None and (worker.work_queue.unfinished_tasks > 0 or any(
                consumer.delay_queue.unfinished_tasks for consumer in list(worker.consumers.values())))
            quiet = quiet + 1 if ready == 0 and not held else 0
            return quiet >= 5

        return wait_until(settled, timeout=timeout, interval=0.02)

    def _test_id(self, test: str) -> str:
        return test if "::" in test else f"tests/test_{self.experiment}.py::{test}"

    def check(self, test: str, held: bool, evidence: str = "") -> bool:
        """Check the lesson that README.rst proves with ``test``, from this run's observations.

        ``test`` is a test name in the experiment's own test file, or a full
        ``tests/<file>.py::<test>``. LookupError if no lesson cites it.
        """
        from .lessons import lesson_for  # here: only runs read README.rst

        test = self._test_id(test)
        self.checks.append(Check(test, lesson_for(test).headline, bool(held), evidence))
        return bool(held)

    def skip(self, test: str, why: str) -> None:
        """Say that this run cannot check the lesson ``test`` proves, and why."""
        from .lessons import lesson_for

        test = self._test_id(test)
        self.checks.append(Check(test, lesson_for(test).headline, None, why))

    @property
    def all_held(self) -> bool:
        return all(check.held is not False for check in self.checks)

    def as_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "attempts": [asdict(a) for a in self.attempts()],
            "lessons": [asdict(check) for check in self.checks],
            "all_held": self.all_held,
        }


def run_scenario(experiment: str, scenario: ModuleType, broker: RedisBroker) -> Run:
    """Play ``scenario.scenario`` on ``broker``; the scenario starts the worker it needs.

    Whatever happens, what the run started is stopped (:meth:`Run.close`); an
    exception propagates. After Ctrl-C, the worker gets 1 s to stop, not 10;
    with Redis gone, none: its threads can neither ack nor requeue, and they are
    daemons, so they end with the process.
    """
    from .lessons import lessons

    lessons()  # README.rst, parsed (about a second of CPU) before the scenario starts rather than in its midst
    recorder = Recorder.install(broker)
    recorder.reset()
    run = Run(experiment, broker, recorder)
    try:
        scenario.scenario(run)
    except CONNECTION_ERRORS:
        run.stop_worker(timeout_ms=0)
        raise
    except BaseException:
        run.stop_worker(timeout_ms=1000)
        raise
    finally:
        run.close()
    return run


class _OneLineConnectionErrors(logging.Filter):
    """Log a connection error's record as one line: its message and the error, not the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CONNECTION_ERRORS):
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", ()
            record.exc_info = record.exc_text = None
        return True


@contextmanager
def worker_log(shown: bool) -> Iterator[None]:
    """While a run plays: the worker's log on stderr if ``shown`` (``--log``), else none of it on the screen.

    Either way, a lost Redis is never a traceback. When Redis dies, the run's
    main thread says so in its one line and exit code; the worker's threads see
    it too. Their CRITICAL "Consumer encountered an unexpected error." (a delayed
    message it could not enqueue) carries a traceback, and a consumer thread whose
    cleanup fails too dies with one ("Exception in thread ..."). Here such a
    record loses its traceback, and a thread killed by a connection error ends
    with a log line instead. Any other error keeps its traceback: that is a bug.

    When the run ends because Redis is gone, the worker's log ends there, so that
    the run's last lines are its own (the cleanup note, the one line); the rest
    stays in place until the process exits: the worker's threads were not waited
    for, and may still speak.
    """
    root, mine = logging.getLogger(), []
    if shown:
        before = list(root.handlers)
        logging.basicConfig(level=logging.INFO, format="[%(threadName)s] [%(name)s] [%(levelname)s] %(message)s")
        mine = [handler for handler in root.handlers if handler not in before]
        filters = [(handler, _OneLineConnectionErrors()) for handler in root.handlers]
    else:
        # ERROR and below for every handler; CRITICAL only off the screen (Python's last-resort handler, used
        # when no handler is configured), so that a scenario's own handler still sees it.
        logging.disable(logging.ERROR)
        filters = [(logging.lastResort, lambda record: False)]
    for handler, dropped in filters:
        handler.addFilter(dropped)
    previous = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, CONNECTION_ERRORS):
            name = args.thread.name if args.thread else "a thread"
            logging.getLogger("lab").warning("%s ended: %s: %s", name, type(args.exc_value).__name__, args.exc_value)
        else:
            previous(args)

    def restore() -> None:
        threading.excepthook = previous
        for handler, dropped in filters:
            handler.removeFilter(dropped)
        logging.disable(logging.NOTSET)

    threading.excepthook = quiet
    try:
        yield
    except CONNECTION_ERRORS:
        logging.disable(logging.CRITICAL)  # and the rest left in place: see above
        for handler in mine:  # a thread already past that check may still emit: into nothing
            handler.setStream(io.StringIO())
        raise
    except BaseException:
        restore()
        raise
    restore()
