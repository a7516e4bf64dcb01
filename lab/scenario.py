"""Scripted runs: record what a worker did, and check lessons against it.

An experiment module may define ``scenario(run: lab.Run) -> None``. It sends
its messages, waits (bounded) for them to settle, and states each lesson with
``run.lesson(text, held, evidence)``, where ``held`` is computed from what the
:class:`Recorder` observed in this run. ``python -m lab run`` and the tests
both use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware


@dataclass
class Attempt:
    """One execution of a message by a worker thread."""

    actor: str
    args: tuple
    kwargs: dict
    message_id: str
    number: int  # 1 for the first try, 2 for the first retry, ...
    thread: str
    started: float  # seconds since the recorder started
    ended: float | None = None
    outcome: str = "running"  # then "ok", "retried", "failed" or "skipped"
    error: str = ""


@dataclass
class Enqueue:
    """One message put on a queue: the first send, a retry, or a delayed hand-over."""

    actor: str
    args: tuple
    message_id: str
    queue: str
    delay_ms: int | None
    at: float  # seconds since the recorder started


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; say which."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class Recorder(Middleware):
    """Middleware that records every attempt and every enqueue it sees in this process.

    Install it with :meth:`install`: it must be the *first* middleware, because
    Dramatiq runs ``after_*`` hooks in reverse order, and the outcome of an
    attempt (retried or failed) is only known once Retries has run.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.origin = time.monotonic()
            self.attempts: list[Attempt] = []
            self.enqueues: list[Enqueue] = []

    @classmethod
    def install(cls, broker: RedisBroker) -> Recorder:
        """The broker's recorder, added first in its middleware list if it has none."""
        for middleware in broker.middleware:
            if isinstance(middleware, cls):
                return middleware
        recorder = cls()
        broker.middleware.insert(0, recorder)
        return recorder

    def now(self) -> float:
        return time.monotonic() - self.origin

    def after_enqueue(self, broker, message, delay) -> None:
        with self.lock:
            self.enqueues.append(
                Enqueue(message.actor_name, tuple(message.args), message.message_id,
                        message.queue_name, delay, self.now())
            )

    def before_process_message(self, broker, message) -> None:
        attempt = Attempt(
            actor=message.actor_name,
            args=tuple(message.args),
            kwargs=dict(message.kwargs),
            message_id=message.message_id,
            number=message.options.get("retries", 0) + 1,
            thread=threading.current_thread().name,
            started=self.now(),
        )
        with self.lock:
            self.attempts.append(attempt)
        message._lab_attempt = attempt  # read back in the after_* hooks

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        attempt = getattr(message, "_lab_attempt", None)
        if attempt is None:
            return
        attempt.ended = self.now()
        if exception is None:
            attempt.outcome = "ok"
        else:
            attempt.outcome = "failed" if message.failed else "retried"
            attempt.error = f"{type(exception).__name__}: {exception}"

    def after_skip_message(self, broker, message) -> None:
        attempt = getattr(message, "_lab_attempt", None)
        if attempt is not None:
            attempt.ended, attempt.outcome = self.now(), "skipped"


def stop_worker(worker: dramatiq.Worker) -> None:
    """Stop ``worker`` and detach it from its broker.

    ``Worker.stop()`` leaves the worker's own middleware on the broker (Dramatiq
    2.2). A queue declared later, say by the next experiment imported on the same
    broker, then starts a consumer for the stopped worker, which fetches messages
    that no thread will ever run. Removing that middleware prevents it.
    """
    worker.stop()
    worker.broker.middleware[:] = [
        m for m in worker.broker.middleware if getattr(m, "worker", None) is not worker
    ]


@dataclass
class LessonResult:
    text: str
    held: bool
    evidence: str = ""


@dataclass
class Run:
    """What a scenario works with: the broker, what was recorded, the lessons stated."""

    experiment: str
    broker: RedisBroker
    recorder: Recorder
    lessons: list[LessonResult] = field(default_factory=list)
    worker: dramatiq.Worker | None = None

    def start_worker(self, *, threads: int = 2, worker_timeout: int = 100) -> dramatiq.Worker:
        """Start a worker in this process (stopping the one before, if any)."""
        self.stop_worker()
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=worker_timeout)
        self.worker.start()
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            stop_worker(self.worker)
            self.worker = None

    def attempts(self, actor: str | None = None, *args: Any) -> list[Attempt]:
        """Recorded attempts, of ``actor`` (and with exactly ``args``, when given)."""
        with self.recorder.lock:
            found = list(self.recorder.attempts)
        return [
            a for a in found
            if (actor is None or a.actor == actor) and (not args or a.args == args)
        ]

    def enqueues(self, actor: str | None = None) -> list[Enqueue]:
        with self.recorder.lock:
            return [e for e in self.recorder.enqueues if actor is None or e.actor == actor]

    def wait_until(self, condition: Callable[[], Any], *, timeout: float) -> bool:
        """Poll ``condition`` until it is true or ``timeout`` seconds pass; say which."""
        return wait_until(condition, timeout=timeout)

    def settle(self, *queue_names: str, timeout: float = 30) -> bool:
        """Wait until the queues hold nothing ready, delayed or in flight (bounded)."""
        try:
            for queue_name in queue_names:
                self.broker.join(queue_name, interval=20, timeout=int(timeout * 1000))
        except dramatiq.errors.QueueJoinTimeout:
            return False
        return True

    def lesson(self, text: str, held: bool, evidence: str = "") -> bool:
        """State a lesson and whether this run's observations bear it out."""
        self.lessons.append(LessonResult(text, bool(held), evidence))
        return bool(held)

    @property
    def all_held(self) -> bool:
        return all(lesson.held for lesson in self.lessons)

    def as_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "attempts": [asdict(a) for a in self.attempts()],
            "lessons": [asdict(lesson) for lesson in self.lessons],
            "all_held": self.all_held,
        }


def run_scenario(module: ModuleType, broker: RedisBroker) -> Run:
    """Play ``module.scenario`` on ``broker``; the scenario starts the worker it needs.

    Whatever happens, the worker is stopped; an exception propagates.
    """
    recorder = Recorder.install(broker)
    recorder.reset()
    run = Run(module.__name__, broker, recorder)
    try:
        module.scenario(run)
    finally:
        run.stop_worker()
    return run
