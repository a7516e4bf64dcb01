"""Experiment 01's lessons: actors, send(), the shared broker, and the sender's manners."""

from __future__ import annotations

import shutil
import socketserver
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lab
from lab import experiments

import pytest
import redis

from conftest import ROOT, free_port, lab_env

WATCHED = "/home/learner/dramatiq-lab/e01_hello_world.py"  # watchdog reports absolute paths


def test_an_actor_is_still_a_function(load, recorder):
    e01 = load("e01")
    assert e01.count_to(3) is None
    assert recorder.enqueues == [] and recorder.attempts == []


def test_send_enqueues_and_a_worker_thread_runs_it(load, recorder, start_worker):
    e01 = load("e01")
    message = e01.count_to.send(2)
    assert [e.message_id for e in recorder.enqueues] == [message.message_id]
    start_worker(threads=2)
    assert lab.wait_until(lambda: [a.outcome for a in recorder.attempts] == ["ok"], timeout=5)
    assert recorder.attempts[0].thread != "MainThread"


def python(code: str, url: str) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=lab_env(url),
                          capture_output=True, text=True, timeout=30)


def test_get_broker_without_set_broker_tries_rabbitmq_first():
    # Given the lab's install, where pika is there (for e13): no set_broker, then get_broker()
    result = python("""
        import dramatiq
        broker = dramatiq.get_broker()
        print(type(broker).__name__, broker.parameters.host, broker.parameters.port)
    """, url=lab.MEMORY_URL)
    # gives a RabbitMQ broker for the default local server, whether one runs there or not (it connects later)
    assert result.stdout.strip() == "RabbitmqBroker 127.0.0.1 5672", result.stderr


def test_get_broker_falls_back_to_redis_only_when_pika_cannot_be_imported():
    # Given an install without pika (only dramatiq[redis]): importing it fails
    result = python("""
        import sys
        sys.modules["pika"] = None  # `import pika` now raises ImportError, as when it is not installed
        import dramatiq
        print(type(dramatiq.get_broker()).__name__)
    """, url=lab.MEMORY_URL)
    assert result.stdout.strip() == "RedisBroker", result.stderr


def test_experiments_imported_together_share_one_broker():
    # What `dramatiq e01_hello_world e02_error_handling` does: import both in one process.
    result = python("""
        import dramatiq, e01_hello_world as a, e02_error_handling as b
        assert a.broker is b.broker is dramatiq.get_broker()
        assert a.count_to.broker is b.unhandled.broker
        print("shared")
    """, url=lab.MEMORY_URL)
    assert result.stdout.strip() == "shared", result.stderr


def test_every_experiment_declares_queues_of_its_own(broker):
    # Given every experiment loaded on one broker, as `dramatiq e01_hello_world e02_error_handling ...` does
    queues = {}
    for experiment in experiments.all_experiments():
        module = experiments.load(experiment)
        queues[experiment.number] = {a.queue_name for a in broker.actors.values() if a.fn.__module__ == module.__name__}
    # then each one's queues start with its number, so no two experiments share a queue
    assert all(names and all(q.startswith(number) for q in names) for number, names in queues.items()), queues


def test_sender_confirms_in_one_line_and_exits_0(server_url, sender):
    result = sender("e01_hello_world.py", "5", url=server_url)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("sent count_to(5)  id=") and line.endswith("  queue=e01")
    assert redis.Redis.from_url(server_url).llen("dramatiq:e01") == 1


def test_exiting_with_the_sent_message_exits_1(server_url):
    # The reference notes' sender did sys.exit(count_to.send(...)): a Message is not an int.
    result = python("import sys, e01_hello_world as e; sys.exit(e.count_to.send(1))", url=server_url)
    assert result.returncode == 1
    assert result.stderr == "count_to(1)\n"  # sys.exit prints a non-int argument, str(message), and exits 1


@pytest.mark.e2e
def test_python_needs_the_file_name_and_the_dramatiq_cli_the_module_name(sender, dramatiq_worker):
    # Given the reference notes' two slips, and a Redis URL nobody answers: both fail before they connect
    unreachable = f"redis://127.0.0.1:{free_port()}/0"

    # When the dramatiq CLI is given the file, e02_error_handling.py, and python the module, without .py
    worker = dramatiq_worker("--threads", "1", "e02_error_handling.py", url=unreachable, ready=False)
    script = sender("e02_error_handling", "handled", "3", url=unreachable)

    # Then python cannot open a file of that name: one line, exit 2
    assert script.returncode == 2
    assert script.stderr.splitlines() == [
        f"{sys.executable}: can't open file '{ROOT / 'e02_error_handling'}': [Errno 2] No such file or directory"]
    # and the CLI reads "e02_error_handling.py" as the module "py" of a package "e02_error_handling": exit 2
    assert worker.wait(timeout=20) == 2  # dramatiq's RET_IMPORT
    assert "[ERROR] Failed to import module.\nTraceback (most recent call last):" in worker.output
    assert ("ModuleNotFoundError: No module named 'e02_error_handling.py'; "
            "'e02_error_handling' is not a package") in worker.output, worker.output


