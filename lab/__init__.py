"""The lab's shared plumbing: one broker per process, clean failures, scripted runs.

Experiments use it like this::

    import lab
    broker = lab.setup_broker()      # before declaring actors
"""

# First, before anything that imports Dramatiq: importing lab.settings checks the settings Dramatiq reads from
# the environment when it is imported (a bad one: one line and exit 2, not Dramatiq's traceback).
from . import settings
from .broker import connect, make_broker, setup_broker, use_broker
from .failures import (
    EXIT_AUTH,
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Command,
    Failure,
    Group,
)
from .keys import DeadLetter, dead_letters, key
from .options import MAX_DELAY_MS, Milliseconds
from .recorder import Attempt, Recorder, wait_until
from .scenario import Run, run_scenario, stop_worker
from .sender import confirm, describe_attempt, wait_for_result, waiting
from .urls import DEFAULT_URL, MEMORY_URL, URL_ENV, mask_url, redis_url

__all__ = [
    "settings",
    "connect", "make_broker", "setup_broker", "use_broker",
    "EXIT_AUTH", "EXIT_CODES_HELP", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE",
    "EXIT_USAGE", "Command", "Failure", "Group",
    "DeadLetter", "dead_letters", "key",
    "MAX_DELAY_MS", "Milliseconds",
    "Attempt", "Recorder", "wait_until",
    "Run", "run_scenario", "stop_worker",
    "confirm", "describe_attempt", "wait_for_result", "waiting",
    "DEFAULT_URL", "MEMORY_URL", "URL_ENV", "mask_url", "redis_url",
]
