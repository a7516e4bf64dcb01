"""The lab's shared plumbing: one broker per process, sender helpers, scripted runs.

Experiments use it like this::

    import lab
    broker = lab.setup_broker()      # before declaring actors
"""

from .broker import (
    DEFAULT_URL,
    EXIT_BAD_CONFIG,
    EXIT_UNREACHABLE,
    MEMORY_URL,
    URL_ENV,
    make_broker,
    mask_url,
    redis_url,
    setup_broker,
    use_broker,
)
from .keys import DeadLetter, dead_letters
from .scenario import Attempt, Recorder, Run, run_scenario, stop_worker, wait_until
from .sender import EXIT_CODES_HELP, Command, Group, confirm, describe_attempt

__all__ = [
    "DEFAULT_URL", "EXIT_BAD_CONFIG", "EXIT_UNREACHABLE", "MEMORY_URL", "URL_ENV",
    "make_broker", "mask_url", "redis_url", "setup_broker", "use_broker",
    "DeadLetter", "dead_letters",
    "Attempt", "Recorder", "Run", "run_scenario", "stop_worker", "wait_until",
    "EXIT_CODES_HELP", "Command", "Group", "confirm", "describe_attempt",
]