@pytest.mark.parametrize(("n", "says"), [
    ("-1", "Invalid value for 'N': -1 is not in the range 0<=x<=10000."),
    ("10001", "Invalid value for 'N': 10001 is not in the range 0<=x<=10000."),
    ("abc", "Invalid value for 'N': 'abc' is not a valid integer range."),
    ("2.5", "Invalid value for 'N': '2.5' is not a valid integer range."),
])
def test_sender_rejects_anything_but_a_whole_number_up_to_10000(sender, n, says):
    result = sender("e01_hello_world.py", n, url=lab.MEMORY_URL)
    assert result.returncode == 2
    assert result.stderr == f"e01_hello_world.py: {says} See 'e01_hello_world.py --help'.\n"


def test_unreachable_redis_is_one_line_with_masked_url_and_exit_3(sender):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = sender("e01_hello_world.py", "5", url=url)
    assert result.returncode == 3
    [line] = result.stderr.splitlines()
    assert ":***@127.0.0.1" in line and "hunter2" not in line and "redis-server" in line


def test_a_url_that_is_not_redis_is_one_line_and_exit_2(sender):
    result = sender("e01_hello_world.py", "5", url="http://user:hunter2@example.invalid/")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "e01_hello_world.py: 'http://***:***@example.invalid/' is not a valid Redis URL "
        "(DRAMATIQ_REDIS_URL or --redis): it must start with redis://, rediss://, unix://, amqp:// or amqps:// (or be memory://)"]


@pytest.mark.e2e
def test_one_worker_runs_two_experiments(real_redis_url, dramatiq_worker, sender):
    worker = dramatiq_worker("--threads", "2", "e01_hello_world", "e02_error_handling", url=real_redis_url)
    assert sender("e01_hello_world.py", "2", url=real_redis_url).returncode == 0
    assert sender("e02_error_handling.py", "handled", "3", url=real_redis_url).returncode == 0
    worker.wait_for(r"count_to\] \[INFO\] 1 of 2")
    worker.wait_for(r"handled\] \[INFO\] ok 3")
    assert worker.stop() == 0


def test_the_cli_watches_the_pattern_star_star_dot_py_by_default():
    from dramatiq.cli import make_argument_parser

    assert make_argument_parser().parse_args(["e01_hello_world"]).include_patterns == ["**.py"]


def test_watchdog_6_matches_the_default_pattern_against_an_absolute_path():
    import watchdog.version
    from watchdog.utils.patterns import match_any_paths

    assert watchdog.version.VERSION_MAJOR == 6  # requirements.txt pins watchdog 6.0.0
    assert match_any_paths([WATCHED], included_patterns=["**.py"])  # what the watcher calls


def python_3_13_or_newer() -> list[str] | None:
    """A command that runs Python 3.13+ here: this interpreter, one on PATH, or one pyenv installed."""
    if sys.version_info >= (3, 13):
        return [sys.executable]
    candidates = [shutil.which(f"python3.{minor}") for minor in range(13, 20)]
    candidates += sorted(map(str, Path.home().glob(".pyenv/versions/3.1[3-9]*/bin/python3")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 13))"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "True":  # a pyenv shim without that version answers 127
            return [candidate]
    return None


