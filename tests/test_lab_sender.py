"""A sender that waits says, on a terminal, what it waits for; off a terminal it prints nothing extra."""

import os
import signal
import subprocess
import sys
import time

from lab.processes import lab_env

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """What ``fd`` gave until ``needle`` appeared or ``timeout`` seconds passed."""
    seen, deadline = b"", time.monotonic() + timeout
    os.set_blocking(fd, False)
    while needle not in seen and time.monotonic() < deadline:
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.02)  # a poll interval, not a wait for an outcome: the deadline bounds it
        except OSError:  # the terminal closed: the process is gone
            break
    return seen


@pytest.mark.e2e
def test_flood_wait_with_no_worker_says_on_a_terminal_what_it_waits_for_and_ctrl_c_exits_130(server_url):
    # Given e06's sender on a terminal, and no worker running
    primary, secondary = os.openpty()
    proc = subprocess.Popen([sys.executable, "e06_priorities.py", "flood", "2", "--wait"], cwd=ROOT,
                            env=lab_env(server_url, COLUMNS="120"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=secondary, start_new_session=True)
    os.close(secondary)
    try:
        # When it has sent and waits
        shown = read_until(primary, b"Ctrl-C to stop", timeout=10)

        # Then the terminal says what it waits for, and Ctrl-C ends it with 130 and one line
        assert b"waiting for a worker on e06 to run all 2" in shown, shown
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert proc.stdout.read().decode().startswith("sent 2 x sleepy")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(primary)
        subprocess.run([sys.executable, "-m", "lab", "purge", "e06", "--yes", "--redis", server_url],
                       cwd=ROOT, capture_output=True, timeout=30)


def test_off_a_terminal_the_wait_prints_nothing(capsys):
    import lab

    with lab.waiting("waiting for something"):
        pass
    assert capsys.readouterr() == ("", "")
