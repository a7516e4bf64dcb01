"""lab/processes.py: nothing a test run starts outlives it, whether it ends by Ctrl-C or by a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lab
from lab.processes import backstop, carrying

import pytest

from conftest import ROOT, need_redis_server

# A test that starts what the suite's tests start (a redis-server, a `dramatiq` worker with one process, a
# sender) through the suite's own fixtures, writes their pids, then waits to be interrupted.
INNER_TEST = """
import json, os, subprocess, sys, threading

def test_starts_what_the_suite_starts_then_waits(redis_server_process, dramatiq_worker):
    worker = dramatiq_worker("e01_hello_world", url=redis_server_process.url)
    sender = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait(600)"])
    pids = {"redis-server": redis_server_process.process.pid, "dramatiq master": worker.pid,
            "dramatiq worker process": worker.worker_pids()[0], "sender": sender.pid}
    with open(os.environ["PIDS_FILE"] + ".tmp", "w") as f:
        json.dump(pids, f)
    os.rename(os.environ["PIDS_FILE"] + ".tmp", os.environ["PIDS_FILE"])
    threading.Event().wait(600)  # until Ctrl-C, or a kill
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def inner_pytest(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``pytest -n 1`` (a controller and an xdist worker, as the suite runs) on INNER_TEST, in a session of its
    own as a terminal's job is; killed at teardown whatever happens."""
    need_redis_server()
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    pids = tmp_path / "pids.json"
    env = dict(os.environ, PIDS_FILE=str(pids), PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-o", "addopts=", "-n", "1", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield process, pids
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_nothing_a_test_run_starts_outlives_it(inner_pytest, how):
    # Given a test run (a controller and an xdist worker) whose test started a redis-server, a `dramatiq` worker
    # (a master and its worker process) and a sender, each in a process group of its own but the sender
    process, pids_file = inner_pytest
    assert lab.wait_until(lambda: pids_file.exists() or process.poll() is not None, timeout=60), process.stdout.read()
    assert process.poll() is None, process.stdout.read()
    pids = json.loads(pids_file.read_text())
    assert all(alive(pid) for pid in pids.values()), pids
    # when the user presses Ctrl-C (SIGINT to the whole job: the controller, the xdist worker, the sender),
    # or the run is killed (SIGKILL to the whole job: no teardown runs anywhere)
    os.killpg(process.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    process.wait(timeout=60)
    # then none of them is left: the fixtures' teardown stopped them (Ctrl-C), or the backstop killed them
    assert lab.wait_until(lambda: not any(alive(pid) for pid in pids.values()), timeout=15), {
        name: pid for name, pid in pids.items() if alive(pid)}


def test_the_backstop_of_a_process_is_started_once_and_marks_what_it_starts():
    # Given this process's backstop (conftest.py started it): a second call changes nothing
    token = backstop()
    assert backstop() == token and token in os.environ[lab.processes.OWNERS_ENV].split()
    # when it starts a process, that process carries the token, and so the backstop would find it
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert lab.wait_until(lambda: child.pid in carrying(lab.processes.OWNERS_ENV, token), timeout=10)
    finally:
        child.communicate()