def test_watchdog_7s_full_match_never_matches_the_default_pattern_against_an_absolute_path():
    # watchdog 7 matches with PurePath.full_match (Python 3.13+; watchdog replicates it on older
    # Pythons). Run that rule where it exists.
    python = python_3_13_or_newer()
    if python is None:
        pytest.skip("needs Python 3.13+ (PurePath.full_match), here, on PATH or under ~/.pyenv")
    code = (f"from pathlib import PurePosixPath as P; p = P({WATCHED!r}); "
            "print([p.full_match(x) for x in ('**.py', '*.py', '**/*.py')])")
    result = subprocess.run([*python, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[False, False, True]", result.stderr  # only **/*.py matches


def test_default_middleware_no_longer_includes_prometheus():
    from dramatiq.middleware import default_middleware

    names = [m.__name__ for m in default_middleware]
    assert names == ["AgeLimit", "TimeLimit", "ShutdownNotifications", "Callbacks", "Pipelines", "Retries"]


@pytest.mark.e2e
def test_watch_reloads_the_worker_when_a_watched_file_changes(real_redis_url, dramatiq_worker, tmp_path):
    watched = tmp_path / "watched.py"
    watched.write_text("X = 1\n")
    worker = dramatiq_worker("--watch", str(tmp_path), "e01_hello_world", url=real_redis_url)
    watched.write_text("X = 2\n")
    worker.wait_for(r"Detected changes to .*watched\.py")
    worker.wait_for("Worker process is ready for action", count=2)
    assert worker.stop() == 0


@pytest.mark.e2e
def test_worker_cli_exits_3_with_one_error_line_when_redis_is_unreachable(dramatiq_worker):
    port = free_port()
    worker = dramatiq_worker("e01_hello_world", url=f"redis://:hunter2@127.0.0.1:{port}/0", ready=False)
    assert worker.wait(timeout=20) == 3
    errors = [line.split("] [", 4)[-1] for line in worker.output.splitlines() if "[ERROR]" in line]
    assert errors == [f"ERROR] cannot reach Redis at redis://:***@127.0.0.1:{port}/0. Start one with "
                      "`redis-server` (or `python -m lab serve` for the embedded one), or set DRAMATIQ_REDIS_URL "
                      "to yours."], worker.output
    # The master's note, when it gets out: it can lose its last lines when it exits right after its child.
    notes = [line for line in worker.output.splitlines() if "[CRITICAL]" in line]
    assert all(line.endswith("exited unexpectedly (code 3). Shutting down...") for line in notes), notes
    assert "Traceback" not in worker.output and "hunter2" not in worker.output


# The dramatiq CLI with its log watcher thread getting its first turn only after the master set its stop event:
# what a loaded machine can do when a worker process fails at boot. The master starts the thread after its worker
# processes said they booted, failed or not, and sets the event as soon as one of them has exited.
LATE_LOG_WATCHER = """
import sys
import dramatiq.cli as cli
watch_logs = cli.watch_logs
cli.watch_logs = lambda log_file, pipes, stop: (stop.wait(30), watch_logs(log_file, pipes, stop))[1]
sys.argv[0] = "dramatiq"
sys.exit(cli.main())
"""


@pytest.mark.e2e
def test_a_worker_failing_at_boot_keeps_its_one_line_when_the_masters_log_watcher_starts_late():
    # Given a master whose log watcher starts late, and three ways a worker process fails at boot
    port = free_port()
    redis_url, bad_url = f"redis://127.0.0.1:{port}/0", "redis://127.0.0.1:70000/0"
    failing = {  # one from each place the lab writes its line: (URL, environment, module, exit code, the line)
        "unreachable Redis": (redis_url, {}, "e01_hello_world", 3,
                              f"[ERROR] cannot reach Redis at {redis_url}."),
        "bad setting": (redis_url, {"e05_heartbeat_timeout": "x"}, "e05_crash_recovery", 2,
                        "dramatiq: e05_heartbeat_timeout='x' must be a whole number from 100 to 86400000"),
        "bad URL": (bad_url, {}, "e01_hello_world", 2, f"dramatiq: '{bad_url}' is not a valid Redis URL"),
    }
    # when each boots
    started = {name: subprocess.Popen(
        [sys.executable, "-c", LATE_LOG_WATCHER, "--processes", "1", module], cwd=ROOT, env=lab_env(url, **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, (url, env, module, _, _) in failing.items()}
    for name, process in started.items():
        output, _ = process.communicate(timeout=30)
        *_, code, line = failing[name]
        # then the master stopped its watcher before it read a line: Dramatiq's own lines are lost
        # (Dramatiq 2.2.1, dramatiq/cli.py), yet the lab's line is there, once, and the exit code
        assert "is booting up" not in output and "exited unexpectedly" not in output, f"{name}: {output}"
        assert (process.returncode, output.count(line)) == (code, 1), f"{name}: {output}"


def test_something_that_is_not_redis_at_the_url_is_one_line_and_exit_3(sender):
    # An HTTP server where Redis should be: redis-py raises InvalidResponse, not ConnectionError.
    with socketserver.TCPServer(("127.0.0.1", 0), NotRedis) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            result = sender("e01_hello_world.py", "5", url=f"redis://127.0.0.1:{http.server_address[1]}/0")
        finally:
            http.shutdown()
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "cannot reach Redis" in result.stderr


class NotRedis(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
