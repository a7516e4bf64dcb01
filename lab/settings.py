"""Whole numbers from the environment, checked in one place: one line on stderr and exit 2, never a traceback.

Two kinds of settings are read from the environment as numbers:

- Dramatiq's own (:data:`DRAMATIQ`). Dramatiq reads them with ``int()`` when it is
  imported, and a value ``int()`` refuses (``abc``, ``²``, an empty string, 5,000
  digits) ends the process in a ValueError traceback. ``lab/__init__.py`` checks
  them first, before it imports anything that imports Dramatiq, so every process
  that imports ``lab`` before ``dramatiq`` (the senders: ruff's isort puts ``lab``
  first, see pyproject.toml; ``python -m lab``; a ``dramatiq`` worker's processes,
  for the variables read when the broker module loads) fails in one line.
- An experiment's own, such as e05's ``e05_heartbeat_timeout``: it calls
  :func:`whole_number`.

Importing this module runs :func:`check_dramatiq_environment`; it imports
nothing of Dramatiq, on purpose.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

EXIT_USAGE = 2  # as lab.failures.EXIT_USAGE, which imports more than this module may

#: What Dramatiq 2.2.1 reads from the environment with int(), and the range the lab lets through: the
#: whole numbers Dramatiq can work with (a negative prefetch would never fetch, a negative restart delay
#: kills the consumer thread in time.sleep, a worker_timeout of 0 polls Redis without pause). Found with
#: ``grep -rn "getenv\|environ" dramatiq/``. Left out: what is not a number (dramatiq_prom_db,
#: dramatiq_prom_host).
DRAMATIQ: dict[str, tuple[int, int, str]] = {
    # variable: (lowest, highest, when Dramatiq reads it)
    "dramatiq_queue_prefetch": (0, 65_535, "at import, dramatiq/worker.py; 0: twice the threads"),
    "dramatiq_delay_queue_prefetch": (0, 65_535, "at import, dramatiq/worker.py; 0: 1000 a thread"),
    "dramatiq_worker_timeout": (1, 3_600_000, "at import, dramatiq/worker.py; in ms"),
    "dramatiq_restart_delay": (0, 3_600_000, "at import, dramatiq/worker.py; in ms"),
    "dramatiq_lua_max_stack": (1, 1_000_000, "at import, dramatiq/brokers/redis.py"),
    "dramatiq_group_callback_barrier_ttl": (1, 10 * 365 * 86_400_000, "by GroupCallbacks(), in ms; deprecated"),
    "dramatiq_dead_message_ttl": (1, 10 * 365 * 86_400_000, "at import, dramatiq/brokers/rabbitmq.py (e13); in ms"),
    "dramatiq_prom_port": (1, 65_535, "at import, dramatiq/middleware/prometheus.py (e15)"),
}


def program() -> str:
    """The command the user typed, as the first word of an error line: ``e05_crash_recovery.py``, ``python -m lab``.

    While ``python -m lab`` imports the package, ``sys.argv[0]`` is still ``-m``:
    the original command line says which module it was.
    """
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv[:-1] and (sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0]) == "__main__.py"):
        return f"python -m {argv[argv.index('-m') + 1]}"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def error_stream() -> TextIO:
    """Where a one-line error goes: ``sys.stderr``, except in a worker process of the ``dramatiq`` CLI.

    There ``sys.stderr`` is a pipe to the master process (dramatiq.compat.StreamablePipe), read by
    its log watcher thread, and Dramatiq 2.2.1 stops that thread as soon as a worker process has
    exited, without reading what is left in the pipes (dramatiq/cli.py: main() sets the watcher's
    stop event, watch_logs() checks it first). A worker process that fails at boot exits at once,
    sometimes before the thread has read anything: its line was lost, and the master's too. The
    line goes to the stderr the worker process inherited from the master instead, where the master
    writes its pipes' lines anyway.
    """
    pipe = type(sys.stderr)
    if (pipe.__module__, pipe.__name__) == ("dramatiq.compat", "StreamablePipe") and sys.__stderr__ is not None:
        return sys.__stderr__
    return sys.stderr


def parse_whole_number(value: str, low: int, high: int) -> int | None:
    """``value`` as a whole number from ``low`` to ``high``, written in the digits 0 to 9; None if it is not one.

    Stricter than ``int()``, on purpose: ``"²".isdigit()`` is true and ``int("²")``
    fails; ``int("٣")`` is 3; ``int()`` refuses more than 4,300 digits with a
    ValueError of its own. Here each is simply not a whole number in range, and
    a long one is refused by its length before ``int()`` sees it.
    """
    if not re.fullmatch(r"[0-9]+", value):
        return None
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    number = int(digits)
    return number if low <= number <= high else None


def _shown(value: str) -> str:
    """``value``, quoted, and cut if it is long: the error stays one readable line."""
    return repr(value) if len(value) <= 30 else f"{value[:12]!r}... ({len(value)} characters)"


def refuse(variable: str, value: str, low: int, high: int, note: str = "") -> None:
    """Print the one line that says ``variable`` must be a whole number from ``low`` to ``high``; exit 2."""
    print(f"{program()}: {variable}={_shown(value)} must be a whole number from {low} to {high}{note}",
          file=error_stream())
    sys.exit(EXIT_USAGE)


def whole_number(variable: str, low: int, high: int) -> int | None:
    """The environment variable ``variable`` as a whole number from ``low`` to ``high``; None if unset or empty.

    Any other value ends the process: one line on stderr, exit 2. An empty value
    means unset, as for ``DRAMATIQ_REDIS_URL``.
    """
    value = os.environ.get(variable, "")
    if value == "":
        return None
    number = parse_whole_number(value, low, high)
    if number is None:
        refuse(variable, value, low, high)
    return number


def check_dramatiq_environment() -> None:
    """Refuse, in one line and exit 2, a Dramatiq setting (:data:`DRAMATIQ`) that Dramatiq would die on.

    Unlike the lab's own settings, an empty value is refused too: Dramatiq reads
    it with ``int("")``. Unset it instead, for Dramatiq's default.
    """
    for variable, (low, high, _) in DRAMATIQ.items():
        value = os.environ.get(variable)
        if value is not None and parse_whole_number(value, low, high) is None:
            refuse(variable, value, low, high, "; unset it for Dramatiq's default")


check_dramatiq_environment()
