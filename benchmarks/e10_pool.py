"""Experiment 10's pools of helper processes: the ceilings' dispatch drivers and the sender processes.

Each helper is ``python -m benchmarks.<room> ...``, in a session of its own (so one signal reaches
anything it starts), with its stderr kept for the report. Its owner tells the pool to stop through
Redis; ``stop`` then waits for each process, notes in the run's problems any that failed or hung,
and kills the group of one that does not stop. Nothing here imports another room of the bench.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(module: str, args: list[str], count: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """``count`` processes of ``python -m module *args``, from the lab's root."""
    return [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(count)]


def stop(processes: list[subprocess.Popen], problems: list[str], what: str, timeout: float = 10) -> None:
    """Wait for each of ``processes`` (already told to stop); a non-zero exit or a hang is one of ``problems``."""
    for process in processes:
        try:
            if process.wait(timeout=timeout) != 0:
                problems.append(f"{what} exited {process.returncode}: {process.stderr.read()[-300:]}")
        except subprocess.TimeoutExpired:
            problems.append(f"{what} did not stop")
            kill(process)
        process.stderr.close()


def kill(process: subprocess.Popen) -> None:
    """SIGKILL ``process``'s group, if it still runs, and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
