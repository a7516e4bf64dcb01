"""What a worker did, as seen from inside: every enqueue and every attempt, in order.

The scenarios that ``python -m lab run`` plays and the tests both read it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    started_ms: float  # wall clock, epoch milliseconds: comparable with a message's eta
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
    eta_ms: int | None = None  # a delayed message's due time, epoch milliseconds: compare an Attempt's started_ms


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

    def attempts_of(self, actor: str | None = None, *args: Any) -> list[Attempt]:
        """Recorded attempts, of ``actor`` (and with exactly ``args``, when given), in start order."""
        with self.lock:
            found = list(self.attempts)
        return [a for a in found if (actor is None or a.actor == actor) and (not args or a.args == args)]

    def enqueues_of(self, actor: str | None = None) -> list[Enqueue]:
        with self.lock:
            return [e for e in self.enqueues if actor is None or e.actor == actor]

    def after_enqueue(self, broker, message, delay) -> None:
        with self.lock:
            self.enqueues.append(
                Enqueue(message.actor_name, tuple(message.args), message.message_id,
                        message.queue_name, delay, self.now(), message.options.get("eta"))
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
            started_ms=time.time() * 1000,
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
